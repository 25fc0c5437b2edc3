//! The Grafana dashboard (infra/grafana/jetfn.json) queries only metrics that exist: every metric name in its
//! PromQL is in a real scrape of a function's `/metrics`, or is one of the NATS exporter's, named here.

use std::collections::BTreeSet;

use crate::support::{System, WAIT, user};
use crate::telemetry::{http_get, parse_exposition};

/// What the dashboard reads from the NATS Prometheus exporter (prometheus-nats-exporter `-jsz=consumers`; the
/// same names from nats-surveyor): a consumer's backlog is the server's to know, not a function's. README,
/// "Metrics", says so.
const NATS_EXPORTER: [&str; 3] = [
    "jetstream_consumer_num_pending",
    "jetstream_consumer_num_ack_pending",
    "jetstream_consumer_num_redelivered",
];

/// The metric names a PromQL expression reads: identifiers that are not functions (followed by `(`), keywords,
/// label names (inside `{}` or a `by (...)` list), range durations (`[5m]`) or Grafana variables (`$__range`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Binary and aggregation operators: an aggregation may be followed by `by (...)` rather than by its `(`.
    const KEYWORDS: [&str; 26] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_list = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += usize::from(chars[i] == '\\') + 1;
                }
                i += 1;
            }
            '{' | '[' => {
                // Label matchers and ranges; a label value may hold the closing character inside its quotes.
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' {
                        i += 1;
                        while i < chars.len() && chars[i] != '"' {
                            i += usize::from(chars[i] == '\\') + 1;
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            '(' if skip_list => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                skip_list = false;
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                let keyword = KEYWORDS.contains(&word.to_ascii_lowercase().as_str());
                if matches!(
                    word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    skip_list = true;
                } else if next != Some(&'(') && !keyword {
                    names.insert(word);
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn the_promql_scanner_finds_metric_names_only() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (le, jetfn_function) (rate(messaging_process_duration_seconds_bucket{jetfn_function=~"$function", a="x{y}"}[$__rate_interval]))) / on (x) other_metric offset 5m"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["messaging_process_duration_seconds_bucket", "other_metric"]
    );
}

/// Every query of the dashboard (panel targets and template variables).
fn dashboard_queries() -> Vec<String> {
    let path = testkit::workspace_root().join("infra/grafana/jetfn.json");
    let text = std::fs::read_to_string(&path).expect("infra/grafana/jetfn.json exists");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queries.push(target["expr"].as_str().expect("a PromQL expr").to_owned());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(definition) = variable["definition"].as_str() {
            // label_values(metric, label): the metric is the first argument.
            let metric = definition
                .strip_prefix("label_values(")
                .and_then(|rest| rest.split(',').next())
                .expect("a label_values(metric, label) variable");
            queries.push(metric.trim().to_owned());
        }
    }
    queries
}

#[tokio::test]
async fn every_dashboard_query_names_a_metric_a_function_exports() {
    let system = System::start().await;
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let welcome = system
        .spawn(
            "welcome",
            &[
                ("JOB_HEALTH_ADDR", addr.clone()),
                ("JOB_BREAKER_THRESHOLD", "1".to_owned()),
                ("JOB_BREAKER_PROBE_SECS", "1".to_owned()),
            ],
        )
        .await;
    // One of each: a retry, a dead letter, a breaker opening (421: the route is down) and emails sent.
    system
        .smtp
        .fail_next_data(vec![(421, "4.3.2 shutting down")]);
    system
        .publisher
        .publish(user("dash1@example.com", "Dash"))
        .await
        .unwrap();
    welcome.wait_for_output("circuit closed", WAIT).await;
    system.smtp.fail_next_data(vec![(451, "4.3.0 later")]);
    system
        .publisher
        .publish(user("dash2@example.com", "Dash"))
        .await
        .unwrap();
    system
        .publish_raw("events.users.registered", b"not json")
        .await;
    system.smtp.wait_for_messages(2, WAIT).await;
    system.wait_settled("welcome").await;

    let deadline = std::time::Instant::now() + WAIT;
    let (exported, missing) = loop {
        let (status, body) = http_get(&addr, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        let exported: BTreeSet<String> = parse_exposition(&body)
            .into_iter()
            .map(|sample| sample.name)
            .collect();
        let missing: Vec<(String, String)> = dashboard_queries()
            .iter()
            .flat_map(|query| {
                metric_names(query)
                    .into_iter()
                    .map(move |name| (name, query.clone()))
            })
            .filter(|(name, _)| !exported.contains(name) && !NATS_EXPORTER.contains(&name.as_str()))
            .collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break (exported, missing);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nobody exports: {missing:#?}\nexported: {exported:#?}"
    );
    // And it does read the function side: the scanner found our names, not only the exporter's.
    let read: BTreeSet<String> = dashboard_queries()
        .iter()
        .flat_map(|query| metric_names(query))
        .collect();
    for name in [
        "messaging_process_duration_seconds_bucket",
        "jetfn_events_processed_total",
        "jetfn_events_dead_lettered_total",
        "jetfn_breaker_open",
        "jetstream_consumer_num_pending",
    ] {
        assert!(read.contains(name), "the dashboard reads {name}");
    }
}
