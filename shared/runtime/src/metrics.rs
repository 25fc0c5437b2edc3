//! Per-function metrics over OpenTelemetry: processed, retried, dead-lettered, dropped, and how long each
//! attempt took. Exported with the spans when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (a no-op otherwise).

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

/// The instruments of one function, created once.
#[derive(Debug)]
pub(crate) struct Metrics {
    processed: Counter<u64>,
    retried: Counter<u64>,
    dead_lettered: Counter<u64>,
    dropped: Counter<u64>,
    duration: Histogram<f64>,
    attributes: [KeyValue; 2],
}

impl Metrics {
    /// `destination` is the subject (pattern) the consumer reads, such as `events.users.registered`.
    pub(crate) fn new(function: &str, destination: String) -> Self {
        let meter = opentelemetry::global::meter("jetfn");
        Self {
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
            // Reference-counted values: the attributes are cloned for every message, and an owned string would be
            // an allocation each time.
            attributes: [
                KeyValue::new("jetfn.function", shared(function.to_owned())),
                KeyValue::new("messaging.destination.name", shared(destination)),
            ],
        }
    }

    pub(crate) fn processed(&self, seconds: f64) {
        self.processed.add(1, &self.attributes);
        self.record(seconds, "ack");
    }

    pub(crate) fn retried(&self, seconds: f64) {
        self.retried.add(1, &self.attributes);
        self.record(seconds, "retry");
    }

    pub(crate) fn dead_lettered(&self, seconds: f64, kind: &'static str) {
        let [function, destination] = self.attributes.clone();
        self.dead_lettered.add(
            1,
            &[function, destination, KeyValue::new("jetfn.dlq.kind", kind)],
        );
        self.record(seconds, "dead-letter");
    }

    pub(crate) fn dropped(&self, reason: &'static str) {
        let [function, destination] = self.attributes.clone();
        self.dropped.add(
            1,
            &[
                function,
                destination,
                KeyValue::new("jetfn.drop.reason", reason),
            ],
        );
    }

    fn record(&self, seconds: f64, outcome: &'static str) {
        let [function, destination] = self.attributes.clone();
        self.duration.record(
            seconds,
            &[
                function,
                destination,
                KeyValue::new("jetfn.outcome", outcome),
            ],
        );
    }
}

fn shared(text: String) -> opentelemetry::Value {
    opentelemetry::Value::String(opentelemetry::StringValue::from(
        std::sync::Arc::<str>::from(text),
    ))
}
