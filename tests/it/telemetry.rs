//! Telemetry as an operator consumes it: the Prometheus scrape of a function's health port, the messaging
//! conventions' metric and span attributes, links to the publisher's context, trace ids in JSON logs, and the
//! standard `OTEL_*` switches.

use std::collections::BTreeMap;
use std::time::Duration;

use testkit::{FunctionProcess, OtlpReceiver};

use crate::support::{System, WAIT, user};
use crate::tracing_otlp::{otel_env, publish_traced};

/// One scraped sample: its metric name, labels and value.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// `GET path` on a health port: the status and the body.
pub(crate) async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the health endpoint accepts connections");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The samples of a Prometheus text exposition (comments skipped). Label values here hold no `,` or `}`.
pub(crate) fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').expect("label=value");
                    (key.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().expect("a numeric sample value"),
            }
        })
        .collect()
}

fn total(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| {
            sample.name == name
                && filter
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(value))
        })
        .map(|sample| sample.value)
        .sum()
}

/// Scrapes until `done` holds (the process records a settle just after acking it), or fails with the last scrape.
async fn scrape_until(addr: &str, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        let samples = parse_exposition(&body);
        if done(&samples) {
            return samples;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scrape never showed what was handled:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `acked` events acked (one after a retry) and one invalid event dead-lettered: `acked + 2` deliveries and
/// attempts.
pub(crate) async fn handle_some_events(system: &System, acked: usize) {
    system.smtp.fail_next_data(vec![(451, "4.3.0 later")]);
    for n in 0..acked {
        system
            .publisher
            .publish(user(&format!("scrape{n}@example.com"), "Scrape"))
            .await
            .unwrap();
    }
    system
        .publish_raw("events.users.registered", b"not json")
        .await;
    system.wait_settled("welcome").await;
}

#[tokio::test]
async fn the_health_port_serves_the_same_metrics_as_otlp_in_the_prometheus_format() {
    let system = System::start().await;
    let receiver = OtlpReceiver::start();
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let _welcome = system
        .spawn(
            "welcome",
            &[
                ("JOB_HEALTH_ADDR", addr.clone()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
                ("OTEL_METRIC_EXPORT_INTERVAL", "300".to_owned()),
            ],
        )
        .await;
    handle_some_events(&system, 3).await;

    let ours = [
        ("messaging_system", "nats"),
        ("messaging_operation_name", "process"),
        ("messaging_destination_name", "events.users.registered"),
        ("messaging_destination_subscription_name", "welcome"),
        ("messaging_consumer_group_name", "welcome"),
        ("jetfn_function", "welcome"),
    ];
    let samples = scrape_until(&addr, |samples| {
        total(samples, "messaging_process_duration_seconds_count", &ours) >= 5.0
    })
    .await;
    assert_eq!(
        total(&samples, "messaging_client_consumed_messages_total", &ours),
        5.0,
        "every delivery, the retried one twice"
    );
    assert_eq!(
        total(&samples, "messaging_process_duration_seconds_count", &ours),
        5.0
    );
    assert_eq!(total(&samples, "jetfn_events_processed_total", &ours), 3.0);
    assert_eq!(total(&samples, "jetfn_events_retried_total", &ours), 1.0);
    assert_eq!(
        total(
            &samples,
            "jetfn_events_dead_lettered_total",
            &[("jetfn_dlq_kind", "invalid")]
        ),
        1.0
    );
    assert_eq!(total(&samples, "jetfn_emails_sent_total", &[]), 3.0);
    assert_eq!(
        total(
            &samples,
            "jetfn_breaker_open",
            &[("jetfn_function", "welcome")]
        ),
        0.0
    );
    // A failed attempt names its error type, as the conventions ask; an acked one has none.
    assert_eq!(
        total(
            &samples,
            "messaging_process_duration_seconds_count",
            &[("jetfn_outcome", "retry"), ("error_type", "transient")]
        ),
        1.0
    );
    assert!(
        samples
            .iter()
            .filter(|sample| sample.labels.get("jetfn_outcome").map(String::as_str) == Some("ack"))
            .all(|sample| !sample.labels.contains_key("error_type"))
    );

    // The histogram has the second-sized buckets, cumulative up to +Inf.
    let acked = [("jetfn_outcome", "ack"), ("jetfn_function", "welcome")];
    let mut buckets: Vec<(String, f64)> = samples
        .iter()
        .filter(|sample| {
            sample.name == "messaging_process_duration_seconds_bucket"
                && acked
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(value))
        })
        .map(|sample| (sample.labels["le"].clone(), sample.value))
        .collect();
    let bounds: Vec<String> = buckets.iter().map(|(le, _)| le.clone()).collect();
    assert_eq!(
        bounds,
        [
            "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1", "2.5",
            "5", "7.5", "10", "30", "60", "300", "+Inf"
        ]
    );
    assert_eq!(buckets.pop().map(|(_, count)| count), Some(3.0));
    assert!(
        buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1),
        "cumulative"
    );

    // The same instruments over OTLP: every metric the receiver got has its Prometheus family.
    let deadline = std::time::Instant::now() + WAIT;
    let otlp_names = loop {
        let names: std::collections::BTreeSet<String> = receiver
            .metrics()
            .into_iter()
            .filter(|metric| metric.service_name == "welcome")
            .map(|metric| metric.name)
            .collect();
        if names.contains("messaging.client.consumed.messages")
            && names.contains("jetfn.emails.sent")
        {
            break names;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "OTLP metrics: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for name in &otlp_names {
        let family = name.replace('.', "_");
        assert!(
            samples
                .iter()
                .any(|sample| sample.name.starts_with(&family)),
            "{name} is exported over OTLP but not scraped"
        );
    }
    let consumed = receiver
        .metrics()
        .into_iter()
        .find(|metric| metric.name == "messaging.client.consumed.messages")
        .unwrap();
    for (key, value) in [
        ("messaging.system", "nats"),
        ("messaging.operation.name", "process"),
        ("messaging.destination.name", "events.users.registered"),
        ("messaging.destination.subscription.name", "welcome"),
    ] {
        assert_eq!(
            consumed.attributes.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }
}

#[tokio::test]
async fn the_dlq_router_serves_metrics_on_its_health_port() {
    let system = System::start().await;
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let _router = system
        .spawn("dlq-router", &[("ROUTER_HEALTH_ADDR", addr.clone())])
        .await;
    let (status, body) = http_get(&addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    // Whatever it holds yet parses as the exposition format.
    parse_exposition(&body);
    assert_eq!(http_get(&addr, "/readyz").await.0, 200);
}

#[tokio::test]
async fn attempts_link_to_the_publisher_and_the_dead_letter_span_is_named_by_its_template() {
    let system = System::start().await;
    let receiver = OtlpReceiver::start();
    let _welcome = system.spawn("welcome", &otel_env(&receiver)).await;
    let (_publish, send) = publish_traced(
        &system,
        &receiver,
        r#"{"user_id":"l1","email":"link@example.com","name":"Link"}"#,
    )
    .await;
    assert_eq!(
        send.attributes
            .get("messaging.operation.name")
            .map(String::as_str),
        Some("send")
    );
    let attempt = receiver
        .wait_for_span(
            |span| span.service_name == "welcome" && span.name == "process events.users.registered",
            WAIT,
        )
        .await;
    assert_eq!(
        attempt.parent_span_id, send.span_id,
        "still the publisher's child"
    );
    assert_eq!(
        attempt.links,
        vec![(send.trace_id.clone(), send.span_id.clone())],
        "and linked to the publisher's context"
    );
    let port = system.nats.url().rsplit(':').next().unwrap().to_owned();
    for (key, value) in [
        ("messaging.operation.name", "process"),
        ("messaging.operation.type", "process"),
        ("server.address", "127.0.0.1"),
        ("server.port", port.as_str()),
        ("messaging.destination.subscription.name", "welcome"),
    ] {
        assert_eq!(
            attempt.attributes.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }

    // A dead letter: its write is named by the subject's template, with the sequence in an attribute only.
    let sequence = system
        .publish_raw("events.users.registered", b"not json")
        .await;
    let dead = receiver
        .wait_for_span(
            |span| span.service_name == "welcome" && span.name.starts_with("send dlq."),
            WAIT,
        )
        .await;
    assert_eq!(dead.name, "send dlq.EVENTS.welcome.*");
    assert_eq!(
        dead.attributes
            .get("messaging.destination.name")
            .map(String::as_str),
        Some(format!("dlq.EVENTS.welcome.{sequence}").as_str())
    );
    assert_eq!(
        dead.attributes
            .get("messaging.operation.name")
            .map(String::as_str),
        Some("send")
    );
    assert_eq!(dead.kind, 4, "PRODUCER");
}

/// The JSON lines of a process's output that hold `needle`.
fn json_lines(output: &str, needle: &str) -> Vec<serde_json::Value> {
    output
        .lines()
        .filter(|line| line.contains(needle))
        .filter_map(|line| serde_json::from_str(line.trim()).ok())
        .collect()
}

fn is_hex(value: &serde_json::Value, len: usize) -> bool {
    value
        .as_str()
        .is_some_and(|text| text.len() == len && text.bytes().all(|byte| byte.is_ascii_hexdigit()))
}

#[tokio::test]
async fn json_logs_inside_an_attempt_carry_the_event_s_trace_id_and_a_span_id() {
    let system = System::start().await;
    let welcome = system
        .spawn("welcome", &[("LOG_FORMAT", "json".to_owned())])
        .await;
    system.smtp.fail_next_data(vec![(451, "4.3.0 later")]);
    let published = system
        .publisher
        .publish(user("json@example.com", "Json"))
        .await
        .unwrap();
    system.wait_settled("welcome").await;
    let stream = system.js.get_stream("EVENTS").await.unwrap();
    let stored = stream.get_raw_message(published.sequence).await.unwrap();
    let traceparent = stored
        .headers
        .get("traceparent")
        .unwrap()
        .as_str()
        .to_owned();
    let trace_id = traceparent.split('-').nth(1).unwrap();

    welcome.wait_for_output("will retry", WAIT).await;
    let retries = json_lines(&welcome.output(), "will retry");
    assert_eq!(retries.len(), 1, "{}", welcome.output());
    let line = &retries[0];
    assert_eq!(line["trace_id"], trace_id, "the event's trace: {line}");
    assert!(is_hex(&line["span_id"], 16), "{line}");
    // The second attempt has a span id of its own, in the same trace (its line comes just after the ack).
    welcome.wait_for_output("\"processed\"", WAIT).await;
    let second = json_lines(&welcome.output(), "\"processed\"");
    assert!(
        second.iter().any(|line| line["trace_id"] == trace_id
            && is_hex(&line["span_id"], 16)
            && line["span_id"] != retries[0]["span_id"]),
        "{}",
        welcome.output()
    );
    // A line outside any attempt has none.
    let serving = json_lines(&welcome.output(), "serving");
    assert!(!serving.is_empty() && serving.iter().all(|line| line.get("trace_id").is_none()));
}

#[tokio::test]
async fn with_spans_exported_the_log_ids_are_the_exported_span_s() {
    let system = System::start().await;
    let receiver = OtlpReceiver::start();
    let welcome = system
        .spawn(
            "welcome",
            &[
                ("LOG_FORMAT", "json".to_owned()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ],
        )
        .await;
    system.smtp.fail_next_data(vec![(451, "4.3.0 later")]);
    system
        .publisher
        .publish(user("otlpjson@example.com", "Json"))
        .await
        .unwrap();
    welcome.wait_for_output("will retry", WAIT).await;
    let line = json_lines(&welcome.output(), "will retry").remove(0);
    let span_id = line["span_id"].as_str().unwrap().to_owned();
    let attempt = receiver
        .wait_for_span(
            |span| span.name == "process events.users.registered" && span.span_id == span_id,
            WAIT,
        )
        .await;
    assert_eq!(line["trace_id"], attempt.trace_id.as_str());
    assert_eq!(
        attempt.attributes.get("jetfn.attempt").map(String::as_str),
        Some("1")
    );
}

#[tokio::test]
async fn grpc_is_refused_at_start_naming_the_variable() {
    let system = System::start().await;
    let mut env = system.env();
    env.extend([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:4317".to_owned(),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
    ]);
    let welcome = FunctionProcess::spawn("welcome", &env);
    let status = welcome.wait_exit(WAIT).await;
    assert_ne!(status.code(), Some(0));
    let output = welcome.output();
    assert!(
        output.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc") && output.contains("http/protobuf"),
        "{output}"
    );
    assert!(!output.contains("serving"), "{output}");
}

#[tokio::test]
async fn traces_or_metrics_exporter_none_turns_that_signal_off() {
    let system = System::start().await;
    let receiver = OtlpReceiver::start();
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let welcome = system
        .spawn(
            "welcome",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
                ("OTEL_METRIC_EXPORT_INTERVAL", "200".to_owned()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
                ("OTEL_TRACES_EXPORTER", "none".to_owned()),
                ("JOB_HEALTH_ADDR", addr.clone()),
            ],
        )
        .await;
    system
        .publisher
        .publish(user("none1@example.com", "None"))
        .await
        .unwrap();
    system.wait_settled("welcome").await;
    let deadline = std::time::Instant::now() + WAIT;
    while !receiver
        .metrics()
        .iter()
        .any(|metric| metric.name == "jetfn.events.processed")
    {
        assert!(std::time::Instant::now() < deadline, "metrics still go out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A span would have been exported within the batch delay long ago.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.spans().is_empty(), "{:?}", receiver.spans());
    drop(welcome);

    // The other way round: spans go out, no metric does, and /metrics says why it has nothing.
    let receiver = OtlpReceiver::start();
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let _welcome = system
        .spawn(
            "welcome",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
                ("OTEL_METRIC_EXPORT_INTERVAL", "200".to_owned()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
                ("OTEL_METRICS_EXPORTER", "none".to_owned()),
                ("JOB_HEALTH_ADDR", addr.clone()),
            ],
        )
        .await;
    system
        .publisher
        .publish(user("none2@example.com", "None"))
        .await
        .unwrap();
    receiver
        .wait_for_span(|span| span.name == "process events.users.registered", WAIT)
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(receiver.metrics().is_empty(), "{:?}", receiver.metrics());
    let (status, body) = http_get(&addr, "/metrics").await;
    assert_eq!(status, 404);
    assert!(body.contains("OTEL_METRICS_EXPORTER"), "{body}");
}
