//! Broker storage exhaustion (S28): EVENTS full under its `max_bytes` with `discard: new`. The publisher must get
//! an explicit error, never a false ack; everything acked is delivered once; once an operator raises the limit,
//! publishing resumes.

use std::time::Duration;

use crate::support::{System, WAIT, user};

/// Room for a few dozen welcome events.
const TINY: i64 = 16 * 1024;

#[tokio::test]
async fn a_full_events_stream_refuses_publishes_explicitly_and_loses_no_acked_event() {
    let system = System::start_with(|definitions| {
        let events = definitions
            .streams
            .iter_mut()
            .find(|stream| stream.name == "EVENTS")
            .expect("infra defines EVENTS");
        events.max_bytes = TINY;
    })
    .await;
    let _welcome = system.welcome().await;

    let mut acked = 0;
    let refusal = loop {
        assert!(acked < 1_000, "a {TINY}-byte stream took {acked} events");
        match system
            .publisher
            .publish(user(&format!("full{acked}@example.com"), "Ada"))
            .await
        {
            Ok(_) => acked += 1,
            Err(err) => break err.to_string(),
        }
    };
    assert!(
        refusal.contains("maximum bytes exceeded"),
        "the refusal says why: {refusal}"
    );
    let events = system.js.get_stream("EVENTS").await.expect("EVENTS");
    // The welcome function's `email.sent` outcomes share the stream (and its limit): count the acked type.
    let stored = u64::try_from(system.count_on("events.users.registered").await).unwrap();
    assert_eq!(
        stored, acked,
        "the stream holds exactly the acked events: no false ack, no silent drop"
    );
    system
        .smtp
        .wait_for_messages(usize::try_from(acked).unwrap(), WAIT)
        .await;

    // The operator raises the limit: publishing resumes, and the next event is delivered too.
    let mut config = events.cached_info().config.clone();
    config.max_bytes = 1024 * 1024;
    system
        .js
        .update_stream(config)
        .await
        .expect("raise EVENTS max_bytes");
    system
        .publisher
        .publish(user("after@example.com", "Ada"))
        .await
        .expect("publishing resumes once there is room");
    let mails = system
        .smtp
        .wait_for_messages(usize::try_from(acked).unwrap() + 1, WAIT)
        .await;
    system.wait_settled("welcome").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        system.smtp.messages().len(),
        mails.len(),
        "one email per acked event"
    );
    assert!(system.dlq().await.is_empty(), "no dead letter");
}
