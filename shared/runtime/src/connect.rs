//! Connecting to NATS: credentials, TLS, and reconnecting forever with a capped backoff.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::{ConnectOptions, Event};

use crate::config::NatsConfig;

/// Connects with the options every jetfn process shares.
///
/// The first connection is retried too, so a function started before its server waits instead of crashing;
/// every state change is logged.
///
/// # Errors
/// A credentials or TLS file that cannot be read, or a `NATS_URL` entry that does not parse.
pub async fn connect(config: &NatsConfig, name: &str) -> anyhow::Result<async_nats::Client> {
    let servers = crate::nats_url::parse(&config.url)?;
    let mut options = ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move { log_event(&event) });
    if let Some(path) = &config.creds_file {
        options = options
            .credentials_file(path)
            .await
            .with_context(|| format!("reading NATS_CREDS_FILE {}", path.display()))?;
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_owned());
    }
    if config.tls_required {
        options = options.require_tls(true);
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if let Some(prefix) = &config.inbox_prefix {
        options = options.custom_inbox_prefix(prefix.clone());
    }
    let url = crate::nats_url::mask(&config.url);
    tracing::info!(url = %url, name, "connecting to NATS");
    options
        .connect(servers)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

/// 0 ms, then doubling from 100 ms up to 5 s: fast after a blip, gentle during an outage.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts.min(16)).unwrap_or(16);
    Duration::from_millis(100u64.saturating_mul(1 << exp.min(6))).min(Duration::from_secs(5))
}

fn log_event(event: &Event) {
    match event {
        Event::Connected => tracing::info!("nats connected"),
        Event::Disconnected => tracing::warn!("nats disconnected; reconnecting"),
        Event::LameDuckMode => tracing::warn!("nats server entering lame duck mode"),
        Event::SlowConsumer(sid) => tracing::warn!(sid, "nats slow consumer: messages dropped"),
        Event::ServerError(err) => tracing::error!(error = %err, "nats server error"),
        Event::ClientError(err) => tracing::error!(error = %err, "nats client error"),
        other => tracing::info!(event = %other, "nats event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_is_capped() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert!(reconnect_delay(2) >= Duration::from_millis(100));
        assert_eq!(reconnect_delay(1000), Duration::from_secs(5));
    }
}
