//! The dlq-router's route span links to the publisher's context, against a real OTLP receiver: the advisory it
//! processes carries no trace context, the dead event it copies does.

use testkit::OtlpReceiver;

use crate::router::{fast, silent, wait_advisories};
use crate::support::{System, WAIT};
use crate::tracing_otlp::{otel_env, publish_traced};

#[tokio::test]
async fn the_route_span_links_to_the_publishers_context() {
    let system = System::start_with(fast).await;
    let receiver = OtlpReceiver::start();
    let _router = system.spawn("dlq-router", &otel_env(&receiver)).await;
    let (_publish, send) = publish_traced(
        &system,
        &receiver,
        r#"{"user_id":"r1","email":"route@example.com","name":"Route"}"#,
    )
    .await;
    // welcome never answers: the event exhausts its deliveries and the server's advisory reaches the router.
    let hung = silent(&system, "welcome");
    wait_advisories(&system, 1).await;
    let route = receiver
        .wait_for_span(
            |span| {
                span.service_name == "dlq-router"
                    && span.name == "process $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
            },
            WAIT,
        )
        .await;
    assert_eq!(
        route.links,
        vec![(send.trace_id.clone(), send.span_id.clone())],
        "the route span links to the publisher's send span: {route:#?}"
    );
    assert_ne!(
        route.trace_id, send.trace_id,
        "a link, not a parent: the advisory starts its own trace"
    );
    assert_eq!(
        route
            .attributes
            .get("messaging.operation.name")
            .map(String::as_str),
        Some("process")
    );
    assert!(system.dlq().await.len() == 1, "the event was dead-lettered");
    hung.abort();
}
