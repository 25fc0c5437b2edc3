//! Per-function metrics over OpenTelemetry, named and labelled by the messaging conventions where they have a
//! name for the thing (`messaging.process.duration`, `messaging.client.consumed.messages`) and `jetfn.*`
//! where they do not (what became of an event). The same instruments go out over OTLP when an endpoint is set and
//! are scraped from the health port's `/metrics` (see [`crate::telemetry`]); with neither, recording is a no-op.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

/// Bucket bounds of `messaging.process.duration`, in seconds: the OpenTelemetry messaging conventions' advice
/// (5 ms to 10 s), then 30 s, 60 s and 300 s for slow SMTP routes up to the default handler timeout. The SDK's
/// default bounds (0, 5, 10, 25, ... 10000) are meant for milliseconds: in seconds almost every attempt would fall in
/// the first bucket.
pub(crate) const DURATION_BOUNDARIES: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
    300.0,
];

/// `messaging.operation.name` of everything a consumer records: the conventions leave the name to the system, and
/// a function's one operation on a message is processing it (the pull that fetched it is not instrumented, so the
/// consumed count is taken when processing starts).
pub(crate) const OPERATION: &str = "process";

/// How many attributes every point of one consumer carries; the per-outcome ones are appended.
const BASE: usize = 6;

/// The instruments of one consumer, created once.
#[derive(Debug)]
pub(crate) struct Metrics {
    consumed: Counter<u64>,
    processed: Counter<u64>,
    retried: Counter<u64>,
    dead_lettered: Counter<u64>,
    dropped: Counter<u64>,
    duration: Histogram<f64>,
    attributes: [KeyValue; BASE],
    /// The duration's attributes of an acked and of a retried attempt, built once: every event is one of them, and
    /// building the set per event was an allocation and seven clones each time.
    acked: Box<[KeyValue]>,
    retried_transiently: Box<[KeyValue]>,
}

impl Metrics {
    /// `destination` is the subject (pattern) the consumer reads, such as `events.users.registered`; `consumer` is
    /// its durable name, which the conventions call the subscription (and, as replicas share it, the group).
    pub(crate) fn new(function: &str, destination: String, consumer: &str) -> Self {
        let meter = opentelemetry::global::meter("jetfn");
        let consumer = shared(consumer.to_owned());
        let attributes = [
            KeyValue::new("jetfn.function", shared(function.to_owned())),
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("messaging.operation.name", OPERATION),
            KeyValue::new("messaging.destination.name", shared(destination)),
            KeyValue::new("messaging.destination.subscription.name", consumer.clone()),
            KeyValue::new("messaging.consumer.group.name", consumer),
        ];
        let outcome = |extra: &[KeyValue]| -> Box<[KeyValue]> {
            attributes.iter().chain(extra).cloned().collect()
        };
        let acked = outcome(&[KeyValue::new("jetfn.outcome", "ack")]);
        let retried_transiently = outcome(&[
            KeyValue::new("jetfn.outcome", "retry"),
            KeyValue::new("error.type", "transient"),
        ]);
        Self {
            consumed: meter
                .u64_counter("messaging.client.consumed.messages")
                .with_unit("{message}")
                .with_description("deliveries handed to the function, redeliveries included")
                .build(),
            processed: meter
                .u64_counter("jetfn.events.processed")
                .with_description("events handled and acked")
                .build(),
            retried: meter
                .u64_counter("jetfn.events.retried")
                .with_description("attempts that failed transiently and were scheduled again")
                .build(),
            dead_lettered: meter
                .u64_counter("jetfn.events.dead_lettered")
                .with_description("events written to the dead-letter stream")
                .build(),
            dropped: meter
                .u64_counter("jetfn.events.dropped")
                .with_description(
                    "events acked without their effect, on purpose (for example expired)",
                )
                .build(),
            duration: meter
                .f64_histogram("messaging.process.duration")
                .with_unit("s")
                .with_description("duration of one attempt, decode to settle")
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build(),
            // Reference-counted values: a dead letter's attribute set is built from these, and an owned string
            // would be an allocation each time.
            attributes,
            acked,
            retried_transiently,
        }
    }

    /// One delivery reached the function (counted before the handler runs, once per delivery).
    pub(crate) fn consumed(&self) {
        self.consumed.add(1, &self.attributes);
    }

    pub(crate) fn processed(&self, seconds: f64) {
        self.processed.add(1, &self.attributes);
        crate::heartbeat::count(crate::heartbeat::Finished::Succeeded);
        self.duration.record(seconds, &self.acked);
    }

    pub(crate) fn retried(&self, seconds: f64) {
        self.retried.add(1, &self.attributes);
        crate::heartbeat::count(crate::heartbeat::Finished::Retried);
        self.duration.record(seconds, &self.retried_transiently);
    }

    pub(crate) fn dead_lettered(&self, seconds: f64, kind: &'static str) {
        self.dead_lettered
            .add(1, &self.with([KeyValue::new("jetfn.dlq.kind", kind)]));
        crate::heartbeat::count(crate::heartbeat::Finished::Failed);
        self.record(seconds, "dead-letter", kind);
    }

    pub(crate) fn dropped(&self, reason: &'static str) {
        self.dropped
            .add(1, &self.with([KeyValue::new("jetfn.drop.reason", reason)]));
    }

    /// `error` is the conventions' `error.type`, set only when the attempt failed.
    fn record(&self, seconds: f64, outcome: &'static str, error: &'static str) {
        let outcome = KeyValue::new("jetfn.outcome", outcome);
        self.duration.record(
            seconds,
            &self.with([outcome, KeyValue::new("error.type", error)]),
        );
    }

    fn with<const N: usize>(&self, extra: [KeyValue; N]) -> Vec<KeyValue> {
        let mut all = Vec::with_capacity(BASE + N);
        all.extend(self.attributes.iter().cloned());
        all.extend(extra);
        all
    }
}

fn shared(text: String) -> opentelemetry::Value {
    opentelemetry::Value::String(opentelemetry::StringValue::from(
        std::sync::Arc::<str>::from(text),
    ))
}
