//! The jetfn web console and the JSON API it is built on (`jetfn console`).
//!
//! A thin layer over the `ops` library, like the CLI: every read is an `ops` call, every change is an `ops` call
//! recorded in the audit trail with the signed-in person as its actor. What the console adds is only what a browser
//! needs: sign-in and sessions ([`auth`]), roles checked on every route, background jobs with progress for long
//! replays and purges, the pages (static files compiled in: no build step, nothing fetched from elsewhere), and the
//! OpenAPI document of the API.

pub mod auth;

mod api;
mod web;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;

pub use api::API;
pub use auth::{Role, Tokens};

/// The OpenAPI 3.1 document of the JSON API, served at `/api/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// How people sign in.
#[derive(Debug, Clone)]
pub enum SignIn {
    /// Tokens from a file; the console acts over its own NATS connection as `nats_user`.
    Tokens {
        /// The people and their roles.
        tokens: Tokens,
        /// The console's own connection.
        client: async_nats::Client,
        /// The NATS user of that connection (the audit entries' `user`).
        nats_user: String,
    },
    /// Each person's own NATS credentials; a connection per session, opened with `nats` and those credentials.
    Nats {
        /// The server's address and TLS settings (its credentials, if any, are not used).
        nats: Box<runtime::config::NatsConfig>,
    },
}

/// What the console needs to serve.
#[derive(Debug, Clone)]
pub struct Config {
    /// How people sign in.
    pub sign_in: SignIn,
    /// A trace link template with `{trace_id}` (`JETFN_TRACE_URL_TEMPLATE`).
    pub trace_url_template: Option<String>,
    /// The infra definitions an admin may plan and apply (`JETFN_INFRA_DIR`, as `jetfn infra`).
    pub infra_dir: std::path::PathBuf,
    /// Seals a new schedule's sensitive fields as `jetfn schedule add` and the publisher do (`JETFN_KEYRING` or
    /// `JETFN_KEYRING_FILE`): a schedule holds its event until it fires, and a token must not sit in the stream in
    /// clear because it was typed into the console. Without one they are stored as given, as the CLI does.
    /// An edited dead letter's sensitive field typed in clear is sealed with it too; without one that edit is
    /// refused when the dead letter was sealed (`ops::dlq::replay_edited`).
    pub keyring: Option<Arc<publish::sealed::Keyring>>,
}

/// How long a session lasts before signing in again.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Finished jobs kept for their page to read.
const JOBS_KEPT: usize = 100;

/// A signed-in person.
pub(crate) struct Session {
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) js: jetstream::Context,
    pub(crate) auditor: ops::audit::Auditor,
    pub(crate) started: Instant,
    /// The session's own connection (NATS sign-in), closed when the session ends.
    pub(crate) client: Option<async_nats::Client>,
}

/// The console's shared state.
pub(crate) struct State {
    pub(crate) config: Config,
    pub(crate) sessions: Mutex<HashMap<String, Arc<Session>>>,
    pub(crate) jobs: Mutex<Vec<Arc<Mutex<api::Job>>>>,
}

/// The tool name written in audit entries.
pub(crate) const TOOL: &str = concat!("jetfn-console ", env!("CARGO_PKG_VERSION"));

impl State {
    pub(crate) fn session(&self, id: &str) -> Option<Arc<Session>> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, session| session.started.elapsed() < SESSION_TTL);
        sessions.get(id).cloned()
    }
}

/// The console's router: the pages, and the API under `/api`.
pub fn router(config: Config) -> axum::Router {
    let state = Arc::new(State {
        config,
        sessions: Mutex::new(HashMap::new()),
        jobs: Mutex::new(Vec::new()),
    });
    api::router()
        .merge(web::router())
        .with_state(state)
        .layer(axum::middleware::from_fn(api::guard))
}

/// Serves the console on `listener` until `shutdown` completes.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(config))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
