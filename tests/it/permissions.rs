//! The least-privilege users of `infra/deploy/nats-permissions.conf`, loaded into a real nats-server: welcome,
//! order-confirmation, contact, indexing, cleanup and the router each do all of their work (bind, pull, ledger,
//! confirmed acks, failure journal, dead letter + TERM, and their own extras: the rate-limit bucket, the search
//! service, retention) as their own user and nothing else, and a publisher can only publish its own events.

use std::time::Duration;

use async_nats::ConnectOptions;
use testkit::{NatsServer, workspace_root};

use crate::support::{STAFF, System, TempDir, WAIT, message, user};

const PASSWORDS: [(&str, &str); 4] = [
    ("$WELCOME_PASSWORD", "welcome-secret"),
    ("$ROUTER_PASSWORD", "router-secret"),
    ("$SIGNUP_PASSWORD", "signup-secret"),
    ("$ADMIN_PASSWORD", "admin-secret"),
];

/// The shipped permissions file with test passwords in place of the variables the deployment sets.
fn secured_server() -> NatsServer {
    let mut config =
        std::fs::read_to_string(workspace_root().join("infra/deploy/nats-permissions.conf"))
            .expect("infra/deploy/nats-permissions.conf is readable");
    for (variable, password) in PASSWORDS {
        assert!(
            config.contains(variable),
            "the permissions file uses {variable}"
        );
        config = config.replace(variable, &format!("\"{password}\""));
    }
    // Every other function's user: `password: $ORDER_CONFIRMATION_PASSWORD` -> "order-confirmation-secret".
    const MARK: &str = "password: $";
    while let Some(found) = config.find(MARK) {
        let start = found + MARK.len() - 1;
        let end = config[start + 1..]
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .map_or(config.len(), |offset| start + 1 + offset);
        let variable = config[start..end].to_owned();
        let function = variable
            .strip_prefix('$')
            .and_then(|v| v.strip_suffix("_PASSWORD"))
            .unwrap_or_else(|| panic!("an unexpected variable {variable} in the permissions file"))
            .to_ascii_lowercase()
            .replace('_', "-");
        config.replace_range(start..end, &format!("\"{}\"", secret(&function)));
    }
    NatsServer::start_with(&config)
}

/// The test password of a function's user.
fn secret(function: &str) -> String {
    format!("{function}-secret")
}

async fn secured_system() -> System {
    System::start_on(
        secured_server(),
        ConnectOptions::with_user_and_password("admin".into(), "admin-secret".into()),
        |_| {},
    )
    .await
}

/// A function's own identity, as its Deployment sets it: its user and its inbox prefix.
fn as_function(function: &str) -> Vec<(&'static str, String)> {
    vec![
        ("NATS_USER", function.to_owned()),
        ("NATS_PASSWORD", secret(function)),
        ("NATS_INBOX_PREFIX", format!("_INBOX_{function}")),
    ]
}

/// Neither the function nor the server saw a permissions violation.
fn assert_no_violation(system: &System, output: &str, who: &str) {
    assert!(
        !output.contains("Permissions Violation") && !output.contains("permissions violation"),
        "{who} needed a right it does not have:\n{output}"
    );
    assert!(
        !system.nats.log().contains(" Violation"),
        "the server refused {who} something: {}",
        system.nats.log()
    );
}

fn as_welcome() -> Vec<(&'static str, String)> {
    vec![
        ("NATS_USER", "welcome".to_owned()),
        ("NATS_PASSWORD", "welcome-secret".to_owned()),
        ("NATS_INBOX_PREFIX", "_INBOX_welcome".to_owned()),
    ]
}

/// The signup-api publisher's connection: its own user and inbox prefix.
async fn signup_client(system: &System) -> async_nats::Client {
    ConnectOptions::with_user_and_password("signup-api".into(), "signup-secret".into())
        .custom_inbox_prefix("_INBOX_signup")
        .connect(system.nats.url())
        .await
        .expect("signup-api connects")
}

async fn signup_publisher(system: &System) -> runtime::Publisher {
    runtime::Publisher::new(signup_client(system).await, "/signup-api")
}

#[tokio::test]
async fn the_welcome_user_sends_retries_and_dead_letters_with_its_own_rights_only() {
    let system = secured_system().await;
    let welcome = system.spawn("welcome", &as_welcome()).await;
    let publisher = signup_publisher(&system).await;

    // The happy path: pull, ledger claim and done, confirmed ack.
    publisher
        .publish(user("granted@example.com", "Granted"))
        .await
        .expect("signup-api publishes its events");
    system.smtp.wait_for_messages(1, WAIT).await;
    system.wait_settled("welcome").await;

    // A 4xx then success: the failure journal and the delayed NAK. A 5xx: the dead-letter record and TERM.
    system.smtp.fail_next_data(vec![(451, "4.3.0 try later")]);
    publisher
        .publish(user("retried@example.com", "Retried"))
        .await
        .unwrap();
    system.smtp.wait_for_messages(2, WAIT).await;
    system.wait_settled("welcome").await;
    system.smtp.reject_recipients(550, "5.1.1 no such user");
    publisher
        .publish(user("refused@example.com", "Refused"))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while system.dlq().await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no dead-letter record"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    system.wait_settled("welcome").await;
    let output = welcome.output();
    assert!(
        !output.contains("Permissions Violation") && !output.contains("permissions violation"),
        "the welcome user needed a right it does not have:\n{output}"
    );
    assert!(
        !system.nats.log().contains(" Violation"),
        "the server refused something: {}",
        system.nats.log()
    );
}

#[tokio::test]
async fn users_are_refused_what_is_not_theirs() {
    let system = secured_system().await;
    let welcome = ConnectOptions::with_user_and_password("welcome".into(), "welcome-secret".into())
        .custom_inbox_prefix("_INBOX_welcome")
        .connect(system.nats.url())
        .await
        .expect("welcome connects");
    let mut js = async_nats::jetstream::new(welcome.clone());
    js.set_timeout(Duration::from_secs(1));
    assert!(
        js.get_stream("EVENTS").await.is_err(),
        "welcome may not read the EVENTS stream's info"
    );
    assert!(
        js.get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
            "order-confirmation",
            "EVENTS"
        )
        .await
        .is_err(),
        "welcome may not bind another function's consumer"
    );
    assert!(
        welcome.subscribe("_INBOX.>").await.is_ok() && {
            // A refused subscription is reported asynchronously; the server logs it.
            welcome.flush().await.ok();
            tokio::time::sleep(Duration::from_millis(200)).await;
            system.nats.log().contains("Subscription Violation")
        },
        "welcome may not read the shared inbox"
    );

    let signup = signup_client(&system).await;
    let mut signup_js = async_nats::jetstream::new(signup);
    signup_js.set_timeout(Duration::from_secs(1));
    let refused = signup_js
        .publish("events.orders.placed", "{}".into())
        .await
        .expect("the publish is sent")
        .await;
    assert!(
        refused.is_err(),
        "signup-api may not publish order events: {refused:?}"
    );
    assert_eq!(
        system
            .consumer_info("EVENTS", "order-confirmation")
            .await
            .num_pending,
        0,
        "nothing reached the stream"
    );
}

#[tokio::test]
async fn the_router_dead_letters_an_unanswered_event_with_its_own_rights_only() {
    let system = System::start_on(
        secured_server(),
        ConnectOptions::with_user_and_password("admin".into(), "admin-secret".into()),
        |definitions| {
            let welcome = definitions.consumer_mut("EVENTS", "welcome").unwrap();
            welcome.max_deliver = 2;
            welcome.backoff = vec![Duration::from_millis(200)];
            welcome.ack_wait = Duration::from_millis(200);
        },
    )
    .await;
    let _router = system
        .spawn(
            "dlq-router",
            &[
                ("NATS_USER", "dlq-router".to_owned()),
                ("NATS_PASSWORD", "router-secret".to_owned()),
                ("NATS_INBOX_PREFIX", "_INBOX_dlq".to_owned()),
            ],
        )
        .await;
    // Nobody answers: the admin pulls the deliveries and drops them.
    let consumer: async_nats::jetstream::consumer::PullConsumer = system
        .js
        .get_consumer_from_stream("welcome", "EVENTS")
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let silent = tokio::spawn(async move {
        use futures::StreamExt as _;
        while let Ok(Some(_ignored)) =
            tokio::time::timeout(Duration::from_secs(2), messages.next()).await
        {}
    });
    let published = system
        .publisher
        .publish(user("hang@example.com", "Hang"))
        .await
        .unwrap();
    let records = system.wait_dlq(1).await;
    assert_eq!(records[0].1.sequence, published.sequence);
    assert_eq!(records[0].1.writer, "router");
    silent.abort();
    assert!(
        !system.nats.log().contains(" Violation"),
        "the router needed a right it does not have: {}",
        system.nats.log()
    );
}

#[tokio::test]
async fn order_confirmation_sends_to_the_customer_and_the_staff_with_its_own_rights_only() {
    let system = secured_system().await;
    let function = system
        .spawn("order-confirmation", &as_function("order-confirmation"))
        .await;
    let mut order = events::OrderPlaced::example();
    order.order_id = "o-perm".to_owned();
    order.customer.email = "buyer@example.com".to_owned();
    system.publisher.publish(order).await.unwrap();
    let messages = system.smtp.wait_for_messages(2, WAIT).await;
    assert!(
        messages
            .iter()
            .any(|m| m.rcpt_to.iter().any(|r| r == STAFF)),
        "the staff notification went out"
    );
    system.wait_settled("order-confirmation").await;
    assert_no_violation(&system, &function.output(), "order-confirmation");
}

/// Indexing binds its three consumers and serves search and purge; cleanup asks it to purge, purges the DLQ and the
/// failure journal, and publishes cleanup.completed: each as its own user.
#[tokio::test]
async fn indexing_and_cleanup_index_search_and_purge_with_their_own_rights_only() {
    let system = secured_system().await;
    let dir = TempDir::new("index-permissions");
    // The operators of this test allow a day's index retention and a second's DLQ retention (the defaults: 7 days).
    let mut indexing_env = as_function("indexing");
    indexing_env.push(("INDEX_MIN_RETENTION_SECS", "86400".to_owned()));
    let indexing = system.indexing(&dir, &indexing_env).await;
    let old = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    system
        .publish_indexed(message("m-old", "c-1", "permissions tango", old))
        .await;
    assert_eq!(system.found("tango").await, ["m-old"], "the search answers");

    system
        .publish_raw("dlq.EVENTS.test.1", b"old dead letter")
        .await;
    let journal = system.js.get_key_value("jetfn-failures").await.unwrap();
    journal.put("EVENTS.welcome.0", "{}".into()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut cleanup_env = as_function("cleanup");
    cleanup_env.push(("CLEANUP_MIN_INDEX_RETENTION_SECS", "86400".to_owned()));
    cleanup_env.push(("CLEANUP_MIN_DLQ_RETENTION_SECS", "1".to_owned()));
    let cleanup = system.spawn("cleanup", &cleanup_env).await;
    system
        .publisher
        .publish(events::CleanupRequested {
            index_retention_secs: Some(24 * 3600),
            dlq_retention_secs: Some(1),
        })
        .await
        .unwrap();
    system.wait_on("events.cleanup.completed", 1, WAIT).await;
    system.wait_settled("cleanup").await;
    assert!(
        system.found("tango").await.is_empty(),
        "the index was purged"
    );
    assert!(
        journal.get("EVENTS.welcome.0").await.unwrap().is_none(),
        "the orphan journal record was purged"
    );
    assert_no_violation(&system, &indexing.output(), "indexing");
    assert_no_violation(&system, &cleanup.output(), "cleanup");
}

/// Contact also counts submissions in the rate-limit bucket.
#[tokio::test]
async fn contact_notifies_support_and_counts_the_sender_with_its_own_rights_only() {
    let system = secured_system().await;
    let function = system.spawn("contact", &as_function("contact")).await;
    let mut form = events::ContactSubmitted::example();
    form.email = "visitor@example.com".to_owned();
    form.submitted_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    system.publisher.publish(form).await.unwrap();
    system.smtp.wait_for_messages(2, WAIT).await;
    system.wait_settled("contact").await;
    let counters = system.js.get_key_value("jetfn-ratelimit").await.unwrap();
    let mut keys = counters.keys().await.unwrap();
    assert!(
        futures::StreamExt::next(&mut keys).await.is_some(),
        "the sender was counted"
    );
    assert_no_violation(&system, &function.output(), "contact");
}
