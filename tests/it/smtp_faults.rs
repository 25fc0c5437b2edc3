//! SMTP faults the reliability scenarios name and no other test drives through a real function: a send longer
//! than `ack_wait` (S21), a server that accepts and never speaks (S7), and a reply lost after the server took the
//! message (S8, RFC 1047).

use std::time::Duration;

use testkit::{Reply, SmtpCommand};

use crate::support::{System, WAIT, user};

/// Per-command SMTP timeout for these tests: short, so a hang costs one second an attempt.
const SMTP_TIMEOUT: (&str, &str) = ("SMTP_TIMEOUT_SECS", "1");

#[tokio::test]
async fn a_server_that_accepts_and_never_speaks_is_timed_out_and_the_email_goes_once_it_answers() {
    let system = System::start().await;
    let welcome = system
        .spawn("welcome", &[(SMTP_TIMEOUT.0, SMTP_TIMEOUT.1.to_owned())])
        .await;
    // A connection is accepted and no greeting ever comes (the testkit's "never speaks" server).
    system
        .smtp
        .delay_replies(SmtpCommand::Connect, Duration::from_secs(600));
    system
        .publisher
        .publish(user("hana@example.com", "Hana"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(system.smtp.count(), 0, "nothing can be sent while it hangs");
    assert!(
        system.smtp.peak_sessions() >= 1,
        "the function reached the hanging server"
    );
    system.smtp.clear_faults();

    let mails = system.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails[0].rcpt_to, vec!["hana@example.com".to_owned()]);
    let info = system.wait_settled("welcome").await;
    assert!(
        info.delivered.consumer_sequence >= 2 || welcome.output().contains("circuit open"),
        "the hung attempt was given up and tried again: {info:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(system.smtp.count(), 1, "exactly one email");
    assert!(system.dlq().await.is_empty(), "a hang is not a dead letter");
}

#[tokio::test]
async fn a_reply_lost_after_the_server_took_the_message_is_retried_with_the_same_message_id() {
    let system = System::start().await;
    let _welcome = system
        .spawn("welcome", &[(SMTP_TIMEOUT.0, SMTP_TIMEOUT.1.to_owned())])
        .await;
    // The server keeps the message (it records it once it replies) but the reply comes after the client gave
    // up: the outcome is unknown to the function, which must retry rather than lose the email.
    system.smtp.script(
        SmtpCommand::EndOfData,
        [Reply::new(250, "2.0.0 OK: queued").after(Duration::from_secs(3))],
    );
    system
        .publisher
        .publish(user("ines@example.com", "Ines"))
        .await
        .unwrap();

    let mails = system.smtp.wait_for_messages(2, WAIT).await;
    let ids: Vec<Option<String>> = mails.iter().map(|mail| mail.header("Message-ID")).collect();
    assert!(ids[0].is_some(), "the email carries a Message-ID");
    assert_eq!(
        ids[0], ids[1],
        "the retry reuses the Message-ID, so the receiver can collapse the duplicate"
    );
    system.wait_settled("welcome").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        system.smtp.count(),
        2,
        "one duplicate for the one lost reply (the RFC 1047 window), no more"
    );
    assert!(system.dlq().await.is_empty());
}

/// S21: a send several times longer than `ack_wait` (400 ms in these tests) stays with its one delivery: the
/// runtime's progress acks keep it from being redelivered to another attempt.
#[tokio::test]
async fn a_send_longer_than_ack_wait_is_delivered_once() {
    let system = System::start().await;
    let _welcome = system.welcome().await;
    let ack_wait = system
        .consumer_info("EVENTS", "welcome")
        .await
        .config
        .ack_wait;
    let slow = ack_wait * 8;
    system.smtp.delay_data_reply(slow);
    system
        .publisher
        .publish(user("jun@example.com", "Jun"))
        .await
        .unwrap();

    system.smtp.wait_for_messages(1, WAIT).await;
    let info = system.wait_settled("welcome").await;
    assert_eq!(
        info.delivered.consumer_sequence, 1,
        "a {slow:?} send with ack_wait {ack_wait:?} was delivered once"
    );
    assert_eq!(system.smtp.count(), 1);
    assert!(system.dlq().await.is_empty());
}
