//! Container probes: `/livez` answers while the process serves; `/readyz` only while it is connected to NATS
//! and every consumer it serves is bound. `/metrics` is the Prometheus scrape of the process's metrics
//! ([`crate::telemetry::metrics_text`]). A deliberately tiny HTTP/1.1 responder: probes and scrapers send one GET
//! and read one response.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Shared readiness flags.
#[derive(Debug, Clone, Default)]
pub struct Health {
    consumers: Arc<std::sync::Mutex<Vec<Bound>>>,
    client: Arc<std::sync::OnceLock<async_nats::Client>>,
}

/// Whether one consumer is bound; readiness needs every registered one.
#[derive(Debug, Clone, Default)]
pub struct Bound(Arc<AtomicBool>);

impl Bound {
    /// Marks the consumer bound (or not).
    pub fn set(&self, bound: bool) {
        self.0.store(bound, Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Health {
    /// Registers a consumer, not bound yet: the process is not ready until it is.
    pub fn consumer(&self) -> Bound {
        let bound = Bound::default();
        self.consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(bound.clone());
        bound
    }

    /// Lets readiness follow the connection state.
    pub fn watch_client(&self, client: async_nats::Client) {
        let _ = self.client.set(client);
    }

    /// Connected, and every registered consumer bound (at least one).
    pub fn ready(&self) -> bool {
        let connected = self.client.get().is_some_and(|client| {
            client.connection_state() == async_nats::connection::State::Connected
        });
        let consumers = self
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        connected && !consumers.is_empty() && consumers.iter().all(Bound::get)
    }

    /// Serves the probes on `addr` until `stop` is cancelled.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn serve(
        self,
        addr: &str,
        stop: CancellationToken,
    ) -> anyhow::Result<std::net::SocketAddr> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding JOB_HEALTH_ADDR {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, "health endpoint listening");
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut socket, _)) = accepted else {
                    continue;
                };
                let health = self.clone();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    let read = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        socket.read(&mut buffer),
                    )
                    .await;
                    let Ok(Ok(read)) = read else { return };
                    let request = String::from_utf8_lossy(&buffer[..read]);
                    let path = request.split_whitespace().nth(1).unwrap_or("/");
                    let path = path.split('?').next().unwrap_or(path);
                    let text = "text/plain";
                    let (status, content_type, body) = match path {
                        "/livez" | "/healthz" => ("200 OK", text, "alive\n".to_owned()),
                        "/readyz" if health.ready() => ("200 OK", text, "ready\n".to_owned()),
                        "/readyz" => ("503 Service Unavailable", text, "not ready\n".to_owned()),
                        "/metrics" => match crate::telemetry::metrics_text() {
                            Some(metrics) => (
                                "200 OK",
                                "text/plain; version=0.0.4; charset=utf-8",
                                metrics,
                            ),
                            None => (
                                "404 Not Found",
                                text,
                                "metrics are off (OTEL_METRICS_EXPORTER or OTEL_SDK_DISABLED)\n"
                                    .to_owned(),
                            ),
                        },
                        _ => ("404 Not Found", text, "not found\n".to_owned()),
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        Ok(local)
    }
}
