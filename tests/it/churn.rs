//! Churn: three welcome replicas SIGKILLed at random moments (seeded) while thousands of events flow, and the
//! nats-server SIGKILLed and restarted once. Nothing may be lost, the DLQ must stay empty, and an email may go
//! out twice only for an effect a kill cut inside its window (claim taken .. "done" recorded), which the
//! runtime's fault hook widens and marks in a file per replica.
//!
//! CI runs 2,000 events; the soak is the same test, longer: `JETFN_SOAK_EVENTS=50000 just soak` (also
//! `JETFN_SOAK_SEED` to replay a run, `JETFN_SOAK_KILLS` for the number of replica kills).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use provision::Definitions;
use testkit::{FunctionProcess, NatsServer, SmtpServer, workspace_root};

use crate::cluster::tail;
use crate::support::{TempDir, WAIT, user};

const REPLICAS: usize = 3;
/// How long the hook holds each effect between the SMTP server's 250 and the ledger's "done": wide enough that
/// most kills land inside the window, short enough for 2,000 events in seconds.
const WINDOW_MS: u64 = 100;

#[tokio::test(flavor = "multi_thread")]
async fn churn_three_welcome_replicas_killed_at_random_lose_nothing_and_send_twice_only_inside_the_window()
 {
    let events: usize = env_number("JETFN_SOAK_EVENTS").unwrap_or(2_000);
    let max_kills = env_number("JETFN_SOAK_KILLS").unwrap_or(events / 250);
    let seed = env_number("JETFN_SOAK_SEED").unwrap_or_else(|| {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        usize::try_from(nanos.as_nanos() % 1_000_000_007).unwrap()
    });
    eprintln!("churn: {events} events, up to {max_kills} replica kills, JETFN_SOAK_SEED={seed}");
    let mut rng = SplitMix(seed as u64);

    let nats = NatsServer::start();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats.url())
        .await
        .expect("connect");
    let js = jetstream::new(client.clone());
    let mut definitions =
        Definitions::load(&workspace_root().join("infra/nats")).expect("infra/nats loads");
    definitions.schedules.clear();
    let welcome = definitions
        .consumer_mut("EVENTS", "welcome")
        .expect("infra defines the welcome consumer");
    // A killed replica's messages come back after `ack_wait`; each attempt that finds another's fresh claim is
    // a delivery too, so the budget is large: a dead letter here would be a bug, not a budget run out.
    welcome.ack_wait = Duration::from_secs(2);
    welcome.backoff = vec![Duration::from_secs(1); 5];
    welcome.max_deliver = 100;
    definitions.apply(&js).await.expect("infra applies");
    let smtp = SmtpServer::start_sink();
    let marks = TempDir::new("churn-marks");

    let spawn = |slot: usize, generation: usize| {
        let path = marks.0.join(format!("replica-{slot}-{generation}.marks"));
        let process = FunctionProcess::spawn(
            "welcome",
            &[
                ("NATS_URL", nats.url()),
                ("SMTP_URL", smtp.url()),
                ("SMTP_TIMEOUT_SECS", "10".to_owned()),
                ("MAIL_FROM", "Shop <no-reply@shop.test>".to_owned()),
                ("RUST_LOG", "warn,welcome=info,runtime=info".to_owned()),
                ("JOB_LEDGER_LEASE_SECS", "2".to_owned()),
                ("JOB_TEST_DELAY_BEFORE_DONE_MS", WINDOW_MS.to_string()),
                ("JOB_TEST_EFFECT_MARKS", path.display().to_string()),
            ],
        );
        (process, path)
    };
    let mut replicas: Vec<(FunctionProcess, PathBuf)> =
        (0..REPLICAS).map(|slot| spawn(slot, slot)).collect();
    let mut generation = REPLICAS;
    for (replica, _) in &replicas {
        replica.wait_for_output("serving", WAIT).await;
    }

    let publisher = runtime::Publisher::new(client.clone(), "/integration-tests");
    let producer = tokio::spawn(async move {
        for i in 0..events {
            let email = format!("churn{i}@example.com");
            crate::cluster::publish_until_stored(&publisher, user(&email, "Ada")).await;
        }
    });

    let deadline =
        Instant::now() + Duration::from_secs(120) + Duration::from_millis(events as u64 * 20);
    let mut kills = 0;
    let mut kills_in_window = 0;
    let mut keys_in_window = 0;
    let mut nats_restarted = false;
    while distinct(&smtp) < events {
        assert!(
            Instant::now() < deadline,
            "only {} of {events} events mailed (seed {seed}); a replica said:\n{}",
            distinct(&smtp),
            tail(&replicas[0].0.output(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1_000))).await;
        if !nats_restarted && distinct(&smtp) >= events / 2 {
            nats.kill();
            nats.restart();
            nats_restarted = true;
            eprintln!(
                "churn: nats-server SIGKILLed and restarted at {} mailed",
                distinct(&smtp)
            );
            continue;
        }
        if kills >= max_kills {
            continue;
        }
        let victim = usize::try_from(rng.below(REPLICAS as u64)).unwrap();
        let (process, path) = &replicas[victim];
        process.sigkill();
        process.wait_exit(WAIT).await;
        let open = open_windows(path);
        kills += 1;
        keys_in_window += open;
        kills_in_window += usize::from(open > 0);
        let (fresh, path) = spawn(victim, generation);
        generation += 1;
        fresh.wait_for_output("serving", WAIT).await;
        replicas[victim] = (fresh, path);
    }
    producer.await.expect("producer");

    // Settled, then a lease and a redelivery more: a stale claim left by a kill would have sent again by then.
    wait_settled(&js).await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let ids = smtp.message_ids();
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *copies.entry(id.as_str()).or_default() += 1;
    }
    let duplicates = ids.len() - copies.len();
    eprintln!(
        "churn (seed {seed}): {events} events, {} emails, {duplicates} duplicates; {kills} replica kills, \
         {kills_in_window} inside an effect window holding {keys_in_window} effects; nats-server restarted: \
         {nats_restarted}",
        ids.len()
    );
    // The load split (S20): effects each replica slot finished over the run, its restarts included.
    let split: Vec<usize> = (0..REPLICAS)
        .map(|slot| {
            std::fs::read_dir(&marks.0)
                .expect("marks dir")
                .filter_map(Result::ok)
                .filter(|entry| {
                    entry
                        .file_name()
                        .to_string_lossy()
                        .starts_with(&format!("replica-{slot}-"))
                })
                .map(|entry| ended(&entry.path()))
                .sum()
        })
        .collect();
    eprintln!("churn: effects finished per replica slot {split:?}");
    assert!(
        split.iter().all(|&n| n > 0),
        "every replica got work: {split:?} (seed {seed})"
    );
    assert!(!copies.contains_key(""), "every email has a Message-ID");
    assert_eq!(copies.len(), events, "every event mailed (seed {seed})");
    assert!(
        nats_restarted,
        "the nats-server kill happened (seed {seed})"
    );
    assert!(
        duplicates <= keys_in_window,
        "{duplicates} emails sent twice, more than the {keys_in_window} effects the kills cut inside their \
         window (seed {seed})"
    );
    for stream in ["DLQ", "ADVISORIES"] {
        let mut stream = js.get_stream(stream).await.expect("stream");
        let held = stream.info().await.expect("info").state.messages;
        assert_eq!(
            held,
            0,
            "{} holds {held} dead letters (seed {seed})",
            stream.cached_info().config.name
        );
    }
}

/// Distinct Message-IDs the sink accepted.
fn distinct(smtp: &SmtpServer) -> usize {
    smtp.message_ids().into_iter().collect::<HashSet<_>>().len()
}

/// Effects a replica finished (`end` marks).
fn ended(path: &PathBuf) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter(|line| line.starts_with("end ")).count()
}

/// Effects a dead replica had started and not finished: `start` marks without their `end`.
fn open_windows(path: &PathBuf) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut open = HashSet::new();
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("start", key)) => {
                open.insert(key);
            }
            Some(("end", key)) => {
                open.remove(key);
            }
            _ => {}
        }
    }
    open.len()
}

async fn wait_settled(js: &jetstream::Context) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(stream) = js.get_stream("EVENTS").await
            && let Ok(mut consumer) = stream
                .get_consumer::<jetstream::consumer::pull::Config>("welcome")
                .await
            && let Ok(info) = consumer.info().await
            && info.num_pending == 0
            && info.num_ack_pending == 0
            && info.ack_floor.consumer_sequence == info.delivered.consumer_sequence
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the welcome consumer did not settle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn env_number(name: &str) -> Option<usize> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}: expected a whole number, got {value:?}")),
    )
}

/// SplitMix64: a seeded sequence, so a failing run can be replayed with its seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
