//! One trace per event: the publisher's span parents every attempt, and the SMTP send sits inside the attempt.

use std::time::Duration;

use testkit::{FunctionProcess, OtlpReceiver, ReceivedSpan};

use crate::support::{System, WAIT};

/// Exports to `receiver` with a short batch delay, so a span is out within a test's wait.
pub(crate) fn otel_env(receiver: &OtlpReceiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]
}

/// `jetfn publish users.registered --data <data>` exporting to `receiver`, which must succeed; returns the CLI (for
/// its output) and its send span, the context the event's attempts are traced under.
pub(crate) async fn publish_traced(
    system: &System,
    receiver: &OtlpReceiver,
    data: &str,
) -> (FunctionProcess, ReceivedSpan) {
    let mut env = system.env();
    env.extend(otel_env(receiver));
    let publish = FunctionProcess::spawn_with_args(
        "jetfn",
        &["publish", "users.registered", "--data", data],
        &env,
    );
    assert_eq!(
        publish.wait_exit(WAIT).await.code(),
        Some(0),
        "{}",
        publish.output()
    );
    let send = receiver
        .wait_for_span(
            |span| span.service_name == "jetfn-cli" && span.name == "send events.users.registered",
            WAIT,
        )
        .await;
    (publish, send)
}

#[tokio::test]
async fn the_function_spans_reach_a_real_otlp_receiver_parented_by_the_publisher() {
    let system = System::start().await;
    let receiver = OtlpReceiver::start();
    let _welcome = system.spawn("welcome", &otel_env(&receiver)).await;
    system.smtp.fail_next_data(vec![(451, "4.3.0 later")]);

    let (publish, send) = publish_traced(
        &system,
        &receiver,
        r#"{"user_id":"t1","email":"trace@example.com","name":"Trace"}"#,
    )
    .await;
    assert!(
        publish.output().contains("stream=EVENTS seq=1"),
        "{}",
        publish.output()
    );
    assert_eq!(send.kind, 4, "PRODUCER");
    let spans = receiver
        .wait_for_spans(
            |spans| {
                spans
                    .iter()
                    .filter(|span| {
                        span.service_name == "welcome"
                            && span.name == "process events.users.registered"
                    })
                    .count()
                    >= 2
            },
            WAIT,
        )
        .await;
    let attempts: Vec<_> = spans
        .iter()
        .filter(|span| span.name == "process events.users.registered")
        .collect();
    for attempt in &attempts {
        assert_eq!(
            attempt.trace_id, send.trace_id,
            "every attempt is in the publisher's trace"
        );
        assert_eq!(
            attempt.parent_span_id, send.span_id,
            "every attempt is a child of the publish"
        );
        assert_eq!(attempt.kind, 5, "CONSUMER");
        assert_eq!(
            attempt
                .attributes
                .get("messaging.system")
                .map(String::as_str),
            Some("nats")
        );
        assert_eq!(
            attempt
                .attributes
                .get("messaging.consumer.group.name")
                .map(String::as_str),
            Some("welcome")
        );
    }
    let mut numbers: Vec<_> = attempts
        .iter()
        .filter_map(|span| span.attributes.get("jetfn.attempt").cloned())
        .collect();
    numbers.sort();
    assert_eq!(numbers, vec!["1".to_owned(), "2".to_owned()]);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let smtp_sends: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|span| span.name == "smtp send")
        .collect();
    assert!(!smtp_sends.is_empty(), "the SMTP send is traced");
    for smtp in &smtp_sends {
        assert_eq!(smtp.trace_id, send.trace_id);
    }
    for span in receiver.spans() {
        for value in span.attributes.values() {
            assert!(
                !value.contains("trace@example.com"),
                "span {} holds the address: {value}",
                span.name
            );
        }
    }
}
