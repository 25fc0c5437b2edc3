//! Connecting to NATS: credentials, TLS, and reconnecting forever with a capped backoff.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::{ConnectOptions, Event, ServerAddr};

use crate::config::NatsConfig;

/// Connects with the options every jetfn function shares: [`connect_options`], plus retrying forever.
///
/// The first connection is retried too, so a function started before its server waits instead of crashing;
/// every state change is logged.
///
/// # Errors
/// As [`connect_options`].
pub async fn connect(config: &NatsConfig, name: &str) -> anyhow::Result<async_nats::Client> {
    let forever = |options: ConnectOptions| {
        options
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(|event| async move { log_event(&event) })
    };
    let url = crate::nats_url::mask(&config.url);
    tracing::info!(url = %url, name, "connecting to NATS");
    // One plain attempt first: its error says why (a certificate the CA did not sign, an authorization
    // violation), where the retrying connection's events only say "IO error".
    let (options, servers) = connect_options(config, name).await?;
    let tls = tls_wanted(config, &servers);
    match forever(options).connect(servers).await {
        Ok(client) => return Ok(client),
        Err(err) => {
            let error = error_chain(&err);
            tracing::error!(
                url = %url,
                error = %error,
                hint = hint(config, tls, &error).unwrap_or_default(),
                "cannot connect to NATS yet; retrying until it works"
            );
        }
    }
    let (options, servers) = connect_options(config, name).await?;
    forever(options)
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

/// `err` and its causes, each once: async-nats puts the TLS or server reason in the source.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut cause = Some(err);
    while let Some(current) = cause {
        let part = current.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        cause = current.source();
    }
    text
}

/// Connects once, failing fast: for one-shot commands (the `jetfn` CLI), where an error is better than a wait.
///
/// # Errors
/// As [`connect_options`], or the server cannot be reached, refuses the credentials or fails TLS verification.
pub async fn connect_once(config: &NatsConfig, name: &str) -> anyhow::Result<async_nats::Client> {
    let (options, servers) = connect_options(config, name).await?;
    let url = crate::nats_url::mask(&config.url);
    let tls = tls_wanted(config, &servers);
    options.connect(servers).await.map_err(|err| {
        let text = error_chain(&err);
        let hint = hint(config, tls, &text)
            .map(|hint| format!(" ({hint})"))
            .unwrap_or_default();
        anyhow::anyhow!("connecting to NATS at {url}: {text}{hint}")
    })
}

/// What to check, for the failures whose library wording does not say which setting is at fault; `tls` is
/// [`tls_wanted`]'s answer for this connection.
fn hint(config: &NatsConfig, tls: bool, error: &str) -> Option<&'static str> {
    if error.contains("UnknownIssuer") {
        Some(
            "the server's certificate is not signed by the CA of NATS_TLS_CA_FILE, or by a system root without it",
        )
    } else if error.contains("authorization violation") {
        Some(
            "the server refused the credentials: NATS_USER and NATS_PASSWORD, NATS_TOKEN, NATS_CREDS_FILE, \
             NATS_NKEY_FILE or the user info in NATS_URL",
        )
    } else if error.contains("CertificateRequired") || error.contains("certificate required") {
        Some("the server wants a client certificate: set NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE")
    } else if tls && config.tls_cert_file.is_none() && closed_by_peer(error) {
        // Under TLS 1.3 the client finishes its side of the handshake before the server checks the (missing)
        // certificate; the server's alert can then be lost to a connection reset, so the error says only that the
        // connection was closed.
        Some(
            "the server closed the TLS connection; if it verifies clients, set NATS_TLS_CERT_FILE and \
             NATS_TLS_KEY_FILE",
        )
    } else {
        None
    }
}

/// Whether the connection goes over TLS: asked for by `NATS_TLS_REQUIRED`, implied by a CA to verify the server
/// against, or by a `tls://` server in `NATS_URL`.
fn tls_wanted(config: &NatsConfig, servers: &[ServerAddr]) -> bool {
    config.tls_required
        || config.tls_ca_file.is_some()
        || servers.iter().any(ServerAddr::tls_required)
}

/// The wordings of a connection the peer closed or reset (std's I/O errors, rustls' missing close_notify).
fn closed_by_peer(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    [
        "connection reset",
        "broken pipe",
        "unexpected eof",
        "unexpectedeof",
        "close_notify",
        "connection closed",
        "connection aborted",
    ]
    .iter()
    .any(|wording| error.contains(wording))
}

/// The one place that turns [`NatsConfig`] into async-nats options, for the functions and the CLI alike: the
/// servers of `NATS_URL`, user and password (from the variables or the URL), token, creds or nkey file, TLS with a
/// CA to verify the server, and a client certificate for mutual TLS.
///
/// User info in `NATS_URL` (`nats://user:pass@host`, or `nats://token@host`) is used when no variable sets
/// credentials: async-nats 0.51 parses it but does not send it.
///
/// # Errors
/// A `NATS_URL` entry that does not parse, or a creds, nkey, CA, certificate or key file that cannot be read,
/// named by its variable.
pub async fn connect_options(
    config: &NatsConfig,
    name: &str,
) -> anyhow::Result<(ConnectOptions, Vec<ServerAddr>)> {
    let servers = crate::nats_url::parse(&config.url)?;
    let mut options = ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5));
    let readable = |var: &str, path: &Path| -> anyhow::Result<()> {
        std::fs::File::open(path)
            .map(drop)
            .with_context(|| format!("{var}: cannot read {}", path.display()))
    };
    let mut credentials = false;
    if let Some(path) = &config.creds_file {
        readable("NATS_CREDS_FILE", path)?;
        options = options
            .credentials_file(path)
            .await
            .with_context(|| format!("NATS_CREDS_FILE: {} is not a creds file", path.display()))?;
        credentials = true;
    }
    if let Some(path) = &config.nkey_file {
        readable("NATS_NKEY_FILE", path)?;
        let seed = std::fs::read_to_string(path)
            .with_context(|| format!("NATS_NKEY_FILE: cannot read {}", path.display()))?;
        let seed = seed
            .lines()
            .map(str::trim)
            .find(|line| line.starts_with("SU"))
            .with_context(|| {
                format!(
                    "NATS_NKEY_FILE: {} holds no user nkey seed (a line starting with SU)",
                    path.display()
                )
            })?;
        options = options.nkey(seed.to_owned());
        credentials = true;
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
        credentials = true;
    }
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_owned());
        credentials = true;
    }
    if !credentials && let Some(server) = servers.iter().find(|server| server.has_user_pass()) {
        let user = percent_decode(server.username().unwrap_or_default());
        options = match server.password() {
            Some(password) => options.user_and_password(user, percent_decode(password)),
            None => options.token(user),
        };
    }
    if tls_wanted(config, &servers) {
        options = options.require_tls(true);
    }
    if let Some(ca) = &config.tls_ca_file {
        readable("NATS_TLS_CA_FILE", ca)?;
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        readable("NATS_TLS_CERT_FILE", cert)?;
        readable("NATS_TLS_KEY_FILE", key)?;
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if let Some(prefix) = &config.inbox_prefix {
        options = options.custom_inbox_prefix(prefix.clone());
    }
    Ok((options, servers))
}

/// `%40` back to `@`: a URL's user info is percent-encoded, the server compares the clear text.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| {
            bytes
                .get(at)
                .and_then(|b| char::from(*b).to_digit(16))
                .and_then(|d| u8::try_from(d).ok())
        };
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push(high * 16 + low);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

    #[test]
    fn a_tls_connection_closed_without_a_client_certificate_points_at_the_certificate() {
        let tls_of =
            |config: &NatsConfig| tls_wanted(config, &crate::nats_url::parse(&config.url).unwrap());
        let mut config = NatsConfig::local("tls://127.0.0.1:4222");
        let tls = tls_of(&config);
        let reset = "IO error: Connection reset by peer (os error 104)";
        assert!(
            hint(&config, tls, reset)
                .unwrap()
                .contains("set NATS_TLS_CERT_FILE")
        );
        assert!(
            hint(&config, tls, "received fatal alert: CertificateRequired")
                .unwrap()
                .starts_with("the server wants a client certificate")
        );
        config.tls_cert_file = Some("client.pem".into());
        assert_eq!(hint(&config, tls, reset), None);
        let plain = NatsConfig::local("nats://127.0.0.1:4222");
        assert_eq!(hint(&plain, tls_of(&plain), reset), None);
    }

    #[test]
    fn url_user_info_is_percent_decoded() {
        assert_eq!(percent_decode("p%40ss%2Fw"), "p@ss/w");
        assert_eq!(percent_decode("plain%"), "plain%");
    }
}
