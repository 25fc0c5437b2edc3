//! Logs to stdout through `tracing`, spans and metrics to an OTLP/HTTP backend when the standard
//! `OTEL_EXPORTER_OTLP_*` variables say where one is, and the same metrics in the Prometheus text format for the
//! health port's `/metrics`. `OTEL_TRACES_EXPORTER` and `OTEL_METRICS_EXPORTER` choose among them (`none` turns a
//! signal off). Trace context crosses NATS in W3C `traceparent`/`tracestate` headers; JSON log lines inside an
//! attempt carry its `trace_id` and `span_id`.

use std::io::IsTerminal as _;
use std::sync::OnceLock;

use anyhow::Context as _;
use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

pub use crate::log_fields::LogFields;

/// Flushes and shuts the span exporter down when dropped, so spans of the last messages are not lost on exit.
#[must_use = "dropping the guard shuts telemetry down"]
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered now; used before exit, where `Drop` might run too late.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(err) = provider.force_flush()
        {
            tracing::warn!(error = %err, "flushing spans failed");
        }
        if let Some(meters) = &self.meters
            && let Err(err) = meters.force_flush()
        {
            tracing::warn!(error = %err, "flushing metrics failed");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "shutting the span exporter down failed");
        }
        if let Some(meters) = self.meters.take()
            && let Err(err) = meters.shutdown()
        {
            tracing::warn!(error = %err, "shutting the metric exporter down failed");
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), `LOG_FORMAT=json` for containers,
/// compact text otherwise; the OTLP span and metric exporters when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the
/// signal's own endpoint) is set; and, when the process has a health port (`JOB_HEALTH_ADDR`, or the router's
/// `ROUTER_HEALTH_ADDR`), the Prometheus registry that [`metrics_text`] renders for its `/metrics`.
/// `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` (`none` turns a signal off) and `OTEL_SDK_DISABLED=true`
/// (everything off) are honoured.
///
/// The health port is looked at here, before any configuration is read, because the meter provider must exist
/// before the first instrument is made; a process with neither a port nor an OTLP endpoint keeps no metrics at
/// all, so recording costs it nothing.
///
/// # Errors
/// An `OTEL_*` variable asks for something this build does not do (gRPC, an unknown exporter), naming it; the
/// exporter cannot be built; or a subscriber is already installed.
pub fn init(service_name: &str) -> anyhow::Result<Telemetry> {
    let health_port = ["JOB_HEALTH_ADDR", "ROUTER_HEALTH_ADDR"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()));
    install(service_name, "info", false, health_port)
}

/// As [`init`] for a command-line tool: logs go to stderr (stdout is the command's output) and only warnings
/// show unless `RUST_LOG` says otherwise. No Prometheus registry: nothing scrapes a command.
///
/// # Errors
/// As [`init`].
pub fn init_cli(service_name: &str) -> anyhow::Result<Telemetry> {
    install(service_name, "warn", true, false)
}

/// Which exporters the standard variables ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Exporters {
    /// Spans over OTLP/HTTP.
    pub traces_otlp: bool,
    /// Metrics over OTLP/HTTP.
    pub metrics_otlp: bool,
    /// Metrics kept for a Prometheus scrape of `/metrics`.
    pub prometheus: bool,
}

/// Reads the OpenTelemetry variables through `var` (a variable set to the empty string counts as unset, as the
/// specification says). `serves_metrics`: the process has a health port to serve `/metrics` on.
///
/// - `OTEL_SDK_DISABLED=true`: nothing is exported or kept.
/// - `OTEL_TRACES_EXPORTER`: `otlp` (the default) or `none`.
/// - `OTEL_METRICS_EXPORTER`: a comma-separated list of `otlp` and `prometheus`, or `none`; unset, both (OTLP
///   only where an endpoint is set, Prometheus only where there is a port to serve it).
/// - An OTLP signal is on only where `OTEL_EXPORTER_OTLP_ENDPOINT` or its own `..._TRACES_ENDPOINT` /
///   `..._METRICS_ENDPOINT` is set: the SDK's default of `localhost:4318` would send to nothing in a container.
/// - `OTEL_EXPORTER_OTLP_PROTOCOL` (and the per-signal `..._PROTOCOL`) may only be `http/protobuf`: gRPC is not
///   built in (see ARCHITECTURE.md, Telemetry), and the SDK would otherwise fall back to HTTP with only a
///   warning, sending to a gRPC port that does not answer HTTP.
///
/// # Errors
/// A value this build does not do, naming the variable, the value and what it accepts.
pub fn exporters(
    var: impl Fn(&str) -> Option<String>,
    serves_metrics: bool,
) -> Result<Exporters, String> {
    let get = |name: &str| var(name).filter(|value| !value.trim().is_empty());
    if get("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
        return Ok(Exporters::default());
    }
    let traces = exporter_list(
        "OTEL_TRACES_EXPORTER",
        get("OTEL_TRACES_EXPORTER"),
        &["otlp"],
    )?;
    let metrics = exporter_list(
        "OTEL_METRICS_EXPORTER",
        get("OTEL_METRICS_EXPORTER"),
        &["otlp", "prometheus"],
    )?;
    let endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    let exporters = Exporters {
        traces_otlp: traces.contains(&"otlp")
            && (endpoint || get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()),
        metrics_otlp: metrics.contains(&"otlp")
            && (endpoint || get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").is_some()),
        prometheus: metrics.contains(&"prometheus") && serves_metrics,
    };
    let protocols = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", true),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", exporters.traces_otlp),
        (
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            exporters.metrics_otlp,
        ),
    ];
    if exporters.traces_otlp || exporters.metrics_otlp {
        for (name, applies) in protocols {
            let Some(value) = get(name).filter(|_| applies) else {
                continue;
            };
            match value.trim().to_ascii_lowercase().as_str() {
                "http/protobuf" => {}
                "grpc" => {
                    return Err(format!(
                        "{name}=grpc: this build exports OTLP over HTTP only; set {name}=http/protobuf (or unset \
                         it) and point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's OTLP/HTTP port (4318)"
                    ));
                }
                _ => {
                    return Err(format!(
                        "{name}={value}: not supported; this build exports OTLP as `http/protobuf` only"
                    ));
                }
            }
        }
    }
    Ok(exporters)
}

/// The exporters a list variable names; unset, all of `known`. `none` stands alone.
fn exporter_list(
    name: &str,
    value: Option<String>,
    known: &[&'static str],
) -> Result<Vec<&'static str>, String> {
    let Some(value) = value else {
        return Ok(known.to_vec());
    };
    let mut chosen = Vec::new();
    let entries: Vec<String> = value
        .split(',')
        .map(|entry| entry.trim().to_ascii_lowercase())
        .filter(|entry| !entry.is_empty())
        .collect();
    for entry in &entries {
        if entry == "none" {
            if entries.len() > 1 {
                return Err(format!(
                    "{name}={value}: `none` turns every exporter off and cannot be combined with others"
                ));
            }
            return Ok(Vec::new());
        }
        match known.iter().find(|known| **known == entry.as_str()) {
            Some(known) => chosen.push(*known),
            None => {
                return Err(format!(
                    "{name}={value}: `{entry}` is not supported; use {} or `none`",
                    known
                        .iter()
                        .map(|known| format!("`{known}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    Ok(chosen)
}

/// Where the log lines go: stdout for a function, stderr for a command (whose stdout is its output).
#[derive(Clone, Copy)]
struct Output {
    stderr: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Output {
    type Writer = tracing_subscriber::fmt::writer::EitherWriter<std::io::Stdout, std::io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        if self.stderr {
            tracing_subscriber::fmt::writer::EitherWriter::B(std::io::stderr())
        } else {
            tracing_subscriber::fmt::writer::EitherWriter::A(std::io::stdout())
        }
    }
}

/// The log layer of a process: JSON lines (`LOG_FORMAT=json`, with the attempt's trace and span ids) or compact
/// text, written through `writer`. Public for the benchmark's log sink, which must pay what a function pays; it
/// turns the JSON lines' per-attempt ids on with [`set_json_log_ids`], as [`init`] does.
pub fn log_layer<S, W>(
    json: bool,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    if json {
        tracing_subscriber::fmt::layer()
            .json()
            .fmt_fields(crate::json_fields::JsonLogFields)
            .event_format(WithTraceIds(
                tracing_subscriber::fmt::format()
                    .json()
                    .with_current_span(true),
            ))
            .with_writer(writer)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .compact()
            .with_target(false)
            .fmt_fields(LogFields)
            .with_writer(writer)
            .boxed()
    }
}

/// Whether each attempt gets trace and span ids of its own for JSON log lines ([`attach_log_ids`]); [`init`] sets
/// it for JSON logs without a span exporter.
#[doc(hidden)]
pub fn set_json_log_ids(on: bool) {
    JSON_IDS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// `layer` behind `filter` when there is one.
fn filtered<S>(
    layer: Box<dyn tracing_subscriber::Layer<S> + Send + Sync>,
    filter: Option<EnvFilter>,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    match filter {
        Some(filter) => layer.with_filter(filter).boxed(),
        None => layer,
    }
}

fn install(
    service_name: &str,
    default_filter: &str,
    stderr: bool,
    serves_metrics: bool,
) -> anyhow::Result<Telemetry> {
    let exporters =
        exporters(|name| std::env::var(name).ok(), serves_metrics).map_err(anyhow::Error::msg)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // async-nats logs whole protocol messages at debug in rare paths; payloads hold personal data, so it stays at
    // info unless RUST_LOG names it explicitly.
    let quiet_client = !std::env::var("RUST_LOG").is_ok_and(|value| value.contains("async_nats"));
    let filter = || {
        let filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
        if quiet_client {
            // A command line stays at warnings: its "connected" notices are chatter on stderr.
            let directive = if stderr {
                "async_nats=warn"
            } else {
                "async_nats=info"
            };
            filter.add_directive(directive.parse().expect("a valid directive"))
        } else {
            filter
        }
    };
    let json = std::env::var("LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json"));
    // Colours only for a person at a terminal: escape codes in container logs and pipes are noise, and cost CPU.
    let ansi = if stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    // Without an exporter the log layer is the only layer, so its filter goes on the whole subscriber: a
    // per-layer filter keeps its own bookkeeping at every span's creation, entry, exit and close, about 800
    // instructions of a no-op attempt's 44k (tests/bench/ANALYSIS.md, section 39). With spans exported, the OTLP
    // layer takes the runtime's debug spans that the log layer does not, so each keeps a filter of its own.
    let (global_filter, log_filter) = if exporters.traces_otlp {
        (None, Some(filter()))
    } else {
        (Some(filter()), None)
    };
    let fmt_layer = filtered(log_layer(json, ansi, Output { stderr }), log_filter);

    let resource = || {
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service_name.to_owned());
        }
        resource.build()
    };
    let provider = if exporters.traces_otlp {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .context("building the OTLP span exporter from OTEL_EXPORTER_OTLP_*")?;
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource())
                .build(),
        )
    } else {
        None
    };
    let meters = if exporters.metrics_otlp || exporters.prometheus {
        let mut builder = SdkMeterProvider::builder().with_resource(resource());
        if exporters.metrics_otlp {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .build()
                .context("building the OTLP metric exporter from OTEL_EXPORTER_OTLP_*")?;
            builder = builder.with_periodic_exporter(exporter);
        }
        if exporters.prometheus {
            let registry = prometheus::Registry::new();
            let reader = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .build()
                .context("building the Prometheus metric reader")?;
            builder = builder.with_reader(reader);
            let _ = PROMETHEUS.set(registry);
        }
        let meters = builder.build();
        opentelemetry::global::set_meter_provider(meters.clone());
        Some(meters)
    } else {
        None
    };
    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service_name.to_owned()))
            .with_filter(EnvFilter::new("info,runtime=debug"))
    });
    tracing_subscriber::registry()
        .with(global_filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .context("installing the tracing subscriber")?;
    if provider.is_some() {
        tracing::info!(service = service_name, "exporting spans over OTLP");
    }
    EXPORTING.store(provider.is_some(), std::sync::atomic::Ordering::Relaxed);
    set_json_log_ids(json && provider.is_none());
    publish::set_exporting(provider.is_some());
    Ok(Telemetry { provider, meters })
}

static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// JSON logs without a span exporter: the runtime gives each attempt ids of its own for the log lines.
static JSON_IDS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The registry `/metrics` renders; set once by [`init`] unless `OTEL_METRICS_EXPORTER` leaves Prometheus out.
static PROMETHEUS: OnceLock<prometheus::Registry> = OnceLock::new();

/// Whether spans leave the process; the runtime records the full OpenTelemetry attributes only then.
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Every instrument in the Prometheus text exposition format (0.0.4): OpenTelemetry names with dots as
/// underscores, the unit as a suffix (`messaging_process_duration_seconds`), `_total` on counters. `None` when
/// Prometheus is off (`OTEL_METRICS_EXPORTER` without `prometheus`, or `OTEL_SDK_DISABLED=true`).
pub fn metrics_text() -> Option<String> {
    let registry = PROMETHEUS.get()?;
    let mut text = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut text) {
        Ok(()) => Some(text),
        Err(err) => {
            tracing::warn!(error = %err, "rendering the metrics failed");
            None
        }
    }
}

/// The broker the process talks to, for the conventions' `server.address` and `server.port`.
static SERVER: OnceLock<(String, u16)> = OnceLock::new();

/// Records the broker's address: the first server of `NATS_URL` (a cluster is one logical broker, usually one
/// name in front of its nodes). Set once, by the runtime when it connects.
pub fn set_server_address(host: &str, port: u16) {
    let _ = SERVER.set((host.to_owned(), port));
}

/// `server.address` and `server.port` of spans; NATS_URL's default before the runtime set it.
pub fn server_address() -> (&'static str, u16) {
    SERVER
        .get()
        .map_or(("127.0.0.1", 4222), |(host, port)| (host.as_str(), *port))
}

/// Makes `span` a child of the trace context carried in `headers`, if any, and links it to that context too: the
/// messaging conventions ask a process span to link the message's creation context, which stays visible when a
/// backend re-parents or samples differently.
pub fn set_parent_from(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let Some(headers) = headers else { return };
    let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let creation = context.span().span_context().clone();
    if creation.is_valid() {
        span.add_link(creation);
    }
    // An error means the span is disabled or already started; there is nothing to parent then.
    let _ = span.set_parent(context);
}

/// Links `span` to the trace context carried in `headers`, if any, without re-parenting it: for a span that runs
/// before the message with the context is read, such as the dlq-router's route span (the advisory it processes
/// carries no context; the dead event it copies carries the publisher's).
pub fn link_from(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let Some(headers) = headers else { return };
    let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let creation = context.span().span_context().clone();
    if creation.is_valid() {
        span.add_link(creation);
    }
}

/// Ids for the log lines of one attempt when no span is exported: the trace id of the event's `traceparent` (so
/// every attempt of one event shares it, as in a trace backend), or a random one, and a span id of the attempt's
/// own. Kept in the span's extensions, where the JSON formatter finds them; nothing is recorded as a field, so
/// text logs and the per-event cost of a run without JSON logs are unchanged.
pub fn attach_log_ids(span: &tracing::Span, headers: Option<&HeaderMap>) {
    if !JSON_IDS.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
    let ids = RandomIdGenerator::default();
    // The ids' bytes as hex by table (`events::hex`), which is what their `Display` prints (zero-padded, big-endian)
    // through `core::fmt`'s padding, at several times the cost (tests/bench/ANALYSIS.md, section 40).
    let trace_id = headers
        .and_then(|headers| headers.get("traceparent"))
        .and_then(|value| trace_id_of(value.as_str()))
        .unwrap_or_else(|| events::hex::lower(&ids.new_trace_id().to_bytes()));
    let log_ids = LogIds {
        trace_id,
        span_id: events::hex::lower(&ids.new_span_id().to_bytes()),
    };
    let _ = span.with_subscriber(|(id, dispatch)| {
        if let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>()
            && let Some(span) = registry.span(id)
        {
            span.extensions_mut().insert(log_ids);
        }
    });
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if it is a valid one.
fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    let valid = trace_id.len() == 32
        && trace_id.bytes().all(|byte| byte.is_ascii_hexdigit())
        && trace_id.bytes().any(|byte| byte != b'0');
    valid.then(|| trace_id.to_ascii_lowercase())
}

#[derive(Debug, Clone)]
struct LogIds {
    trace_id: String,
    span_id: String,
}

/// A JSON event format with `trace_id` and `span_id` first on every line written inside a span that has them:
/// the OpenTelemetry span's when spans are exported, else the attempt's [`LogIds`]. The names are the
/// OpenTelemetry log data model's, which log backends (Loki, Elasticsearch, Cloud Logging) pick up to link a line
/// to its trace.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = ids_in_scope(ctx) else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}

fn ids_in_scope<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let scope = ctx.event_scope()?;
    let mut found = None;
    for span in scope {
        if let Some(ids) = span.extensions().get::<LogIds>() {
            found = Some((ids.trace_id.clone(), ids.span_id.clone()));
            break;
        }
    }
    if found.is_some() {
        return found;
    }
    // tracing-opentelemetry makes the current span's context OpenTelemetry's current one while it is entered.
    let context = opentelemetry::Context::current();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(async_nats::HeaderValue::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        move |name| {
            vars.iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        }
    }

    const ENDPOINT: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");

    /// The log ids' hex is what the SDK's ids print.
    #[test]
    fn log_ids_print_as_the_sdk_prints_them() {
        use opentelemetry::trace::{SpanId, TraceId};
        for (trace, span) in [
            (
                0x0123_4567_89ab_cdef_0011_2233_4455_6677_u128,
                0x0102_0304_0a0b_0c0d_u64,
            ),
            (1, 1),
            (u128::MAX, u64::MAX),
        ] {
            let (trace, span) = (TraceId::from(trace), SpanId::from(span));
            assert_eq!(events::hex::lower(&trace.to_bytes()), trace.to_string());
            assert_eq!(events::hex::lower(&span.to_bytes()), span.to_string());
        }
    }

    #[test]
    fn by_default_prometheus_is_on_and_otlp_follows_the_endpoint() {
        let none = exporters(with(&[]), true).unwrap();
        assert_eq!(
            none,
            Exporters {
                traces_otlp: false,
                metrics_otlp: false,
                prometheus: true
            }
        );
        let all = exporters(with(&[ENDPOINT]), true).unwrap();
        assert!(all.traces_otlp && all.metrics_otlp && all.prometheus);
        // A command line has no port to serve /metrics on.
        assert!(!exporters(with(&[ENDPOINT]), false).unwrap().prometheus);
        // A signal's own endpoint turns only that signal on; an empty value is unset.
        let traces = exporters(
            with(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://c:4318/v1/traces",
                ),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            ]),
            true,
        )
        .unwrap();
        assert!(traces.traces_otlp && !traces.metrics_otlp);
    }

    #[test]
    fn none_turns_a_signal_off_and_sdk_disabled_turns_everything_off() {
        let no_traces =
            exporters(with(&[ENDPOINT, ("OTEL_TRACES_EXPORTER", "none")]), true).unwrap();
        assert!(!no_traces.traces_otlp && no_traces.metrics_otlp && no_traces.prometheus);
        let no_metrics =
            exporters(with(&[ENDPOINT, ("OTEL_METRICS_EXPORTER", "none")]), true).unwrap();
        assert!(no_metrics.traces_otlp && !no_metrics.metrics_otlp && !no_metrics.prometheus);
        let prometheus_only = exporters(
            with(&[ENDPOINT, ("OTEL_METRICS_EXPORTER", " Prometheus ")]),
            true,
        )
        .unwrap();
        assert!(!prometheus_only.metrics_otlp && prometheus_only.prometheus);
        let disabled = exporters(with(&[ENDPOINT, ("OTEL_SDK_DISABLED", "TRUE")]), true).unwrap();
        assert_eq!(disabled, Exporters::default());
    }

    #[test]
    fn grpc_and_unknown_exporters_are_refused_naming_the_variable() {
        let grpc = exporters(
            with(&[ENDPOINT, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
            true,
        )
        .unwrap_err();
        assert!(
            grpc.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL=grpc:"),
            "{grpc}"
        );
        assert!(grpc.contains("http/protobuf"), "{grpc}");
        let per_signal = exporters(
            with(&[ENDPOINT, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")]),
            true,
        )
        .unwrap_err();
        assert!(
            per_signal.starts_with("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc"),
            "{per_signal}"
        );
        let json = exporters(
            with(&[ENDPOINT, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
            true,
        )
        .unwrap_err();
        assert!(
            json.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL=http/json"),
            "{json}"
        );
        // Nothing goes over OTLP without an endpoint, so the protocol does not matter then.
        assert!(exporters(with(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]), true).is_ok());
        assert!(
            exporters(
                with(&[ENDPOINT, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]),
                true
            )
            .is_ok()
        );
        let zipkin = exporters(with(&[("OTEL_TRACES_EXPORTER", "zipkin")]), true).unwrap_err();
        assert!(
            zipkin.starts_with("OTEL_TRACES_EXPORTER=zipkin: `zipkin` is not supported"),
            "{zipkin}"
        );
        let mixed = exporters(with(&[("OTEL_METRICS_EXPORTER", "none,otlp")]), true).unwrap_err();
        assert!(mixed.contains("cannot be combined"), "{mixed}");
    }

    #[test]
    fn the_trace_id_comes_from_a_valid_traceparent_only() {
        assert_eq!(
            trace_id_of("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_of("garbage"), None);
        assert_eq!(trace_id_of("00-abc-00f067aa0ba902b7-01"), None);
    }
}
