//! A real OTLP/HTTP receiver (HTTP/1.1 via hyper) that decodes protobuf trace exports.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use tokio::net::TcpListener;

use crate::bg::BgRuntime;
use crate::{lock, poll_async, poll_blocking};

/// One data point of a metric as received: counters and histograms (its count) as a number.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedMetric {
    /// `service.name` of the resource.
    pub service_name: String,
    /// The instrument's name.
    pub name: String,
    /// The point's value: a sum's value, a gauge's value, a histogram's count.
    pub value: f64,
    /// The point's attributes, stringified.
    pub attributes: BTreeMap<String, String>,
    /// A histogram point's explicit bucket bounds; empty for other kinds.
    pub bounds: Vec<f64>,
}

fn flatten_metrics(
    export: opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
) -> Vec<ReceivedMetric> {
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value};
    let number = |value: Option<Value>| match value {
        Some(Value::AsDouble(value)) => value,
        #[allow(clippy::cast_precision_loss)]
        Some(Value::AsInt(value)) => value as f64,
        None => 0.0,
    };
    let mut out = Vec::new();
    for resource in export.resource_metrics {
        let service_name = resource
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(|kv| kv.value.as_ref().map(stringify).unwrap_or_default())
            .unwrap_or_default();
        for scope in resource.scope_metrics {
            for metric in scope.metrics {
                let mut push =
                    |value: f64,
                     attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
                     bounds: &[f64]| {
                        out.push(ReceivedMetric {
                            bounds: bounds.to_vec(),
                            service_name: service_name.clone(),
                            name: metric.name.clone(),
                            value,
                            attributes: attributes
                                .iter()
                                .map(|kv| {
                                    (
                                        kv.key.clone(),
                                        kv.value.as_ref().map(stringify).unwrap_or_default(),
                                    )
                                })
                                .collect(),
                        });
                    };
                match &metric.data {
                    Some(Data::Sum(sum)) => {
                        for point in &sum.data_points {
                            push(number(point.value), &point.attributes, &[]);
                        }
                    }
                    Some(Data::Gauge(gauge)) => {
                        for point in &gauge.data_points {
                            push(number(point.value), &point.attributes, &[]);
                        }
                    }
                    Some(Data::Histogram(histogram)) => {
                        for point in &histogram.data_points {
                            #[allow(clippy::cast_precision_loss)]
                            push(
                                point.count as f64,
                                &point.attributes,
                                &point.explicit_bounds,
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// One span as received, with ids as lowercase hex.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    /// Resource attribute `service.name` ("" if absent).
    pub service_name: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// "" for a root span.
    pub parent_span_id: String,
    /// `opentelemetry.proto.trace.v1.Span.SpanKind`: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// Span attributes, values stringified (arrays as `[a, b]`, bytes as hex).
    pub attributes: BTreeMap<String, String>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    pub resource_attributes: BTreeMap<String, String>,
    /// Instrumentation scope name.
    pub scope_name: String,
    /// Names of the span's events (e.g. "exception").
    pub events: Vec<String>,
    /// The span's links, as (trace id, span id) in lowercase hex.
    pub links: Vec<(String, String)>,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
}

#[derive(Default)]
struct Shared {
    spans: Mutex<Vec<ReceivedSpan>>,
    metrics: Mutex<Vec<ReceivedMetric>>,
    /// `METHOD path content-type -> status` of every request, for debugging and counting.
    requests: Mutex<Vec<String>>,
}

/// An OTLP/HTTP receiver on `127.0.0.1:<port>`: `POST /v1/traces` (protobuf) is decoded;
/// `/v1/metrics` and `/v1/logs` are answered 200 and only counted.
pub struct OtlpReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _runtime: BgRuntime,
}

impl OtlpReceiver {
    /// Starts the receiver on a free port.
    pub fn start() -> Self {
        let listener =
            StdTcpListener::bind(("127.0.0.1", 0)).expect("bind OTLP receiver on 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("set OTLP listener non-blocking");
        let addr = listener.local_addr().expect("OTLP listener address");
        let shared = Arc::<Shared>::default();
        let runtime = BgRuntime::new("otlp-test-receiver");
        runtime
            .handle()
            .spawn(accept_loop(listener, Arc::clone(&shared)));
        Self {
            addr,
            shared,
            _runtime: runtime,
        }
    }

    /// `http://127.0.0.1:<port>`: the value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// All spans received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.shared.spans).clone()
    }

    /// Every metric data point received so far (each export repeats cumulative sums).
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        lock(&self.shared.metrics).clone()
    }

    /// Every request as `"POST /v1/traces application/x-protobuf -> 200"`.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.requests).clone()
    }

    /// Waits until `done(all spans so far)` holds; returns the spans. Panics with the spans
    /// received and the request log on timeout.
    pub async fn wait_for_spans(
        &self,
        done: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        let found = poll_async(timeout, || self.check(&done)).await;
        found.unwrap_or_else(|| self.timeout_panic(timeout))
    }

    /// Blocking twin of [`OtlpReceiver::wait_for_spans`].
    pub fn wait_for_spans_blocking(
        &self,
        done: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        let found = poll_blocking(timeout, || self.check(&done));
        found.unwrap_or_else(|| self.timeout_panic(timeout))
    }

    /// Waits for the first span matching `matches` and returns it.
    pub async fn wait_for_span(
        &self,
        matches: impl Fn(&ReceivedSpan) -> bool,
        timeout: Duration,
    ) -> ReceivedSpan {
        let spans = self
            .wait_for_spans(|spans| spans.iter().any(&matches), timeout)
            .await;
        spans
            .into_iter()
            .find(|s| matches(s))
            .expect("span matched")
    }

    fn check(&self, done: &impl Fn(&[ReceivedSpan]) -> bool) -> Option<Vec<ReceivedSpan>> {
        let spans = lock(&self.shared.spans);
        done(&spans).then(|| spans.clone())
    }

    fn timeout_panic(&self, timeout: Duration) -> ! {
        let spans: Vec<String> = self
            .spans()
            .iter()
            .map(|s| {
                format!(
                    "  [{}] {} trace={} span={} parent={} kind={} status={} attrs={:?}",
                    s.service_name,
                    s.name,
                    s.trace_id,
                    s.span_id,
                    s.parent_span_id,
                    s.kind,
                    s.status_code,
                    s.attributes
                )
            })
            .collect();
        panic!(
            "OTLP receiver {}: condition not met within {timeout:?}; spans ({}):\n{}\nrequests: {:?}",
            self.addr,
            spans.len(),
            spans.join("\n"),
            self.requests()
        )
    }
}

async fn accept_loop(listener: StdTcpListener, shared: Arc<Shared>) {
    let listener = TcpListener::from_std(listener).expect("register OTLP listener with tokio");
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(request, &shared).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(request: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    let content_type = header("content-type");
    let content_encoding = header("content-encoding");
    let body = request.into_body().collect().await.map(|b| b.to_bytes());

    let (status, message) = match (method.clone(), path.as_str(), body) {
        (_, _, Err(e)) => (StatusCode::BAD_REQUEST, format!("body: {e}")),
        (Method::POST, "/v1/traces", _) if !content_encoding.is_empty() => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-encoding {content_encoding} not supported by the test receiver"),
        ),
        (Method::POST, "/v1/traces", Ok(body))
            if content_type.starts_with("application/x-protobuf") =>
        {
            match ExportTraceServiceRequest::decode(body) {
                Ok(export) => {
                    lock(&shared.spans).extend(flatten(export));
                    (StatusCode::OK, String::new())
                }
                Err(e) => (StatusCode::BAD_REQUEST, format!("protobuf: {e}")),
            }
        }
        (Method::POST, "/v1/traces", _) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-type {content_type:?} not supported (use application/x-protobuf)"),
        ),
        (Method::POST, "/v1/metrics", Ok(body))
            if content_type.starts_with("application/x-protobuf") =>
        {
            match opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest::decode(body) {
                Ok(export) => {
                    lock(&shared.metrics).extend(flatten_metrics(export));
                    (StatusCode::OK, String::new())
                }
                Err(e) => (StatusCode::BAD_REQUEST, format!("protobuf: {e}")),
            }
        }
        (Method::POST, "/v1/metrics" | "/v1/logs", _) => (StatusCode::OK, String::new()),
        (Method::POST, _, _) => (StatusCode::NOT_FOUND, "unknown path".to_owned()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "use POST".to_owned()),
    };
    lock(&shared.requests).push(format!(
        "{method} {path} {content_type} -> {}",
        status.as_u16()
    ));
    if !message.is_empty() {
        eprintln!(
            "[otlp-receiver] {method} {path}: {} {message}",
            status.as_u16()
        );
    }

    let mut response = if status == StatusCode::OK {
        // An empty Export*ServiceResponse encodes to zero bytes for every signal.
        let body = ExportTraceServiceResponse::default().encode_to_vec();
        Response::builder()
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
    } else {
        Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(message)))
    }
    .expect("build OTLP response");
    *response.status_mut() = status;
    response
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in export.resource_spans {
        let resource_attributes = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service_name = resource_attributes
            .get("service.name")
            .cloned()
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            let scope_name = scope_spans.scope.map(|s| s.name).unwrap_or_default();
            for span in scope_spans.spans {
                let status = span.status.unwrap_or_default();
                out.push(ReceivedSpan {
                    service_name: service_name.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                    status_code: status.code,
                    status_message: status.message,
                    resource_attributes: resource_attributes.clone(),
                    scope_name: scope_name.clone(),
                    events: span.events.into_iter().map(|e| e.name).collect(),
                    links: span
                        .links
                        .iter()
                        .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
                        .collect(),
                    start_time_unix_nano: span.start_time_unix_nano,
                    end_time_unix_nano: span.end_time_unix_nano,
                });
            }
        }
    }
    out
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(stringify).unwrap_or_default(),
            )
        })
        .collect()
}

fn stringify(value: &AnyValue) -> String {
    use any_value::Value;
    match &value.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(bytes)) => hex(bytes),
        Some(Value::ArrayValue(array)) => {
            let items: Vec<String> = array.values.iter().map(stringify).collect();
            format!("[{}]", items.join(", "))
        }
        Some(Value::KvlistValue(list)) => {
            let items: Vec<String> = attributes(&list.values)
                .into_iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        _ => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}
