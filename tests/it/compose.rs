//! The compose stack (compose.yaml) the way a user runs it, with podman-compose: the images built by the project's
//! scripts (infra/images.sh, infra/deploy/compose/build.sh), the stack brought up by infra/deploy/compose/up.sh (a
//! three-node JetStream cluster over TLS with the generated users, the provisioning step, every function as its own
//! user, maildev, Phoenix). Events come from the host, through the published TLS ports, from the `jetfn` CLI and from
//! nats-py (a client jetfn did not write); the emails are read back from maildev's API and the trace (the CLI's
//! publish, the function's attempt, the SMTP send) from Phoenix's. Then one NATS node and one function container are
//! killed, more events are published, and every event must have been handled exactly once: each email arrived, none
//! twice. The stack is torn down whatever happens (Drop).
//!
//! Slow by nature (a minute or two warm; the first run builds the images): tests/run.sh runs it on its own, after
//! the rest of the suite, so its seventeen containers do not share the two cores with the other tests.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use events::{
    CloudEvent, ContactSubmitted, EmailVerificationRequested, Event, OrderPlaced, OrderShipped,
    OrderStatusChanged, PasswordResetRequested, SubscriptionStatusChanged, UserRegistered,
};
use testkit::binary_path;

/// One fixed name, so a run that was killed before its teardown is cleaned up by the next one.
const PROJECT: &str = "jetfn-it-compose";
/// The staff address order-confirmation notifies and the support inbox contact writes to (compose.yaml).
const STAFF: &str = "orders@jetfn.local";
const SUPPORT: &str = "support@jetfn.local";
/// Phoenix's project for the stack's spans (OTEL_RESOURCE_ATTRIBUTES in compose.yaml).
const TRACE_PROJECT: &str = "jetfn";
/// How long the stack gets for each thing the test waits for.
const WAIT: Duration = Duration::from_secs(120);

#[test]
fn compose_stack_handles_every_event_once_through_a_node_and_a_function_kill() {
    // This crate's own location, not testkit's `workspace_root` (fixed when testkit was compiled, which in a
    // copied target directory is another checkout).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned();
    let started = Instant::now();
    for script in [
        "infra/images.sh",
        "infra/deploy/compose/build.sh",
        "tests/compose/install.sh",
    ] {
        let at = Instant::now();
        run(Command::new("bash").arg(script).current_dir(&root), script);
        eprintln!("compose: {script}: {:.0?}", at.elapsed());
    }

    let stack = Stack::new(&root);
    let at = Instant::now();
    stack.run("bash", &["infra/deploy/compose/up.sh"]);
    eprintln!("compose: up.sh: {:.0?}", at.elapsed());
    stack.wait_http(stack.mail_port, "/healthz", Duration::from_secs(60));
    stack.wait_http(stack.trace_port, "/healthz", Duration::from_secs(180));
    eprintln!(
        "compose: the stack answers {:.0?} after up.sh started",
        at.elapsed()
    );

    // Phase 1: every email function, from the CLI (traced: its publish span goes to Phoenix too) and from nats-py.
    let mut expected: Vec<String> = Vec::new();
    for n in 1..=2 {
        let email = format!("cli-{n}@example.com");
        stack.cli_publish(&user(&email));
        expected.push(email);
    }
    stack.nats_py(
        "publisher-orders",
        &[
            event({
                let mut order = OrderPlaced::example();
                order.customer.email = "np-order@example.com".to_owned();
                order
            }),
            event({
                let mut shipped = OrderShipped::example();
                shipped.customer.email = "np-ship@example.com".to_owned();
                shipped
            }),
            event({
                let mut changed = OrderStatusChanged::example();
                changed.customer.email = "np-status@example.com".to_owned();
                changed
            }),
        ],
    );
    let in_an_hour = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a time formats");
    stack.nats_py(
        "publisher-users",
        &[
            event({
                let mut reset = PasswordResetRequested::example();
                reset.email = "np-reset@example.com".to_owned();
                reset.expires_at = in_an_hour.clone();
                reset
            }),
            event({
                let mut verify = EmailVerificationRequested::example();
                verify.email = "np-verify@example.com".to_owned();
                verify.expires_at = in_an_hour.clone();
                verify
            }),
        ],
    );
    stack.nats_py(
        "publisher-contact",
        &[event({
            let mut contact = ContactSubmitted::example();
            contact.email = "np-contact@example.com".to_owned();
            contact.send_acknowledgement = true;
            contact
        })],
    );
    stack.nats_py(
        "publisher-subscription",
        &[event({
            let mut changed = SubscriptionStatusChanged::example();
            changed.customer.email = "np-subscription@example.com".to_owned();
            changed
        })],
    );
    for email in [
        "np-order@example.com",
        STAFF,
        "np-ship@example.com",
        "np-status@example.com",
        "np-reset@example.com",
        "np-verify@example.com",
        SUPPORT,
        "np-contact@example.com",
        "np-subscription@example.com",
    ] {
        expected.push(email.to_owned());
    }
    stack.wait_for_mail(&expected);

    // One trace per CLI publish: its send span, the welcome attempt and the SMTP send under it.
    stack.wait_for_traces(2);

    // Phase 2: one node killed and kept down, the welcome container killed (its restart policy brings it back),
    // then more events while the node is down.
    let nats_2 = stack.container("nats-2");
    stack.run("podman", &["kill", "--signal", "KILL", &nats_2]);
    let welcome = stack.container("welcome");
    let pid = stack.inspect(&welcome, "{{.State.Pid}}");
    stack.run("kill", &["-9", &pid]);
    let after: Vec<String> = (1..=6)
        .map(|n| format!("np-after-{n}@example.com"))
        .collect();
    stack.nats_py(
        "publisher-users",
        &after
            .iter()
            .map(|email| event(user(email)))
            .collect::<Vec<_>>(),
    );
    stack.cli_publish(&user("cli-3@example.com"));
    expected.extend(after);
    expected.push("cli-3@example.com".to_owned());
    stack.wait_until("welcome restarted by its restart policy", || {
        stack.inspect(&welcome, "{{.State.Running}} {{.RestartCount}}") != "true 0"
            && stack.inspect(&welcome, "{{.State.Running}}") == "true"
    });
    stack.run("podman", &["start", &nats_2]);
    stack.wait_for_mail(&expected);
    // Anything late (a redelivery sending twice) would show within the ack wait of a redelivered message; the
    // functions ack within a second, so a few seconds of quiet is enough to see a duplicate.
    std::thread::sleep(Duration::from_secs(5));
    stack.assert_mail_exactly(&expected);
    stack.keep_function_logs();
    eprintln!("compose: the whole test: {:.0?}", started.elapsed());
}

fn user(email: &str) -> UserRegistered {
    UserRegistered {
        user_id: format!("u-{}", email.split('@').next().unwrap_or_default()),
        email: email.to_owned(),
        name: "Ada".to_owned(),
        locale: events::Locale::En,
    }
}

fn event<T: Event>(data: T) -> serde_json::Value {
    serde_json::to_value(CloudEvent::new("/compose-test", data)).expect("an event serializes")
}

/// The running stack, torn down (with its volumes) on drop.
struct Stack {
    root: PathBuf,
    env: Vec<(&'static str, String)>,
    secrets: PathBuf,
    nats_ports: [u16; 3],
    mail_port: u16,
    trace_port: u16,
}

impl Stack {
    fn new(root: &Path) -> Self {
        let secrets = std::env::temp_dir().join(format!("{PROJECT}-{}", std::process::id()));
        let nats_ports = [free_port(), free_port(), free_port()];
        let (mail_port, trace_port) = (free_port(), free_port());
        let env = vec![
            (
                "CONTAINERS_CONF",
                root.join("infra/containers/containers.conf")
                    .display()
                    .to_string(),
            ),
            ("COMPOSE_PROJECT_NAME", PROJECT.to_owned()),
            ("JETFN_COMPOSE_DIR", secrets.display().to_string()),
            ("JETFN_NATS_PORT_1", nats_ports[0].to_string()),
            ("JETFN_NATS_PORT_2", nats_ports[1].to_string()),
            ("JETFN_NATS_PORT_3", nats_ports[2].to_string()),
            ("JETFN_MAILDEV_PORT", mail_port.to_string()),
            ("JETFN_PHOENIX_PORT", trace_port.to_string()),
        ];
        let stack = Self {
            root: root.to_owned(),
            env,
            secrets,
            nats_ports,
            mail_port,
            trace_port,
        };
        // What a killed earlier run left behind.
        stack.down();
        stack
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.current_dir(&self.root);
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let output = run(self.command(program).args(args), program);
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn compose(&self, args: &[&str]) -> Output {
        self.command(".tools/venv/bin/podman-compose")
            .args(args)
            .output()
            .expect("podman-compose runs (infra/install-podman.sh installs it)")
    }

    fn down(&self) {
        let _ = self.compose(&["down", "--volumes", "--timeout", "3"]);
    }

    fn container(&self, service: &str) -> String {
        format!("{PROJECT}_{service}_1")
    }

    fn inspect(&self, container: &str, format: &str) -> String {
        self.run("podman", &["inspect", "--format", format, container])
    }

    /// The NATS settings a client on the host uses: every node's published TLS port, the stack's CA, a user's
    /// password file and inbox prefix.
    fn nats_env(&self, user: &str) -> Vec<(&'static str, String)> {
        let urls = self
            .nats_ports
            .iter()
            .map(|port| format!("tls://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        vec![
            ("NATS_URL", urls),
            (
                "NATS_TLS_CA_FILE",
                self.secrets.join("tls/ca.pem").display().to_string(),
            ),
            ("NATS_USER", user.to_owned()),
            (
                "NATS_PASSWORD_FILE",
                self.secrets
                    .join("secrets")
                    .join(user)
                    .display()
                    .to_string(),
            ),
            ("NATS_INBOX_PREFIX", format!("_INBOX_{user}")),
        ]
    }

    /// `jetfn publish users.registered` from the host as the users' publisher, exporting its span to Phoenix. One
    /// event id for every try, so a try whose ack was lost while a stream leader moves stores nothing twice.
    fn cli_publish(&self, data: &UserRegistered) {
        let id = format!("compose-{}-{}", data.user_id, std::process::id());
        for _ in 1..5 {
            if self.try_cli_publish(data, &id).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let output = self.try_cli_publish(data, &id);
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && printed.contains("stream=EVENTS"),
            "jetfn publish failed five times:\n{printed}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The CLI as `user` against the stack's published ports, with none of this process's NATS or OpenTelemetry
    /// settings.
    fn jetfn(&self, user: &str) -> Command {
        let mut command = Command::new(binary_path("jetfn"));
        for (name, _) in std::env::vars() {
            if name.starts_with("NATS_") || name.starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        command.envs(self.nats_env(user));
        command
    }

    fn try_cli_publish(&self, data: &UserRegistered, id: &str) -> Output {
        let mut command = self.jetfn("publisher-users");
        command
            .args(["publish", "users.registered", "--id", id, "--data"])
            .arg(serde_json::to_string(data).expect("serializes"))
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", self.trace_port),
            )
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                format!("openinference.project.name={TRACE_PROJECT}"),
            );
        command.output().expect("jetfn runs (build the bins first)")
    }

    /// tests/compose/publish.py: the events through nats-py's JetStream publish, as `user`.
    fn nats_py(&self, user: &str, events: &[serde_json::Value]) {
        let file = self.secrets.join(format!("events-{user}.json"));
        std::fs::write(
            &file,
            serde_json::to_vec(events).expect("the events serialize"),
        )
        .expect("the events file is written");
        let mut command = self.command(".tools/venv/bin/python");
        command
            .args(["tests/compose/publish.py"])
            .arg(&file)
            .envs(self.nats_env(user));
        let output = run(&mut command, "nats-py publish");
        let printed = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            printed.matches("stream=EVENTS").count(),
            events.len(),
            "{printed}"
        );
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "compose: gave up waiting for {what}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn wait_http(&self, port: u16, path: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !matches!(http_get(port, path), Ok((200, _))) {
            assert!(
                Instant::now() < deadline,
                "nothing answers 200 on 127.0.0.1:{port}{path}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Recipient -> emails maildev holds for it, and every Message-ID it holds.
    fn mail(&self) -> (BTreeMap<String, usize>, Vec<String>) {
        let (status, body) = http_get(self.mail_port, "/email").expect("maildev answers");
        assert_eq!(status, 200, "{body}");
        let emails: Vec<serde_json::Value> =
            serde_json::from_str(&body).expect("maildev's /email is a JSON list");
        let mut to = BTreeMap::new();
        let mut ids = Vec::new();
        for email in &emails {
            for recipient in email["to"].as_array().into_iter().flatten() {
                let address = recipient["address"].as_str().unwrap_or_default();
                *to.entry(address.to_owned()).or_insert(0) += 1;
            }
            ids.push(email["messageId"].as_str().unwrap_or_default().to_owned());
        }
        (to, ids)
    }

    /// Fails naming the recipients still without mail and what maildev holds, so a failure says which function
    /// to look at.
    fn wait_for_mail(&self, expected: &[String]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (to, _) = self.mail();
            let missing: Vec<&String> = expected
                .iter()
                .filter(|address| !to.contains_key(*address))
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "compose: gave up waiting for mail to {missing:?} in maildev (it holds, by recipient: {to:?})\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn assert_mail_exactly(&self, expected: &[String]) {
        let (to, ids) = self.mail();
        let want: BTreeMap<String, usize> = expected
            .iter()
            .map(|address| (address.clone(), 1))
            .collect();
        assert_eq!(
            to, want,
            "each event's emails exactly once, nothing else (recipient -> emails)"
        );
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "a Message-ID twice: {ids:?}");
    }

    /// Waits for `count` traces that hold the CLI's publish span, a welcome attempt under it and an SMTP send.
    fn wait_for_traces(&self, count: usize) {
        let path = format!("/v1/projects/{TRACE_PROJECT}/spans?limit=1000");
        let mut last = String::new();
        self.wait_until("the traces in Phoenix", || {
            let Ok((200, body)) = http_get(self.trace_port, &path) else {
                return false;
            };
            let spans: serde_json::Value =
                serde_json::from_str(&body).expect("Phoenix answers JSON");
            let spans = spans["data"].as_array().cloned().unwrap_or_default();
            let named = |name: &str| {
                spans
                    .iter()
                    .filter(|span| span["name"] == name)
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let complete = named("send events.users.registered")
                .iter()
                .filter(|send| {
                    let trace = &send["context"]["trace_id"];
                    let id = &send["context"]["span_id"];
                    let attempt = spans.iter().find(|span| {
                        span["context"]["trace_id"] == *trace
                            && span["name"] == "process events.users.registered"
                            && span["parent_id"] == *id
                    });
                    let smtp = spans.iter().any(|span| {
                        span["context"]["trace_id"] == *trace && span["name"] == "smtp send"
                    });
                    attempt.is_some() && smtp
                })
                .count();
            last = format!("{complete} complete traces among {} spans", spans.len());
            complete >= count
        });
        eprintln!("compose: Phoenix: {last}");
    }

    /// What the functions printed, for tests/run.sh's scan for secrets and addresses in clear.
    fn keep_function_logs(&self) {
        let Some(dir) = std::env::var_os("JETFN_TEST_LOG_DIR") else {
            return;
        };
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("the log directory is made");
        for service in self.services() {
            let output = self
                .command("podman")
                .args(["logs", &self.container(&service)])
                .output()
                .expect("podman logs runs");
            let mut text = output.stdout;
            text.extend(output.stderr);
            std::fs::write(dir.join(format!("compose-{service}.log")), text)
                .expect("the log is written");
        }
    }

    fn services(&self) -> Vec<String> {
        let output = self.compose(&["config", "--services"]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|service| {
                !matches!(
                    *service,
                    "nats-1" | "nats-2" | "nats-3" | "mail" | "traces" | "provision"
                )
            })
            .map(str::to_owned)
            .collect()
    }

    /// The containers' states and the last lines of each, for a failure message.
    fn diagnostics(&self) -> String {
        let mut text = String::new();
        if let Ok(output) = self
            .command("podman")
            .args([
                "ps",
                "-a",
                "--filter",
                &format!("label=io.podman.compose.project={PROJECT}"),
                "--format",
                "{{.Names}} {{.Status}}",
            ])
            .output()
        {
            text.push_str(&String::from_utf8_lossy(&output.stdout));
        }
        // What each function's consumer holds: waiting, in flight or redelivered says where an email stopped.
        if let Ok(output) = self.jetfn("viewer").arg("status").output() {
            text.push_str(&format!(
                "--- jetfn status\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        for service in self.services() {
            if let Ok(output) = self
                .command("podman")
                .args(["logs", "--tail", "5", &self.container(&service)])
                .output()
            {
                text.push_str(&format!(
                    "--- {service}\n{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
        }
        text
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.secrets);
    }
}

/// Runs a command to completion; a failure panics with what it printed (the scripts name what to install).
fn run(command: &mut Command, what: &str) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{what} could not start: {err}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A GET over HTTP/1.0 (the server closes after the body, so no chunking to undo).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}
