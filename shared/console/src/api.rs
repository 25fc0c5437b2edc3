//! The JSON API: one handler per route, each a call to `ops` between a role check and, for a change, an audit
//! entry. Errors are JSON (`{"error": ..., "role_needed": ...}`), never a payload or a secret.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, Request, State as Extract};
use axum::http::{HeaderValue, Method, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use ops::audit::{Action, Outcome};
use ops::dlq::{Filter, ReplayOptions, Selection};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::auth::{self, Role};
use crate::{Session, SignIn, State, TOOL};

type Shared = Arc<State>;

/// Every route of the API, method and path (axum's `{param}` syntax, as OpenAPI writes it). The router is built
/// from this table and a test checks that the OpenAPI document describes exactly these.
pub const API: &[(&str, &str)] = &[
    ("GET", "/api/session"),
    ("POST", "/api/session"),
    ("DELETE", "/api/session"),
    ("GET", "/api/overview"),
    ("POST", "/api/functions/{function}/pause"),
    ("POST", "/api/functions/{function}/resume"),
    ("GET", "/api/dlq"),
    ("GET", "/api/dlq/{seq}"),
    ("GET", "/api/dlq/{seq}/event"),
    ("POST", "/api/dlq/{seq}/replay-edited"),
    ("POST", "/api/dlq/replay"),
    ("POST", "/api/dlq/purge"),
    ("GET", "/api/jobs/{id}"),
    ("GET", "/api/events/{id}"),
    ("GET", "/api/audit"),
    ("GET", "/api/schedules"),
    ("POST", "/api/schedules"),
    ("DELETE", "/api/schedules/{name}"),
    ("GET", "/api/infra/plan"),
    ("POST", "/api/infra/apply"),
    ("GET", "/api/openapi.json"),
    ("GET", "/api/asyncapi.json"),
];

fn route(method: &str, path: &str) -> MethodRouter<Shared> {
    match (method, path) {
        ("GET", "/api/session") => get(session_get),
        ("POST", "/api/session") => post(sign_in),
        ("DELETE", "/api/session") => delete(sign_out),
        ("GET", "/api/overview") => get(overview),
        ("POST", "/api/functions/{function}/pause") => post(pause),
        ("POST", "/api/functions/{function}/resume") => post(resume),
        ("GET", "/api/dlq") => get(dlq_list),
        ("GET", "/api/dlq/{seq}") => get(dlq_show),
        ("GET", "/api/dlq/{seq}/event") => get(dlq_event),
        ("POST", "/api/dlq/{seq}/replay-edited") => post(dlq_replay_edited),
        ("POST", "/api/dlq/replay") => post(dlq_replay),
        ("POST", "/api/dlq/purge") => post(dlq_purge),
        ("GET", "/api/jobs/{id}") => get(job),
        ("GET", "/api/events/{id}") => get(event),
        ("GET", "/api/audit") => get(audit),
        ("GET", "/api/schedules") => get(schedules),
        ("POST", "/api/schedules") => post(schedule_add),
        ("DELETE", "/api/schedules/{name}") => delete(schedule_cancel),
        ("GET", "/api/infra/plan") => get(infra_plan),
        ("POST", "/api/infra/apply") => post(infra_apply),
        ("GET", "/api/openapi.json") => get(|| async { json_text(crate::OPENAPI_JSON) }),
        ("GET", "/api/asyncapi.json") => get(|| async { json_text(events::ASYNCAPI_JSON) }),
        (method, path) => unreachable!("API lists {method} {path} without a handler"),
    }
}

pub(crate) fn router() -> axum::Router<Shared> {
    let mut paths: BTreeMap<&str, MethodRouter<Shared>> = BTreeMap::new();
    for (method, path) in API {
        let entry = paths.remove(path).unwrap_or_default();
        paths.insert(path, entry.merge(route(method, path)));
    }
    let mut router = axum::Router::new();
    for (path, methods) in paths {
        router = router.route(path, methods);
    }
    router.route(
        "/api/{*rest}",
        axum::routing::any(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such API route (see /api/openapi.json)",
            )
        }),
    )
}

fn json_text(text: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// Refuses a change that is not a JSON request (a form posted from another site cannot set that content type
/// without a CORS preflight the console never answers), and marks every answer not to be cached or sniffed.
pub(crate) async fn guard(request: Request, next: Next) -> Response {
    let changes = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if changes && request.uri().path().starts_with("/api/") {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/json"));
        if !json {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a change must be a JSON request (Content-Type: application/json)",
            )
            .into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    response
}

/// An error answered as JSON.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    error: String,
    role_needed: Option<Role>,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            role_needed: None,
        }
    }

    fn bad(err: &anyhow::Error) -> Self {
        Self::new(StatusCode::BAD_REQUEST, format!("{err:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.error });
        if let Some(role) = self.role_needed {
            body["role_needed"] = json!(role);
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        Self::bad(&err)
    }
}

type Answer = Result<Response, ApiError>;

fn ok(value: impl Serialize) -> Answer {
    Ok(Json(value).into_response())
}

/// A JSON body, its errors answered as JSON naming what is wrong.
fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload
        .map(|Json(value)| value)
        .map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text()))
}

/// The signed-in person making a request.
pub(crate) struct Caller(Arc<Session>);

const COOKIE: &str = "jetfn_session";

fn session_id(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            pair.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_owned)
        })
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        session_id(parts)
            .and_then(|id| state.session(&id))
            .map(Caller)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "sign in first (POST /api/session)",
                )
            })
    }
}

impl Caller {
    /// Refuses unless the person's role is at least `role`.
    fn needs(&self, role: Role, what: &str) -> Result<(), ApiError> {
        if self.0.role >= role {
            Ok(())
        } else {
            Err(ApiError {
                status: StatusCode::FORBIDDEN,
                error: format!(
                    "{what} needs the {role} role; {} is {}",
                    self.0.name, self.0.role
                ),
                role_needed: Some(role),
            })
        }
    }

    /// Records a change; a change made but not recorded is logged (without its detail) and still answered, as the
    /// CLI does: the answer says whether the change was made.
    async fn record(&self, action: Action, target: &str, result: Outcome, detail: &str) {
        if let Err(err) = self.0.auditor.record(action, target, result, detail).await {
            tracing::warn!(action = action.as_str(), error = %format!("{err:#}"), "a console change was not recorded in the audit trail");
        }
    }
}

#[derive(Serialize)]
struct Me<'a> {
    name: &'a str,
    role: Role,
    sign_in: &'static str,
}

fn mode(state: &State) -> &'static str {
    match state.config.sign_in {
        SignIn::Tokens { .. } => "tokens",
        SignIn::Nats { .. } => "nats",
    }
}

/// Also answers, signed in or not, how this console signs in, so the page shows the right form.
async fn session_get(Extract(state): Extract<Shared>, caller: Result<Caller, ApiError>) -> Answer {
    let caller = match caller {
        Ok(caller) => caller,
        Err(refused) => {
            return Ok((
                StatusCode::UNAUTHORIZED,
                Json(json!({ "error": refused.error, "sign_in": mode(&state) })),
            )
                .into_response());
        }
    };
    ok(Me {
        name: &caller.0.name,
        role: caller.0.role,
        sign_in: mode(&state),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInBody {
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
    creds: Option<String>,
}

async fn sign_in(
    Extract(state): Extract<Shared>,
    payload: Result<Json<SignInBody>, JsonRejection>,
) -> Answer {
    let request = body(payload)?;
    let refused = |why: &str| ApiError::new(StatusCode::UNAUTHORIZED, why);
    let session = match &state.config.sign_in {
        SignIn::Tokens {
            tokens,
            client,
            nats_user,
        } => {
            let token = request.token.as_deref().ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "token: missing (this console signs in with tokens from its tokens file)",
                )
            })?;
            let Some((name, role)) = tokens.check(token) else {
                tracing::warn!("console sign-in refused: unknown token");
                return Err(refused("unknown token"));
            };
            let js = async_nats::jetstream::new(client.clone());
            Session {
                auditor: ops::audit::Auditor::new(js.clone(), nats_user, Some(&name), TOOL),
                name,
                role,
                js,
                started: std::time::Instant::now(),
                client: None,
            }
        }
        SignIn::Nats { nats } => {
            let (name, client) = nats_session(nats, &request).await?;
            let js = async_nats::jetstream::new(client.clone());
            Session {
                auditor: ops::audit::Auditor::new(js.clone(), &name, None, TOOL),
                role: auth::role_of_nats_user(&name),
                name,
                js,
                started: std::time::Instant::now(),
                client: Some(client),
            }
        }
    };
    // A name may be an address: logged masked.
    tracing::info!(user = %events::pii::mask_email(&session.name), role = %session.role, "console sign-in");
    let id = auth::random_hex(32)?;
    let me = json!({ "name": session.name, "role": session.role, "sign_in": mode(&state) });
    state
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), Arc::new(session));
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        crate::SESSION_TTL.as_secs()
    );
    Ok(([(header::SET_COOKIE, cookie)], Json(me)).into_response())
}

/// Opens the session's own NATS connection with the person's credentials.
async fn nats_session(
    base: &runtime::config::NatsConfig,
    request: &SignInBody,
) -> Result<(String, async_nats::Client), ApiError> {
    let mut config = base.clone();
    config.user = None;
    config.password = None;
    config.token = None;
    config.creds_file = None;
    config.nkey_file = None;
    config.inbox_prefix = None;
    let (options, servers) = runtime::connect_options(&config, "jetfn-console")
        .await
        .map_err(|err| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")))?;
    let (name, options) = match (&request.user, &request.password, &request.creds) {
        (Some(user), Some(password), None) if !user.is_empty() => (
            user.clone(),
            options.user_and_password(user.clone(), password.clone()),
        ),
        (None, None, Some(creds)) => {
            let name = auth::creds_user(creds).map_err(|err| ApiError::bad(&err))?;
            let options = options
                .credentials(creds)
                .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, format!("creds: {err}")))?;
            (name, options)
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give user and password, or creds (a creds file's content): this console signs in with NATS \
                 credentials",
            ));
        }
    };
    // The generated users may subscribe only under their own inbox prefix.
    let options = options.custom_inbox_prefix(format!("_INBOX_{}", ops::audit::token(&name)));
    match options.connect(servers).await {
        Ok(client) => Ok((name, client)),
        Err(err) => {
            let text = err.to_string();
            tracing::warn!("console sign-in refused by NATS");
            if text.contains("authorization") {
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "the NATS server refused these credentials",
                ))
            } else {
                Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("connecting to NATS: {text}"),
                ))
            }
        }
    }
}

async fn sign_out(Extract(state): Extract<Shared>, caller: Caller) -> Answer {
    let removed: Vec<Arc<Session>> = {
        let mut sessions = state.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let ids: Vec<String> = sessions
            .iter()
            .filter(|(_, session)| Arc::ptr_eq(session, &caller.0))
            .map(|(id, _)| id.clone())
            .collect();
        ids.iter().filter_map(|id| sessions.remove(id)).collect()
    };
    for session in removed {
        if let Some(client) = &session.client {
            client.drain().await.ok();
        }
    }
    Ok((
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
        )],
        Json(json!({ "signed_out": true })),
    )
        .into_response())
}

async fn overview(caller: Caller) -> Answer {
    let js = &caller.0.js;
    let status = ops::status::read(js, false).await?;
    let (dead_letters, dead_letters_unknown) = match ops::dlq::counts(js).await {
        Ok(counts) => (counts, None),
        Err(err) => (BTreeMap::new(), Some(format!("{err:#}"))),
    };
    // A user without read access to the heartbeats (the generated viewer) still gets the rest.
    let (replicas, replicas_unknown) = match ops::replicas::list(js).await {
        Ok(replicas) => (replicas, None),
        Err(err) => (Vec::new(), Some(format!("{err:#}"))),
    };
    ok(json!({
        "status": status,
        "dead_letters": dead_letters,
        "dead_letters_unknown": dead_letters_unknown,
        "replicas": replicas,
        "replicas_unknown": replicas_unknown,
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    /// RFC 3339; absent: until resumed.
    until: Option<String>,
}

fn parse_time(field: &str, value: &str) -> Result<OffsetDateTime, ApiError> {
    OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).map_err(|err| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{field}: {value:?} is not an RFC 3339 time ({err})"),
        )
    })
}

async fn pause(
    caller: Caller,
    Path(function): Path<String>,
    payload: Result<Json<PauseBody>, JsonRejection>,
) -> Answer {
    caller.needs(Role::Operator, "pausing a function")?;
    let request = body(payload)?;
    let until = request
        .until
        .as_deref()
        .filter(|v| !v.is_empty())
        .map(|v| parse_time("until", v))
        .transpose()?;
    let when = until.map_or_else(
        || "until resumed".to_owned(),
        |at| format!("until {}", ops::rfc3339(at)),
    );
    let result = ops::pause::pause(&caller.0.js, &function, until).await;
    finish_pause(&caller, Action::Pause, &function, &when, result).await
}

async fn resume(
    caller: Caller,
    Path(function): Path<String>,
    payload: Result<Json<Value>, JsonRejection>,
) -> Answer {
    caller.needs(Role::Operator, "resuming a function")?;
    body(payload)?;
    let result = ops::pause::resume(&caller.0.js, &function).await;
    finish_pause(&caller, Action::Resume, &function, "", result).await
}

async fn finish_pause(
    caller: &Caller,
    action: Action,
    function: &str,
    detail: &str,
    result: anyhow::Result<Vec<ops::pause::PauseState>>,
) -> Answer {
    match result {
        Ok(states) => {
            let consumers: Vec<String> = states
                .iter()
                .map(|s| format!("{}/{}", s.consumer.stream, s.consumer.consumer))
                .collect();
            let sep = if detail.is_empty() { "" } else { "; " };
            caller
                .record(
                    action,
                    function,
                    Outcome::Ok,
                    &format!("{detail}{sep}{}", consumers.join(", ")),
                )
                .await;
            ok(states)
        }
        Err(err) => {
            caller
                .record(action, function, Outcome::Error, &format!("{err:#}"))
                .await;
            Err(ApiError::bad(&err))
        }
    }
}

/// A dead-letter filter as the API takes it (query string or JSON): every field optional.
#[derive(Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FilterBody {
    function: Option<String>,
    kind: Option<String>,
    reason: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

impl FilterBody {
    fn filter(&self) -> Result<Filter, ApiError> {
        let text = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        let time = |field: &str, value: &Option<String>| {
            text(value).map(|v| parse_time(field, &v)).transpose()
        };
        Ok(Filter {
            consumer: text(&self.function),
            kind: text(&self.kind)
                .map(|kind| ops::dlq::parse_kind(&kind).map_err(|err| ApiError::bad(&err)))
                .transpose()?,
            reason: text(&self.reason),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
        })
    }

    fn target(&self) -> String {
        let parts: Vec<String> = [
            ("function", &self.function),
            ("kind", &self.kind),
            ("reason", &self.reason),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .into_iter()
        .filter_map(|(name, value)| {
            value
                .as_ref()
                .filter(|v| !v.is_empty())
                .map(|v| format!("{name}={v}"))
        })
        .collect();
        if parts.is_empty() {
            "dlq (all)".to_owned()
        } else {
            format!("dlq ({})", parts.join(" "))
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    function: Option<String>,
    kind: Option<String>,
    reason: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

async fn dlq_list(caller: Caller, Query(query): Query<ListQuery>) -> Answer {
    let filter = FilterBody {
        function: query.function,
        kind: query.kind,
        reason: query.reason,
        since: query.since,
        until: query.until,
    }
    .filter()?;
    let dlq = ops::dlq::stream(&caller.0.js).await?;
    let (records, unreadable) = ops::dlq::list(&dlq, &filter, query.limit.unwrap_or(500)).await?;
    let records: Vec<ops::dlq::Summary> = records
        .iter()
        .map(|(seq, letter)| ops::dlq::Summary::of(*seq, letter))
        .collect();
    let unreadable: Vec<Value> = unreadable
        .into_iter()
        .map(|(seq, error)| json!({ "dlq_sequence": seq, "error": error }))
        .collect();
    ok(json!({ "records": records, "unreadable": unreadable }))
}

fn trace_url(state: &State, trace_id: Option<&str>) -> Option<String> {
    match (&state.config.trace_url_template, trace_id) {
        (Some(template), Some(trace)) => Some(template.replace("{trace_id}", trace)),
        _ => None,
    }
}

async fn dlq_show(Extract(state): Extract<Shared>, caller: Caller, Path(seq): Path<u64>) -> Answer {
    let dlq = ops::dlq::stream(&caller.0.js).await?;
    let letter = ops::dlq::get(&dlq, seq).await?;
    let summary = ops::dlq::Summary::of(seq, &letter);
    let headers: Vec<Value> = letter
        .headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |value| json!({ "name": name.to_string(), "value": value.to_string() }))
        })
        .collect();
    let payload = if letter.payload_lost.is_some() {
        None
    } else {
        serde_json::from_slice::<Value>(&letter.payload)
            .ok()
            .map(|mut value| {
                ops::dlq::mask(&mut value, "");
                value
            })
    };
    let event_type = serde_json::from_slice::<Value>(&letter.payload)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned));
    ok(json!({
        "trace_url": trace_url(&state, summary.trace_id.as_deref()),
        "summary": summary,
        "headers": headers,
        "payload": payload,
        "payload_bytes": letter.payload.len(),
        "event_type": event_type,
        "attempts": {
            "count": letter.attempts,
            "first_failure": ops::rfc3339(letter.first_failure),
            "last_failure": ops::rfc3339(letter.last_failure),
            "last_reason": letter.reason,
            "kept": runtime::dlq::MAX_ATTEMPTS_KEPT,
            "list": letter.failed_attempts.iter().map(|attempt| json!({
                "at": ops::rfc3339(attempt.at()),
                "delivery": attempt.delivery,
                "reason": attempt.reason,
            })).collect::<Vec<Value>>(),
        },
    }))
}

/// The stored event, unmasked: what an operator edits before replaying it.
async fn dlq_event(caller: Caller, Path(seq): Path<u64>) -> Answer {
    caller.needs(Role::Operator, "editing a dead letter")?;
    let dlq = ops::dlq::stream(&caller.0.js).await?;
    let letter = ops::dlq::get(&dlq, seq).await?;
    if let Some(why) = &letter.payload_lost {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "dlq #{seq} holds no copy of the event (payload lost: {why}); there is nothing to edit"
            ),
        ));
    }
    let event: Value = serde_json::from_slice(&letter.payload).map_err(|_| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("dlq #{seq}: the stored event is not JSON; replay it as is"),
        )
    })?;
    ok(json!({ "event": event }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditBody {
    event: Value,
    #[serde(default)]
    keep: bool,
}

async fn dlq_replay_edited(
    Extract(state): Extract<Shared>,
    caller: Caller,
    Path(seq): Path<u64>,
    payload: Result<Json<EditBody>, JsonRejection>,
) -> Answer {
    caller.needs(Role::Operator, "replaying an edited dead letter")?;
    let request = body(payload)?;
    let bytes = serde_json::to_vec(&request.event).map_err(anyhow::Error::from)?;
    let target = format!("dlq #{seq}");
    // A sensitive field typed in clear is sealed with the console's keyring; without one it is refused, naming the
    // field (a 422 as every refused edit): ops decides, so the CLI and the console agree.
    let keyring = state.config.keyring.as_deref();
    match ops::dlq::replay_edited(&caller.0.js, seq, &bytes, request.keep, keyring).await {
        Ok(step) => {
            caller
                .record(
                    Action::DlqReplay,
                    &target,
                    Outcome::Ok,
                    "replayed 1 dead event, edited",
                )
                .await;
            ok(step)
        }
        Err(err) => {
            caller
                .record(
                    Action::DlqReplay,
                    &target,
                    Outcome::Error,
                    &format!("edited: {err:#}"),
                )
                .await;
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{err:#}"),
            ))
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SelectionBody {
    /// DLQ sequences.
    #[serde(default)]
    sequences: Vec<u64>,
    /// Or every record the filter passes.
    filter: Option<FilterBody>,
    /// Or every record (with no filter).
    #[serde(default)]
    all: bool,
    #[serde(default)]
    keep: bool,
    #[serde(default)]
    dry_run: bool,
}

impl SelectionBody {
    fn selection(&self) -> Result<(Selection, String), ApiError> {
        if !self.sequences.is_empty() {
            let target = self
                .sequences
                .iter()
                .map(|seq| format!("dlq #{seq}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Ok((Selection::Sequences(self.sequences.clone()), target));
        }
        let body = self.filter.clone().unwrap_or_default();
        let filter = body.filter()?;
        if filter.is_empty() && !self.all {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "name sequences, a filter, or all: true",
            ));
        }
        Ok((Selection::Matching(filter), body.target()))
    }
}

/// A replay or purge running in the background, as its page polls it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Job {
    id: String,
    action: &'static str,
    target: String,
    by: String,
    done: usize,
    total: usize,
    finished: bool,
    report: Option<ops::dlq::Report>,
    error: Option<String>,
}

fn start_job(
    state: &State,
    caller: &Caller,
    action: Action,
    target: String,
) -> Result<Arc<Mutex<Job>>, ApiError> {
    let job = Arc::new(Mutex::new(Job {
        id: auth::random_hex(12)?,
        action: action.as_str(),
        target,
        by: caller.0.name.clone(),
        done: 0,
        total: 0,
        finished: false,
        report: None,
        error: None,
    }));
    let mut jobs = state.jobs.lock().unwrap_or_else(|e| e.into_inner());
    jobs.push(job.clone());
    let excess = jobs.len().saturating_sub(crate::JOBS_KEPT);
    jobs.drain(..excess);
    Ok(job)
}

fn lock(job: &Mutex<Job>) -> std::sync::MutexGuard<'_, Job> {
    job.lock().unwrap_or_else(|e| e.into_inner())
}

async fn dlq_replay(
    Extract(state): Extract<Shared>,
    caller: Caller,
    payload: Result<Json<SelectionBody>, JsonRejection>,
) -> Answer {
    caller.needs(Role::Operator, "replaying dead letters")?;
    let request = body(payload)?;
    let (selection, target) = request.selection()?;
    let options = ReplayOptions {
        keep: request.keep,
        dry_run: request.dry_run,
    };
    let dry_run = options.dry_run;
    let work = move |js: async_nats::jetstream::Context, progress: Progress| async move {
        ops::dlq::replay(&js, &selection, options, progress).await
    };
    spawn_job(
        &state,
        &caller,
        Action::DlqReplay,
        target,
        "replayed",
        dry_run,
        work,
    )
}

async fn dlq_purge(
    Extract(state): Extract<Shared>,
    caller: Caller,
    payload: Result<Json<SelectionBody>, JsonRejection>,
) -> Answer {
    caller.needs(Role::Admin, "purging dead letters")?;
    let request = body(payload)?;
    if request.keep {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "keep: means nothing for a purge",
        ));
    }
    let (selection, target) = request.selection()?;
    let dry_run = request.dry_run;
    let work = move |js: async_nats::jetstream::Context, progress: Progress| async move {
        ops::dlq::purge(&js, &selection, dry_run, progress).await
    };
    spawn_job(
        &state,
        &caller,
        Action::DlqPurge,
        target,
        "purged",
        dry_run,
        work,
    )
}

/// A job's progress callback, as the `ops::dlq` walks take it: it moves the job's counters.
type Progress = Box<dyn FnMut(usize, usize, &ops::dlq::Step) + Send>;

/// Runs a dead-letter walk (replay, purge) in the background and answers 202 with the job as it starts; the page
/// polls the job, and `finish_job` audits and records the summary when the walk ends.
fn spawn_job<W, Fut>(
    state: &State,
    caller: &Caller,
    action: Action,
    target: String,
    verb: &'static str,
    dry_run: bool,
    work: W,
) -> Answer
where
    W: FnOnce(async_nats::jetstream::Context, Progress) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<ops::dlq::Report>> + Send + 'static,
{
    let job = start_job(state, caller, action, target.clone())?;
    let (session, running) = (caller.0.clone(), job.clone());
    tokio::spawn(async move {
        let caller = Caller(session);
        let counters = running.clone();
        let progress: Progress = Box::new(move |done, total, _| {
            let mut job = lock(&counters);
            job.done = done;
            job.total = total;
        });
        let result = work(caller.0.js.clone(), progress).await;
        finish_job(&caller, &running, action, &target, verb, dry_run, result).await;
    });
    let snapshot = lock(&job).clone();
    Ok((StatusCode::ACCEPTED, Json(snapshot)).into_response())
}

async fn finish_job(
    caller: &Caller,
    job: &Mutex<Job>,
    action: Action,
    target: &str,
    verb: &str,
    dry_run: bool,
    result: anyhow::Result<ops::dlq::Report>,
) {
    // A dry run changes nothing, so it is no change to audit (as in the CLI).
    match &result {
        Ok(report) if !dry_run => {
            caller
                .record(action, target, report.outcome(), &report.line(verb))
                .await;
        }
        Err(err) if !dry_run => {
            caller
                .record(action, target, Outcome::Error, &format!("{err:#}"))
                .await;
        }
        _ => {}
    }
    let mut job = lock(job);
    job.finished = true;
    match result {
        Ok(report) => job.report = Some(report),
        Err(err) => job.error = Some(format!("{err:#}")),
    }
}

async fn job(Extract(state): Extract<Shared>, _caller: Caller, Path(id): Path<String>) -> Answer {
    let found = state
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|job| lock(job).id == id)
        .cloned();
    match found {
        Some(job) => ok(lock(&job).clone()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no job {id}"))),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    r#type: Option<String>,
    effect: Option<String>,
}

async fn event(
    Extract(state): Extract<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<EventQuery>,
) -> Answer {
    let report = ops::event::lookup(
        &caller.0.js,
        &ops::event::Query {
            id: id.trim().to_owned(),
            event_type: query.r#type.filter(|t| !t.is_empty()),
            effects: query.effect.filter(|e| !e.is_empty()).into_iter().collect(),
            trace_url_template: state.config.trace_url_template.clone(),
        },
    )
    .await?;
    ok(report)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    action: Option<String>,
    target: Option<String>,
    who: Option<String>,
    since: Option<String>,
    until: Option<String>,
    last: Option<usize>,
}

async fn audit(caller: Caller, Query(query): Query<AuditQuery>) -> Answer {
    let text = |value: Option<String>| value.filter(|v| !v.is_empty());
    let time =
        |field: &str, value: Option<String>| text(value).map(|v| parse_time(field, &v)).transpose();
    let filter = ops::audit::Filter {
        action: text(query.action)
            .map(|a| Action::parse(&a).map_err(|err| ApiError::bad(&err)))
            .transpose()?,
        target: text(query.target),
        who: text(query.who),
        since: time("since", query.since)?,
        until: time("until", query.until)?,
        last: Some(query.last.unwrap_or(200)),
    };
    ok(ops::audit::list(&caller.0.js, &filter).await?)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SchedulesQuery {
    next: Option<usize>,
}

async fn schedules(caller: Caller, Query(query): Query<SchedulesQuery>) -> Answer {
    ok(ops::schedules::list(&caller.0.js, query.next.unwrap_or(3).min(20)).await?)
}

/// A schedule to add: the event and exactly one of `in`, `at`, `every`, `cron`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    event_type: String,
    data: Value,
    /// Once, this long from now (`30m`, `2h`).
    r#in: Option<String>,
    /// Once, at this time (RFC 3339).
    at: Option<String>,
    /// Again and again at this interval (`5m`).
    every: Option<String>,
    /// A 6-field cron (seconds first) or `@daily`.
    cron: Option<String>,
    /// The cron's IANA zone.
    time_zone: Option<String>,
    name: Option<String>,
    #[serde(default)]
    replace: bool,
}

fn span(field: &str, value: &str) -> Result<std::time::Duration, ApiError> {
    humantime::parse_duration(value.trim()).map_err(|err| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{field}: {value:?} is not a duration such as 30m or 2h ({err})"),
        )
    })
}

async fn schedule_add(
    Extract(state): Extract<Shared>,
    caller: Caller,
    payload: Result<Json<ScheduleBody>, JsonRejection>,
) -> Answer {
    caller.needs(Role::Admin, "adding a schedule")?;
    let request = body(payload)?;
    let text = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
    let when = match (
        text(&request.r#in),
        text(&request.at),
        text(&request.every),
        text(&request.cron),
    ) {
        (Some(delay), None, None, None) => ops::schedules::When::In(span("in", &delay)?),
        (None, Some(at), None, None) => ops::schedules::When::At(parse_time("at", &at)?),
        (None, None, Some(every), None) => ops::schedules::When::Every(span("every", &every)?),
        (None, None, None, Some(expr)) => ops::schedules::When::Cron {
            expr,
            time_zone: text(&request.time_zone),
        },
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "when: give exactly one of in, at, every, cron",
            ));
        }
    };
    let new = ops::schedules::NewSchedule {
        event_type: request.event_type,
        data: request.data,
        when,
        name: text(&request.name),
        replace: request.replace,
        source: "/jetfn-console".to_owned(),
    };
    // ops audits the addition (and a refusal) itself.
    let keyring = state.config.keyring.as_deref();
    match ops::schedules::add_sealed(&caller.0.js, &caller.0.auditor, new, keyring).await {
        Ok(schedule) => ok(schedule),
        Err(err) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{err:#}"),
        )),
    }
}

async fn schedule_cancel(caller: Caller, Path(name): Path<String>) -> Answer {
    caller.needs(Role::Admin, "cancelling a schedule")?;
    // ops audits the cancellation (and a refusal) itself.
    ops::schedules::cancel(&caller.0.js, &caller.0.auditor, &name).await?;
    ok(json!({ "cancelled": name }))
}

/// What applying the infra definitions would change; admin only, as provisioning is.
async fn infra_plan(Extract(state): Extract<Shared>, caller: Caller) -> Answer {
    caller.needs(Role::Admin, "provisioning (the infra plan)")?;
    let dir = &state.config.infra_dir;
    let (_, plan) = ops::infra::plan(&caller.0.js, dir).await?;
    ok(ops::infra::PlanView::of(dir, &plan))
}

/// Nothing to choose: the console applies the definitions it was started with (`--infra-dir`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InfraApplyBody {}

async fn infra_apply(
    Extract(state): Extract<Shared>,
    caller: Caller,
    payload: Result<Json<InfraApplyBody>, JsonRejection>,
) -> Answer {
    caller.needs(Role::Admin, "provisioning (infra apply)")?;
    body(payload)?;
    // ops audits the apply (and a refusal) itself, with the signed-in admin as actor.
    match ops::infra::apply(&caller.0.js, &caller.0.auditor, &state.config.infra_dir).await {
        Ok((plan, applied)) => ok(json!({ "plan": plan, "applied": applied })),
        Err(err) => Err(ApiError::new(StatusCode::CONFLICT, format!("{err:#}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_describes_exactly_the_routes() {
        let doc: Value = serde_json::from_str(crate::OPENAPI_JSON).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    documented.push((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        documented.sort();
        let mut routes: Vec<(String, String)> = API
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        routes.sort();
        assert_eq!(documented, routes, "openapi.json and API differ");
    }

    #[test]
    fn every_route_has_a_handler() {
        let _router: axum::Router<Shared> = router();
    }
}
