//! The circuit breaker across replicas, through a drain and on refused credentials: an open breaker gives what it
//! holds to replicas whose route works, a drain never spends a held message's last delivery, and an
//! authentication failure is a route fault, not a reason to dead-letter every email.

use std::collections::BTreeMap;
use std::time::Duration;

use testkit::{Reply, SmtpCommand, SmtpServer};

use crate::support::{System, WAIT, user};

/// A breaker that opens after two route failures and probes every second.
fn breaker_env() -> Vec<(&'static str, String)> {
    vec![
        ("JOB_BREAKER_THRESHOLD", "2".to_owned()),
        ("JOB_BREAKER_PROBE_SECS", "1".to_owned()),
        ("JOB_BREAKER_PROBE_MAX_SECS", "1".to_owned()),
        ("SMTP_TIMEOUT_SECS", "2".to_owned()),
    ]
}

/// How many emails each recipient got, over every server.
fn per_recipient(servers: &[&SmtpServer]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for server in servers {
        for mail in server.messages() {
            for to in mail.rcpt_to {
                *counts.entry(to).or_default() += 1;
            }
        }
    }
    counts
}

async fn publish_users(system: &System, range: std::ops::Range<usize>) -> Vec<String> {
    let mut sent = Vec::new();
    for i in range {
        let address = format!("user{i}@example.com");
        system
            .publisher
            .publish(user(&address, "Someone"))
            .await
            .expect("publish");
        sent.push(address);
    }
    sent
}

#[tokio::test]
async fn a_replica_whose_smtp_route_is_down_leaves_every_event_to_the_healthy_one() {
    let system = System::start().await;
    let broken = SmtpServer::start();
    broken.go_down();
    let _healthy = system.spawn("welcome", &breaker_env()).await;
    let mut sick_env = breaker_env();
    sick_env.push(("SMTP_URL", broken.url()));
    let sick = system.spawn("welcome", &sick_env).await;

    let mut sent = publish_users(&system, 0..120).await;
    sick.wait_for_output("circuit open", WAIT).await;
    // Before the fix the sick replica held its share (up to max_ack_pending) alive while its breaker was open.
    system.smtp.wait_for_messages(sent.len(), WAIT).await;
    assert!(
        system.dlq().await.is_empty(),
        "nothing is dead-lettered for one replica's route"
    );
    assert!(
        sick.output().contains("giving the message back"),
        "the sick replica took a share and gave it back"
    );

    // The route comes back: the sick replica serves again and nothing is lost or sent twice.
    broken.come_up();
    sick.wait_for_output("circuit closed", WAIT).await;
    sent.extend(publish_users(&system, 120..160).await);
    let deadline = std::time::Instant::now() + WAIT;
    while system.smtp.messages().len() + broken.messages().len() < sent.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "not every event was delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    system.wait_settled("welcome").await;
    let counts = per_recipient(&[&system.smtp, &broken]);
    assert_eq!(counts.len(), sent.len(), "every recipient got an email");
    assert!(
        counts.values().all(|count| *count == 1),
        "no recipient got two: {:?}",
        counts
            .iter()
            .filter(|(_, count)| **count > 1)
            .collect::<Vec<_>>()
    );
    assert!(system.dlq().await.is_empty(), "nothing was dead-lettered");
}

#[tokio::test]
async fn a_sigterm_while_the_circuit_is_open_does_not_spend_a_held_last_delivery() {
    let system = System::start().await;
    let mut env = breaker_env();
    env.push(("JOB_BREAKER_THRESHOLD", "1".to_owned()));
    let process = system.spawn("welcome", &env).await;
    // Deliveries 1 to 3 of the 4 get a 451 (transient, not a route fault); the last finds the route down.
    system
        .smtp
        .fail_next_data(vec![(451, "4.3.0 try again later"); 3]);
    publish_users(&system, 0..1).await;
    system.smtp.wait_for_attempts(3, WAIT).await;
    system.smtp.go_down();
    process
        .wait_for_output("holding the message until the circuit closes", WAIT)
        .await;

    process.sigterm();
    process.wait_for_output("draining", WAIT).await;
    // The route comes back inside the drain window: the held message gets its last attempt.
    system.smtp.come_up();
    let status = process.wait_exit(WAIT).await;
    assert!(status.success(), "{status:?}");
    assert_eq!(system.smtp.messages().len(), 1, "{}", process.output());
    assert!(
        system.dlq().await.is_empty(),
        "the shutdown dead-lettered a message that never had its last attempt"
    );
    system.wait_settled("welcome").await;
}

#[tokio::test]
async fn refused_smtp_credentials_open_the_breaker_instead_of_dead_lettering() {
    let system = System::start().await;
    // Every AUTH is refused for a while (sends and probes alike), then the credentials work again.
    system.smtp.script(
        SmtpCommand::Auth,
        vec![Reply::new(535, "5.7.8 Authentication credentials invalid"); 6],
    );
    let mut env = breaker_env();
    env.push((
        "SMTP_URL",
        format!("smtp://jetfn:secret@{}", system.smtp.addr()),
    ));
    let process = system.spawn("welcome", &env).await;
    let sent = publish_users(&system, 0..5).await;
    process.wait_for_output("circuit open", WAIT).await;
    system.smtp.wait_for_messages(sent.len(), WAIT).await;
    system.wait_settled("welcome").await;
    assert!(
        system.dlq().await.is_empty(),
        "an authentication failure dead-lettered an email"
    );
    let counts = per_recipient(&[&system.smtp]);
    assert!(counts.values().all(|count| *count == 1), "{counts:?}");
    assert!(
        !process.output().contains("secret"),
        "the password is logged"
    );
}
