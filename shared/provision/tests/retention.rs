//! What one definition keeps must outlive what another can bring back. A dead letter replayed after its effect
//! was recorded must still find that record in the ledger, or the replay repeats the effect (issue 14: the
//! ledger kept 7 days while dead letters are kept up to the DLQ's `max_age`, 90 days).

use std::path::Path;
use std::time::Duration;

use provision::Definitions;

fn shipped() -> Definitions {
    Definitions::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/nats"))
        .expect("infra/nats loads")
}

#[test]
fn the_ledger_outlives_every_dead_letter_and_its_retries() {
    let definitions = shipped();
    let dlq = definitions
        .streams
        .iter()
        .find(|stream| stream.name == "DLQ")
        .expect("the DLQ stream is defined");
    let ledger = definitions
        .buckets
        .iter()
        .find(|bucket| bucket.bucket == "jetfn-ledger")
        .expect("the ledger bucket is defined");
    assert!(dlq.max_age > Duration::ZERO, "the DLQ has a max_age");
    assert!(
        ledger.max_age_secs > 0,
        "a ledger kept forever outlives anything, but grows forever"
    );
    let needed = dlq.max_age + provision::longest_retry_span(&definitions.consumers);
    let kept = Duration::from_secs(ledger.max_age_secs);
    assert!(
        kept >= needed,
        "jetfn-ledger keeps entries {} s, but a dead letter can be replayed up to {} s after its effect was \
         recorded (DLQ max_age {} s plus the longest retry schedule): a late replay would send again",
        kept.as_secs(),
        needed.as_secs(),
        dlq.max_age.as_secs()
    );
}
