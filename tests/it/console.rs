//! `jetfn console`: the JSON API as a browser (or a script) uses it, against a real nats-server, the real welcome
//! function and a real SMTP server. Sign-in both ways (tokens from a file; the person's own NATS user under the
//! shipped permissions), roles enforced on the server side (a viewer's pause is refused and changes nothing),
//! every change in the audit trail with the signed-in person, the OpenAPI document covering every route; then the
//! whole flow in headless Chromium (tests/console/e2e.mjs), which also takes the docs' screenshots
//! (`JETFN_UPDATE_SCREENSHOTS=1 cargo test -p integration-tests --test it -- console::the_whole` rewrites
//! docs/console/*.png).

use std::time::Duration;

use serde_json::{Value, json};
use testkit::{FunctionProcess, free_port, workspace_root};

use crate::support::{System, TempDir, WAIT, user};

/// A running console and an HTTP client for it.
struct Console {
    process: FunctionProcess,
    base: String,
    http: reqwest::Client,
}

/// What a person has after signing in: the session cookie.
#[derive(Clone)]
struct Session(String);

impl Console {
    async fn start(env: Vec<(&'static str, String)>, args: &[&str]) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut all = vec!["console", "--listen", listen.as_str()];
        all.extend_from_slice(args);
        let env: Vec<(&str, String)> = env
            .into_iter()
            .filter(|(name, _)| *name != "RUST_LOG")
            .collect();
        let process = FunctionProcess::spawn_with_args("jetfn", &all, &env);
        process.wait_for_output("console at http://", WAIT).await;
        Self {
            process,
            base: format!("http://{listen}"),
            http: reqwest::Client::new(),
        }
    }

    /// Calls the API; a change is sent as JSON, as the pages send it. Returns the status and the JSON answer.
    async fn call(
        &self,
        session: Option<&Session>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(session) = session {
            request = request.header("cookie", format!("jetfn_session={}", session.0));
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("the console answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{path} answered no JSON ({status}): {text}"));
        (status, value)
    }

    /// `GET /api/dlq/{seq}/event`: the stored event an operator edits, as `session`.
    async fn stored_event(&self, session: &Session, seq: u64) -> (u16, Value) {
        self.call(Some(session), "GET", &format!("/api/dlq/{seq}/event"), None)
            .await
    }

    /// `POST /api/dlq/{seq}/replay-edited` with `event` (the console's "edit and replay"), as `session`.
    async fn replay_edited(&self, session: &Session, seq: u64, event: &Value) -> (u16, Value) {
        self.call(
            Some(session),
            "POST",
            &format!("/api/dlq/{seq}/replay-edited"),
            Some(json!({ "event": event })),
        )
        .await
    }

    async fn sign_in(&self, body: Value) -> (u16, Value, Option<Session>) {
        let response = self
            .http
            .post(format!("{}/api/session", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let cookie = response
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().to_owned());
        if let Some(cookie) = &cookie {
            for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
                assert!(
                    cookie.contains(attribute),
                    "the cookie is {attribute}: {cookie}"
                );
            }
        }
        let session = cookie.and_then(|c| {
            c.split(';')
                .next()
                .and_then(|pair| pair.strip_prefix("jetfn_session="))
                .map(|id| Session(id.to_owned()))
        });
        let body = response.bytes().await.unwrap();
        (status, serde_json::from_slice(&body).unwrap(), session)
    }

    async fn signed_in(&self, body: Value) -> Session {
        let (status, answer, session) = self.sign_in(body).await;
        assert_eq!(status, 200, "{answer}");
        session.expect("a session cookie")
    }

    /// Waits for a replay or purge job to finish; returns it.
    async fn finished(&self, session: &Session, started: &Value) -> Value {
        let id = started["id"].as_str().expect("a job id");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let (status, job) = self
                .call(Some(session), "GET", &format!("/api/jobs/{id}"), None)
                .await;
            assert_eq!(status, 200, "{job}");
            if job["finished"] == true {
                return job;
            }
            assert!(std::time::Instant::now() < deadline, "the job ends: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A tokens file with an operator, a viewer and an admin; returns it and their tokens.
fn tokens_file(dir: &TempDir) -> (String, [(&'static str, String); 3]) {
    let people = [("ada", "operator"), ("vic", "viewer"), ("root", "admin")];
    let mut lines = String::from("# jetfn console users: name role sha256(token)\n");
    let mut tokens = Vec::new();
    for (name, role) in people {
        let token = jetfn_console::auth::new_token().unwrap();
        lines.push_str(&format!(
            "{name} {role} {}\n",
            jetfn_console::auth::hash_token(&token)
        ));
        tokens.push((name, token));
    }
    let path = format!("{}/tokens", dir.path());
    std::fs::write(&path, &lines).unwrap();
    assert!(!lines.contains(&tokens[0].1), "the file holds no token");
    (path, tokens.try_into().unwrap_or_else(|_| unreachable!()))
}

/// Publishes a registration the SMTP server refuses for good; returns the event and its DLQ sequence.
async fn dead_registration(system: &System, email: &str) -> (runtime::Published, u64) {
    system
        .smtp
        .reject_recipients(550, "5.1.1 mailbox unavailable");
    let published = system.publisher.publish(user(email, "Typo")).await.unwrap();
    let records = system.wait_dlq(1).await;
    system.smtp.clear_faults();
    (published, records[0].0)
}

#[tokio::test]
async fn the_console_api_signs_in_with_tokens_enforces_roles_and_audits_every_change() {
    let system = System::start().await;
    let _welcome = system.welcome().await;
    let dir = TempDir::new("console-tokens");
    let (file, [(_, ada), (_, vic), (_, root)]) = tokens_file(&dir);
    let console = Console::start(system.env(), &["--tokens-file", &file]).await;

    // Not signed in: refused, and told how to sign in.
    let (status, answer) = console.call(None, "GET", "/api/overview", None).await;
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = console.call(None, "GET", "/api/session", None).await;
    assert_eq!((status, answer["sign_in"].as_str()), (401, Some("tokens")));
    let (status, answer, session) = console.sign_in(json!({ "token": "not-a-token" })).await;
    assert_eq!((status, session.is_none()), (401, true), "{answer}");

    // A viewer reads, and is refused a pause with a 403 naming the role; nothing changes on the server.
    let viewer = console.signed_in(json!({ "token": vic })).await;
    let (status, me) = console
        .call(Some(&viewer), "GET", "/api/session", None)
        .await;
    assert_eq!(
        (status, me["name"].as_str(), me["role"].as_str()),
        (200, Some("vic"), Some("viewer"))
    );
    let (status, overview) = console
        .call(Some(&viewer), "GET", "/api/overview", None)
        .await;
    assert_eq!(status, 200, "{overview}");
    assert!(
        overview["status"]["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["consumer"] == "welcome"),
        "{overview}"
    );
    let (status, refused) = console
        .call(
            Some(&viewer),
            "POST",
            "/api/functions/welcome/pause",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["role_needed"], "operator", "{refused}");
    assert!(
        !system.consumer_info("EVENTS", "welcome").await.paused,
        "the viewer's pause changed nothing"
    );

    // A change must be JSON (a cross-site form cannot send that without a preflight).
    let operator = console.signed_in(json!({ "token": ada })).await;
    let response = console
        .http
        .post(format!("{}/api/functions/welcome/pause", console.base))
        .header("cookie", format!("jetfn_session={}", operator.0))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("until=")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    assert!(!system.consumer_info("EVENTS", "welcome").await.paused);

    // The operator pauses: the backlog grows and shows in the overview; then resumes and it drains.
    let (status, states) = console
        .call(
            Some(&operator),
            "POST",
            "/api/functions/welcome/pause",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{states}");
    assert!(system.consumer_info("EVENTS", "welcome").await.paused);
    for n in 0..3 {
        system
            .publisher
            .publish(user(&format!("held-{n}@example.com"), "Held"))
            .await
            .unwrap();
    }
    let (_, overview) = console
        .call(Some(&operator), "GET", "/api/overview", None)
        .await;
    let welcome = overview["status"]["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["consumer"] == "welcome")
        .unwrap()
        .clone();
    assert_eq!(
        (welcome["paused"].as_bool(), welcome["waiting"].as_u64()),
        (Some(true), Some(3)),
        "{welcome}"
    );
    let (status, _) = console
        .call(
            Some(&operator),
            "POST",
            "/api/functions/welcome/resume",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    system.smtp.wait_for_messages(3, WAIT).await;

    // A dead letter: found by its event id, shown masked, an invalid edit refused naming the field, a fixed edit
    // replayed and delivered to the fixed address.
    let (published, seq) = dead_registration(&system, "typo@exmaple.com").await;
    let (_, overview) = console
        .call(Some(&viewer), "GET", "/api/overview", None)
        .await;
    assert_eq!(
        overview["dead_letters"]["welcome"], 1,
        "counted per function: {overview}"
    );
    let (status, found) = console
        .call(
            Some(&viewer),
            "GET",
            &format!("/api/events/{}", published.id),
            None,
        )
        .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["dead_letters"][0]["dlq_sequence"], seq, "{found}");
    let (status, list) = console
        .call(
            Some(&viewer),
            "GET",
            "/api/dlq?function=welcome&kind=permanent",
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list["records"][0]["event_id"].as_str(),
        Some(published.id.as_str()),
        "{list}"
    );
    let (status, shown) = console
        .call(Some(&viewer), "GET", &format!("/api/dlq/{seq}"), None)
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(
        shown["payload"]["data"]["email"], "ty***@exmaple.com",
        "masked: {shown}"
    );
    assert!(
        !shown.to_string().contains("typo@"),
        "no address in the answer: {shown}"
    );
    // Every failed attempt: here one, the 550 that dead-lettered it at its first delivery.
    let list = shown["attempts"]["list"]
        .as_array()
        .expect("the attempts list");
    assert_eq!(list.len(), 1, "{shown}");
    assert_eq!(list[0]["delivery"], 1, "{shown}");
    assert!(
        list[0]["reason"].as_str().unwrap().contains("550") && list[0]["at"].is_string(),
        "{shown}"
    );
    let (status, refused) = console.stored_event(&viewer, seq).await;
    assert_eq!(
        (status, refused["role_needed"].as_str()),
        (403, Some("operator"))
    );
    let (status, stored) = console.stored_event(&operator, seq).await;
    assert_eq!(status, 200, "{stored}");
    let mut event = stored["event"].clone();
    event["data"]["email"] = "not an address".into();
    let (status, refused) = console.replay_edited(&operator, seq, &event).await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("/data/email"),
        "names the field: {refused}"
    );
    event["data"]["email"] = "typo@example.com".into();
    let (status, step) = console.replay_edited(&operator, seq, &event).await;
    assert_eq!(
        (status, step["result"].as_str()),
        (200, Some("replayed")),
        "{step}"
    );
    system.smtp.wait_for_messages(4, WAIT).await;
    assert!(
        system
            .smtp
            .messages()
            .iter()
            .any(|m| m.rcpt_to.iter().any(|r| r.contains("typo@example.com"))),
        "the fixed address got its email"
    );

    // A purge is the admin's: the operator is refused; the admin's runs as a job with a summary.
    let (_, second) = dead_registration(&system, "gone@exmaple.com").await;
    let (status, refused) = console
        .call(
            Some(&operator),
            "POST",
            "/api/dlq/purge",
            Some(json!({ "sequences": [second] })),
        )
        .await;
    assert_eq!(
        (status, refused["role_needed"].as_str()),
        (403, Some("admin")),
        "{refused}"
    );
    let admin = console.signed_in(json!({ "token": root })).await;
    let (status, started) = console
        .call(
            Some(&admin),
            "POST",
            "/api/dlq/purge",
            Some(json!({ "filter": { "function": "welcome" } })),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let job = console.finished(&admin, &started).await;
    assert_eq!(
        (
            job["report"]["done"].as_u64(),
            job["report"]["failed"].as_u64()
        ),
        (Some(1), Some(0)),
        "{job}"
    );
    assert!(system.dlq().await.is_empty());
    // A replay of a record that is gone goes on and says what failed.
    let (status, started) = console
        .call(
            Some(&operator),
            "POST",
            "/api/dlq/replay",
            Some(json!({ "sequences": [second] })),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let job = console.finished(&operator, &started).await;
    assert_eq!(job["report"]["failed"], 1, "{job}");
    assert_eq!(job["report"]["steps"][0]["result"], "failed", "{job}");

    // Every change, with who made it; the viewer's refused pause is not among them.
    let (status, audit) = console.call(Some(&viewer), "GET", "/api/audit", None).await;
    assert_eq!(status, 200, "{audit}");
    let entries: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["tool"].as_str().unwrap().starts_with("jetfn-console"))
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("ada", "pause", "ok"),
        ("ada", "resume", "ok"),
        ("ada", "dlq-replay", "error"),
        ("ada", "dlq-replay", "ok"),
        ("root", "dlq-purge", "ok"),
        ("ada", "dlq-replay", "error"),
    ]
    .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
    assert_eq!(entries, expected, "{audit}");
    assert!(
        !audit.to_string().contains("typo@"),
        "no address in the trail: {audit}"
    );

    // Tokens, passwords and payloads are never logged.
    let log = console.process.output();
    for secret in [&ada, &vic, &root] {
        assert!(!log.contains(secret.as_str()), "a token in the log:\n{log}");
    }
    assert!(!log.contains("typo@"), "an address in the log:\n{log}");

    // Signing out ends the session.
    let (status, _) = console
        .call(Some(&viewer), "DELETE", "/api/session", Some(json!({})))
        .await;
    assert_eq!(status, 200);
    let (status, _) = console
        .call(Some(&viewer), "GET", "/api/overview", None)
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_openapi_document_covers_every_route_the_console_answers() {
    let system = System::start().await;
    let dir = TempDir::new("console-openapi");
    let (file, [_, _, (_, root)]) = tokens_file(&dir);
    let console = Console::start(system.env(), &["--tokens-file", &file]).await;
    let admin = console.signed_in(json!({ "token": root })).await;
    let (status, doc) = console.call(None, "GET", "/api/openapi.json", None).await;
    assert_eq!((status, doc["openapi"].as_str()), (200, Some("3.1.0")));
    let (status, asyncapi) = console.call(None, "GET", "/api/asyncapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        asyncapi,
        serde_json::from_str::<Value>(events::ASYNCAPI_JSON).unwrap()
    );

    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let mut served: Vec<(String, String)> = jetfn_console::API
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(
        documented, served,
        "the document and the console's routes differ"
    );
    // Each documented operation is answered by a handler (not the fallback's 404, not a 405), sign-out last. A
    // change gets a body with an unknown field, which every handler refuses before doing anything.
    documented.sort_by_key(|(method, path)| (method == "DELETE", path.clone()));
    for (method, path) in &documented {
        let concrete = path
            .replace("{function}", "welcome")
            .replace("{seq}", "999999")
            .replace("{id}", "0");
        let body = (method != "GET").then(|| json!({ "__unknown": true }));
        let (status, answer) = console.call(Some(&admin), method, &concrete, body).await;
        assert!(
            status != 405
                && !(status == 404
                    && answer["error"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("no such API route")),
            "{method} {path}: {status} {answer}"
        );
    }
    assert!(
        !system.consumer_info("EVENTS", "welcome").await.paused,
        "nothing was paused by the probes"
    );
}

#[tokio::test]
async fn the_console_signs_in_with_the_persons_own_nats_user_and_the_server_holds_them_to_it() {
    let system = crate::permissions::secured_system().await;
    let env: Vec<(&'static str, String)> = vec![("NATS_URL", system.nats.url())];
    let console = Console::start(env, &["--nats-sign-in"]).await;
    let secret = crate::permissions::secret;

    let (status, answer) = console.call(None, "GET", "/api/session", None).await;
    assert_eq!((status, answer["sign_in"].as_str()), (401, Some("nats")));
    let (status, answer, session) = console
        .sign_in(json!({ "user": "operator", "password": "wrong" }))
        .await;
    assert_eq!((status, session.is_none()), (401, true), "{answer}");
    let (status, answer, _) = console.sign_in(json!({ "token": "x" })).await;
    assert_eq!(status, 400, "tokens are not this console's way: {answer}");

    // The viewer user is a viewer: reads the overview through its own connection, is refused a pause.
    let viewer = console
        .signed_in(json!({ "user": "viewer", "password": secret("viewer") }))
        .await;
    let (_, me) = console
        .call(Some(&viewer), "GET", "/api/session", None)
        .await;
    assert_eq!(
        (me["role"].as_str(), me["sign_in"].as_str()),
        (Some("viewer"), Some("nats")),
        "{me}"
    );
    let (status, overview) = console
        .call(Some(&viewer), "GET", "/api/overview", None)
        .await;
    assert_eq!(status, 200, "{overview}");
    let (status, refused) = console
        .call(
            Some(&viewer),
            "POST",
            "/api/functions/welcome/pause",
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (status, refused["role_needed"].as_str()),
        (403, Some("operator")),
        "{refused}"
    );

    // The operator user pauses and resumes over its own connection; the audit entries are its own.
    let operator = console
        .signed_in(json!({ "user": "operator", "password": secret("operator") }))
        .await;
    let (_, me) = console
        .call(Some(&operator), "GET", "/api/session", None)
        .await;
    assert_eq!(me["role"], "operator", "{me}");
    let (status, states) = console
        .call(
            Some(&operator),
            "POST",
            "/api/functions/welcome/pause",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{states}");
    assert!(system.consumer_info("EVENTS", "welcome").await.paused);
    let (status, _) = console
        .call(
            Some(&operator),
            "POST",
            "/api/functions/welcome/resume",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    // But the operator user may not purge: the console refuses (admin), and the server would too.
    let (status, refused) = console
        .call(
            Some(&operator),
            "POST",
            "/api/dlq/purge",
            Some(json!({ "all": true })),
        )
        .await;
    assert_eq!(
        (status, refused["role_needed"].as_str()),
        (403, Some("admin"))
    );

    let (status, audit) = console.call(Some(&viewer), "GET", "/api/audit", None).await;
    assert_eq!(status, 200, "{audit}");
    let entries: Vec<(&str, &str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["user"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("operator", "operator", "pause"),
            ("operator", "operator", "resume")
        ],
        "{audit}"
    );
    // The generated viewer reads the replicas' heartbeats (KV jetfn-replicas, granted since the heartbeats came), and
    // nothing the console asked was refused.
    assert!(overview["replicas_unknown"].is_null(), "{overview}");
    let log = system.nats.log();
    let violations: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("Violation"))
        .collect();
    assert!(
        violations.is_empty(),
        "the console asked for nothing its users may not do: {violations:?}"
    );
    let log = console.process.output();
    assert!(
        !log.contains(&secret("operator")),
        "a password in the log:\n{log}"
    );
}

/// Node and Debian's chromium, or a loud failure saying how to install them.
fn browser_tools() -> std::path::PathBuf {
    let dir = workspace_root().join("tests/console");
    let chromium = std::path::Path::new("/usr/bin/chromium");
    assert!(
        chromium.exists(),
        "the console's browser test needs Debian's chromium at /usr/bin/chromium: run `bash infra/install-chromium.sh` \
         (as root; tests/run.sh does)"
    );
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "the console's browser test needs node and playwright-core in tests/console/node_modules: run \
         `bash infra/install-chromium.sh` (tests/run.sh does)"
    );
    dir
}

#[tokio::test]
async fn the_whole_console_flow_works_in_headless_chromium() {
    let dir = browser_tools();
    let system = System::start().await;
    let _welcome = system.welcome().await;
    let tokens = TempDir::new("console-browser");
    let (file, [(_, ada), (_, vic), (_, root)]) = tokens_file(&tokens);
    let mut env = system.env();
    env.push((
        "JETFN_TRACE_URL_TEMPLATE",
        "http://traces.test/trace/{trace_id}".to_owned(),
    ));
    let console = Console::start(env, &["--tokens-file", &file]).await;

    // The browser's part runs beside this one, which publishes what it waits for and checks the emails. The
    // script prints `step: <name>` as it goes; `need: <what>` asks this side for something.
    let profile = TempDir::new("console-chromium-profile");
    // The screenshots are always taken; they replace the committed ones in docs/console only when asked, so an
    // ordinary run leaves the work tree clean.
    let screenshots = if std::env::var_os("JETFN_UPDATE_SCREENSHOTS").is_some() {
        workspace_root().join("docs/console")
    } else {
        std::path::PathBuf::from(format!("{}/screenshots", profile.path()))
    };
    std::fs::create_dir_all(&screenshots).unwrap();
    let script = FunctionProcess::spawn_program(
        "node",
        &[dir.join("e2e.mjs").to_string_lossy().as_ref()],
        &[
            ("CONSOLE_URL", console.base.clone()),
            ("OPERATOR_TOKEN", ada),
            ("VIEWER_TOKEN", vic),
            ("ADMIN_TOKEN", root),
            ("CHROMIUM_PROFILE", profile.path()),
            ("SCREENSHOTS", screenshots.to_string_lossy().into_owned()),
        ],
    );
    // The backlog grows while the function is paused: the script pauses it, then asks for events.
    script.wait_for_output("need: backlog", WAIT).await;
    for n in 0..5 {
        system
            .publisher
            .publish(user(&format!("queued-{n}@example.com"), "Queued"))
            .await
            .unwrap();
    }
    script
        .wait_for_output("step: resumed", Duration::from_secs(60))
        .await;
    system.smtp.wait_for_messages(5, WAIT).await;
    // A dead letter for the script to find by its event id, edit and replay.
    script.wait_for_output("need: dead letter", WAIT).await;
    let (published, _) = dead_registration(&system, "typo@exmaple.com").await;
    std::fs::write(format!("{}/event-id", profile.path()), &published.id).unwrap();
    script
        .wait_for_output("step: replayed", Duration::from_secs(60))
        .await;
    system.smtp.wait_for_messages(6, WAIT).await;
    assert!(
        system
            .smtp
            .messages()
            .iter()
            .any(|m| m.rcpt_to.iter().any(|r| r.contains("typo@example.com"))),
        "the edited event's email arrived at the fixed address"
    );
    std::fs::write(format!("{}/email-arrived", profile.path()), "yes").unwrap();
    let status = script.wait_exit(Duration::from_secs(90)).await;
    let output = script.output();
    assert_eq!(status.code(), Some(0), "the browser flow failed:\n{output}");
    assert!(output.contains("step: done"), "{output}");
}

/// The console seals a new schedule's sensitive fields with its keyring, as `jetfn schedule add` does: a token typed
/// into the console never sits in `SCHEDULES` in clear while the schedule waits.
#[tokio::test]
async fn a_schedule_added_in_the_console_holds_its_sensitive_fields_sealed() {
    let system = System::start().await;
    let dir = TempDir::new("console-sealed-schedule");
    let (file, [_, _, (_, root)]) = tokens_file(&dir);
    let mut env = system.env();
    env.push((
        "JETFN_KEYRING",
        crate::sealed::ring_json(Some("k1"), &[("k1", crate::sealed::K1)]),
    ));
    let console = Console::start(env, &["--tokens-file", &file]).await;
    let admin = console.signed_in(json!({ "token": root })).await;
    let token = "consoleTypedToken_0123456789abcdefghijkl";
    let mut data = (events::kind_by_type("users.password_reset_requested")
        .unwrap()
        .example_data)();
    data["token"] = token.into();
    let new = json!({
        "event_type": "users.password_reset_requested", "data": data, "in": "1h", "name": "reset-later"
    });
    let (status, added) = console
        .call(Some(&admin), "POST", "/api/schedules", Some(new))
        .await;
    assert_eq!(status, 200, "{added}");

    let schedules = system.js.get_stream("SCHEDULES").await.unwrap();
    let held = schedules
        .direct_get_last_for_subject("schedules.reset-later")
        .await
        .unwrap();
    assert_eq!(crate::sealed::key_id(&held.headers).as_deref(), Some("k1"));
    let stored = String::from_utf8_lossy(&held.payload);
    assert!(
        !stored.contains(token) && stored.contains(publish::sealed::PREFIX),
        "the token is sealed in SCHEDULES: {stored}"
    );
    let (_, listed) = console
        .call(Some(&admin), "GET", "/api/schedules", None)
        .await;
    assert!(!listed.to_string().contains(token), "{listed}");
    assert!(!console.process.output().contains(token));
}

/// A password reset sealed with `k1` that a function without the key dead-lettered (kind `permanent`); returns its
/// DLQ sequence. The keyless function is stopped: the test runs the function with the key when it wants one.
async fn sealed_dead_reset(system: &System, user: &str, token: &str) -> u64 {
    use crate::sealed::{K1, keyring, reset};
    let keyless = system.spawn("password-reset", &[]).await;
    system
        .emails()
        .with_keyring(keyring("k1", &[("k1", K1)]))
        .send_password_reset(reset(user, token))
        .await
        .unwrap();
    let records = system.wait_dlq(1).await;
    keyless.sigterm();
    keyless.wait_exit(WAIT).await;
    assert_eq!(records.len(), 1);
    let text = String::from_utf8_lossy(&records[0].1.payload);
    assert!(!text.contains(token), "the dead letter is sealed: {text}");
    records[0].0
}

/// Fails if `secret` is stored in clear anywhere an edited replay writes: the events, the dead letters, the audit
/// trail (headers and bodies, every message).
async fn assert_stored_nowhere(system: &System, secret: &str) {
    for name in ["EVENTS", "DLQ", "AUDIT"] {
        let mut stream = system.js.get_stream(name).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        if state.messages == 0 {
            continue;
        }
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(seq).await else {
                continue;
            };
            let headers: String = message
                .headers
                .iter()
                .flat_map(|(name, values)| values.iter().map(move |v| format!("{name}: {v}")))
                .collect();
            assert!(
                !String::from_utf8_lossy(&message.payload).contains(secret)
                    && !headers.contains(secret),
                "{name} #{seq} holds the secret in clear"
            );
        }
    }
}

/// An operator who types a new reset token into a sealed dead letter's edit gets it sealed with the console's
/// keyring, under the key its header names: the function opens it and mails the new token, and the token sits
/// nowhere in clear (the events, the DLQ, the audit trail, the console's and the function's output).
#[tokio::test]
async fn an_edited_dead_letter_whose_token_is_retyped_in_clear_is_replayed_sealed_with_the_consoles_keyring()
 {
    use crate::sealed::{K1, key_id, ring_json, token_mailed_to};
    let system = System::start().await;
    let seq = sealed_dead_reset(&system, "rhea", "storedEditToken_0123456789abcdefghij").await;
    let function = system
        .spawn(
            "password-reset",
            &[("JETFN_KEYRING", ring_json(None, &[("k1", K1)]))],
        )
        .await;
    let dir = TempDir::new("console-sealed-edit");
    let (file, [(_, operator), _, _]) = tokens_file(&dir);
    let mut env = system.env();
    env.push(("JETFN_KEYRING", ring_json(Some("k1"), &[("k1", K1)])));
    let console = Console::start(env, &["--tokens-file", &file]).await;
    let operator = console.signed_in(json!({ "token": operator })).await;
    let (status, stored) = console.stored_event(&operator, seq).await;
    assert_eq!(status, 200, "{stored}");
    let mut event = stored["event"].clone();
    assert!(
        publish::sealed::is_sealed(&event["data"]["token"]),
        "the console shows the sealed form: {event}"
    );
    let retyped = "retypedToken_0123456789abcdefghijklmn";
    event["data"]["token"] = retyped.into();
    let (status, step) = console.replay_edited(&operator, seq, &event).await;
    assert_eq!(
        (status, step["result"].as_str()),
        (200, Some("replayed")),
        "{step}"
    );

    let events_stream = system.js.get_stream("EVENTS").await.unwrap();
    let republished = events_stream
        .get_raw_message(step["sequence"].as_u64().expect("its sequence"))
        .await
        .unwrap();
    assert_eq!(key_id(&republished.headers).as_deref(), Some("k1"));
    let text = String::from_utf8_lossy(&republished.payload);
    assert!(
        !text.contains(retyped) && text.contains(publish::sealed::PREFIX),
        "the republished token is sealed: {text}"
    );
    assert_eq!(token_mailed_to(&system, "rhea@example.com").await, retyped);
    system.wait_settled("password-reset").await;
    assert!(system.dlq().await.is_empty(), "opened, not dead-lettered");
    assert_stored_nowhere(&system, retyped).await;
    assert!(!console.process.output().contains(retyped));
    assert!(!function.output().contains(retyped));
}

/// Without a keyring the console cannot seal, so an edit that puts a sealed field in clear is refused before
/// anything is published, naming the field and never its value: `EVENTS` gains nothing and the dead letter stays.
/// The same dead letter edited with its sealed token left as stored replays, and the function opens it.
#[tokio::test]
async fn without_a_keyring_the_console_refuses_an_edit_that_unseals_a_field_and_replays_one_that_keeps_it_sealed()
 {
    use crate::sealed::{K1, RESET_SUBJECT, key_id, ring_json, token_mailed_to};
    let system = System::start().await;
    let stored_token = "storedEditToken_9876543210zyxwvutsrq";
    let seq = sealed_dead_reset(&system, "saul", stored_token).await;
    let dir = TempDir::new("console-unsealed-edit");
    let (file, [(_, operator), _, _]) = tokens_file(&dir);
    let console = Console::start(system.env(), &["--tokens-file", &file]).await;
    let operator = console.signed_in(json!({ "token": operator })).await;
    let (_, stored) = console.stored_event(&operator, seq).await;
    let sealed = stored["event"].clone();
    let mut event = sealed.clone();
    let retyped = "retypedToken_zyxwvutsrq9876543210abcd";
    event["data"]["token"] = retyped.into();
    let mut events_stream = system.js.get_stream("EVENTS").await.unwrap();
    let before = events_stream.info().await.unwrap().state.last_sequence;
    let (status, refused) = console.replay_edited(&operator, seq, &event).await;
    assert_eq!(status, 422, "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.starts_with("/data/token: a sensitive field must stay sealed")
            && error.contains("JETFN_KEYRING"),
        "names the field and the way out: {error}"
    );
    assert!(!error.contains(retyped), "never echoes the value: {error}");
    assert_eq!(
        events_stream.info().await.unwrap().state.last_sequence,
        before,
        "nothing published"
    );
    let records = system.dlq().await;
    assert_eq!(
        records.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [seq],
        "the dead letter stays"
    );
    assert_stored_nowhere(&system, retyped).await;
    assert!(!console.process.output().contains(retyped));

    // The sealed token left as stored (another field fixed): replayed as it is, under its key.
    let _function = system
        .spawn(
            "password-reset",
            &[("JETFN_KEYRING", ring_json(None, &[("k1", K1)]))],
        )
        .await;
    let mut event = sealed.clone();
    event["data"]["name"] = "Saul".into();
    let (status, step) = console.replay_edited(&operator, seq, &event).await;
    assert_eq!(
        (status, step["result"].as_str()),
        (200, Some("replayed")),
        "{step}"
    );
    let last = events_stream
        .get_last_raw_message_by_subject(RESET_SUBJECT)
        .await
        .unwrap();
    assert!(last.sequence > before);
    assert_eq!(key_id(&last.headers).as_deref(), Some("k1"));
    let republished: Value = serde_json::from_slice(&last.payload).unwrap();
    assert_eq!(
        republished["data"]["token"], sealed["data"]["token"],
        "the stored ciphertext"
    );
    assert_eq!(
        token_mailed_to(&system, "saul@example.com").await,
        stored_token
    );
    system.wait_settled("password-reset").await;
    assert!(system.dlq().await.is_empty());
}

#[tokio::test]
async fn schedules_are_listed_by_anyone_and_added_or_cancelled_by_an_admin_and_replicas_show_their_heartbeat()
 {
    let system = System::start().await;
    let dir = TempDir::new("console-schedules");
    let (file, [(_, ada), (_, vic), (_, root)]) = tokens_file(&dir);
    let console = Console::start(system.env(), &["--tokens-file", &file]).await;
    let (viewer, operator, admin) = (
        console.signed_in(json!({ "token": vic })).await,
        console.signed_in(json!({ "token": ada })).await,
        console.signed_in(json!({ "token": root })).await,
    );
    let data = (events::kind_by_type("users.registered")
        .unwrap()
        .example_data)();
    let new = json!({ "event_type": "users.registered", "data": data, "every": "1h", "name": "hourly-hello" });

    let (status, refused) = console
        .call(Some(&operator), "POST", "/api/schedules", Some(new.clone()))
        .await;
    assert_eq!(
        (status, refused["role_needed"].as_str()),
        (403, Some("admin")),
        "{refused}"
    );
    let mut bad = new.clone();
    bad["data"]["email"] = "not an address".into();
    let (status, refused) = console
        .call(Some(&admin), "POST", "/api/schedules", Some(bad))
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("/data/email"),
        "names the field: {refused}"
    );
    let mut two = new.clone();
    two["cron"] = "@daily".into();
    let (status, refused) = console
        .call(Some(&admin), "POST", "/api/schedules", Some(two))
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().starts_with("when:"),
        "{refused}"
    );

    let (status, added) = console
        .call(Some(&admin), "POST", "/api/schedules", Some(new))
        .await;
    assert_eq!(status, 200, "{added}");
    let (status, listed) = console
        .call(Some(&viewer), "GET", "/api/schedules?next=2", None)
        .await;
    assert_eq!(status, 200, "{listed}");
    let hourly = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "hourly-hello")
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(hourly["spec"], "@every 3600s", "{hourly}");
    assert_eq!(hourly["next_runs"].as_array().unwrap().len(), 2, "{hourly}");
    let (status, refused) = console
        .call(
            Some(&operator),
            "DELETE",
            "/api/schedules/hourly-hello",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    let (status, _) = console
        .call(
            Some(&admin),
            "DELETE",
            "/api/schedules/hourly-hello",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, listed) = console
        .call(Some(&viewer), "GET", "/api/schedules", None)
        .await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["name"] != "hourly-hello"),
        "{listed}"
    );
    let (status, refused) = console
        .call(
            Some(&admin),
            "DELETE",
            "/api/schedules/hourly-hello",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("hourly-hello"),
        "names it: {refused}"
    );

    let (_, audit) = console
        .call(Some(&viewer), "GET", "/api/audit?who=root", None)
        .await;
    let entries: Vec<(&str, &str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
                e["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("schedule-add", "hourly-hello", "error"),
            ("schedule-add", "hourly-hello", "ok"),
            ("schedule-cancel", "hourly-hello", "ok"),
            ("schedule-cancel", "hourly-hello", "error"),
        ],
        "{audit}"
    );

    // A replica's heartbeat, as the runtime writes it, shows in the overview.
    let now = time::OffsetDateTime::now_utc();
    let replica = ops::replicas::Replica {
        function: "welcome".to_owned(),
        instance: "host-1-abc".to_owned(),
        host: "host".to_owned(),
        version: "0.0.0".to_owned(),
        started: now,
        seen: now,
        ready: true,
        breaker_open: false,
        in_flight: 2,
        paused: false,
        minutes: vec![ops::replicas::Minute {
            start: now,
            succeeded: 7,
            failed: 1,
            retried: 0,
        }],
    };
    let store = system
        .js
        .get_key_value(ops::replicas::BUCKET)
        .await
        .unwrap();
    store
        .put(
            ops::replicas::key("welcome", "host-1-abc"),
            serde_json::to_vec(&replica).unwrap().into(),
        )
        .await
        .unwrap();
    let (status, overview) = console
        .call(Some(&viewer), "GET", "/api/overview", None)
        .await;
    assert_eq!(status, 200, "{overview}");
    assert_eq!(
        overview["replicas"][0]["instance"], "host-1-abc",
        "{overview}"
    );
    assert_eq!(
        overview["replicas"][0]["minutes"][0]["succeeded"], 7,
        "{overview}"
    );
}

/// Copies the repository's definitions without their schedules (a test writes the schedules it needs), into `to`.
fn copy_definitions(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "schedules" {
                copy_definitions(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn an_admin_plans_and_applies_the_infra_definitions_and_no_one_else_may() {
    let system = System::start().await;
    let dir = TempDir::new("console-infra");
    let infra = dir.0.join("nats");
    copy_definitions(&workspace_root().join("infra/nats"), &infra);
    std::fs::write(
        infra.join("kv/jetfn-console-probe.json"),
        r#"{ "bucket": "jetfn-console-probe", "description": "a bucket only this test defines", "history": 1 }"#,
    )
    .unwrap();
    let (file, [(_, ada), (_, vic), (_, root)]) = tokens_file(&dir);
    let console = Console::start(
        system.env(),
        &[
            "--tokens-file",
            &file,
            "--infra-dir",
            infra.to_str().unwrap(),
        ],
    )
    .await;
    let viewer = console.signed_in(json!({ "token": vic })).await;
    let operator = console.signed_in(json!({ "token": ada })).await;
    let admin = console.signed_in(json!({ "token": root })).await;

    for who in [&viewer, &operator] {
        let (status, refused) = console
            .call(Some(who), "GET", "/api/infra/plan", None)
            .await;
        assert_eq!(
            (status, refused["role_needed"].as_str()),
            (403, Some("admin")),
            "{refused}"
        );
        let (status, refused) = console
            .call(Some(who), "POST", "/api/infra/apply", Some(json!({})))
            .await;
        assert_eq!(
            (status, refused["role_needed"].as_str()),
            (403, Some("admin")),
            "{refused}"
        );
    }
    assert!(
        system
            .js
            .get_key_value("jetfn-console-probe")
            .await
            .is_err(),
        "a refused apply changes nothing"
    );

    let (status, plan) = console
        .call(Some(&admin), "GET", "/api/infra/plan", None)
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["refused"], false, "{plan}");
    let probe = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|change| change["name"] == "jetfn-console-probe")
        .unwrap_or_else(|| panic!("the new bucket is planned: {plan}"));
    assert_eq!(
        (probe["kind"].as_str(), probe["action"].as_str()),
        (Some("kv"), Some("create"))
    );
    assert!(
        plan["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|change| change["name"] == "EVENTS" && change["action"] == "unchanged"),
        "{plan}"
    );

    let (status, applied) = console
        .call(Some(&admin), "POST", "/api/infra/apply", Some(json!({})))
        .await;
    assert_eq!(status, 200, "{applied}");
    assert!(
        applied["applied"]
            .as_str()
            .unwrap()
            .starts_with("1 created"),
        "{applied}"
    );
    system
        .js
        .get_key_value("jetfn-console-probe")
        .await
        .expect("the bucket was created");
    let (_, again) = console
        .call(Some(&admin), "GET", "/api/infra/plan", None)
        .await;
    assert!(
        again["changes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|change| change["action"] == "unchanged"),
        "applied, the plan is empty: {again}"
    );

    let (status, audit) = console
        .call(Some(&viewer), "GET", "/api/audit?action=infra-apply", None)
        .await;
    assert_eq!(status, 200, "{audit}");
    let entries = audit.as_array().unwrap();
    assert_eq!(entries.len(), 1, "only the admin's apply: {audit}");
    assert_eq!(
        (entries[0]["actor"].as_str(), entries[0]["result"].as_str()),
        (Some("root"), Some("ok")),
        "{audit}"
    );
    assert!(
        entries[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("1 created")
            && entries[0]["target"].as_str().unwrap().ends_with("nats"),
        "{audit}"
    );
}
