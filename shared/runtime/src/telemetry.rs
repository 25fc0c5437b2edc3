//! Logs to stdout through `tracing`, and spans to an OTLP backend when the standard `OTEL_EXPORTER_OTLP_*`
//! variables say where one is. Trace context crosses NATS in W3C `traceparent`/`tracestate` headers.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

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
/// compact text otherwise; plus the OTLP span exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (`OTEL_SDK_DISABLED=true` turns it off).
///
/// # Errors
/// The exporter cannot be built from the `OTEL_*` variables, or a subscriber is already installed.
pub fn init(service_name: &str) -> anyhow::Result<Telemetry> {
    install(service_name, "info", false)
}

/// As [`init`] for a command-line tool: logs go to stderr (stdout is the command's output) and only warnings
/// show unless `RUST_LOG` says otherwise.
///
/// # Errors
/// As [`init`].
pub fn init_cli(service_name: &str) -> anyhow::Result<Telemetry> {
    install(service_name, "warn", true)
}

fn install(service_name: &str, default_filter: &str, stderr: bool) -> anyhow::Result<Telemetry> {
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
    let fmt_layer = match (json, stderr) {
        (true, false) => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_filter(filter())
            .boxed(),
        (true, true) => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
        (false, false) => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .compact()
            .with_target(false)
            .with_filter(filter())
            .boxed(),
        (false, true) => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .compact()
            .with_target(false)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };

    let (provider, meters) = if otlp_configured() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .context("building the OTLP span exporter from OTEL_EXPORTER_OTLP_*")?;
        let resource = || {
            let mut resource = opentelemetry_sdk::Resource::builder();
            if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
                resource = resource.with_service_name(service_name.to_owned());
            }
            resource.build()
        };
        let tracer = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource())
            .build();
        let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .build()
            .context("building the OTLP metric exporter from OTEL_EXPORTER_OTLP_*")?;
        let meters = SdkMeterProvider::builder()
            .with_periodic_exporter(metric_exporter)
            .with_resource(resource())
            .build();
        opentelemetry::global::set_meter_provider(meters.clone());
        (Some(tracer), Some(meters))
    } else {
        (None, None)
    };
    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service_name.to_owned()))
            .with_filter(EnvFilter::new("info,runtime=debug"))
    });
    tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .context("installing the tracing subscriber")?;
    if provider.is_some() {
        tracing::info!(service = service_name, "exporting spans over OTLP");
    }
    EXPORTING.store(provider.is_some(), std::sync::atomic::Ordering::Relaxed);
    publish::set_exporting(provider.is_some());
    Ok(Telemetry { provider, meters })
}

static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans leave the process; the runtime records the full OpenTelemetry attributes only then.
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

fn otlp_configured() -> bool {
    let disabled =
        std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value.eq_ignore_ascii_case("true"));
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.is_empty());
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Makes `span` a child of the trace context carried in `headers`, if any.
pub fn set_parent_from(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let Some(headers) = headers else { return };
    let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // An error means the span is disabled or already started; there is nothing to parent then.
    let _ = span.set_parent(context);
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
