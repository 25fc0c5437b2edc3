//! The container images (`infra/images.sh`, `infra/deploy/Containerfile`) run with podman as an operator runs
//! them: the welcome image handles a published event into the SMTP server, logs JSON and answers its probes; every
//! image runs as nobody and has no shell; an email function's image stays small; the CLI image provisions a
//! server with the definitions it carries; the nats-server image serves JetStream; the indexing image serves with
//! its index in its volume.
//!
//! The containers share the host's network, so they reach the test's nats-server and SMTP server on 127.0.0.1.
//! The images are built beforehand (`bash infra/images.sh`, which `tests/run.sh` runs): a missing image fails the
//! test saying so.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use testkit::{NatsServer, free_port};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{System, WAIT, assert_no_address, user};

/// An email function's image may weigh this much at most (issue 10).
const EMAIL_IMAGE_MAX_BYTES: u64 = 25 * 1024 * 1024;
/// The unprivileged user every image runs as (`nobody`), as the Kubernetes manifests expect.
const NOBODY: &str = "65534:65534";
/// The nats-server image's tag: the version infra/install-nats-server.sh pins.
const NATS_SERVER_TAG: &str = "2.15.1";

/// The repository this test was compiled from (the test kit's `workspace_root` is where the kit was compiled).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tag() -> String {
    std::env::var("JETFN_IMAGE_TAG").unwrap_or_else(|_| "dev".to_owned())
}

/// Every binary with an image: the function crates, then the CLI.
fn binaries() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("functions"))
        .expect("read functions/")
        .map(|entry| entry.expect("a functions/ entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.push("jetfn".to_owned());
    names
}

/// The functions that send email, as infra/deploy/kubernetes.json marks them (`"mail": true`).
fn email_functions() -> Vec<String> {
    let path = root().join("infra/deploy/kubernetes.json");
    let settings: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read kubernetes.json"))
            .expect("kubernetes.json is JSON");
    let functions = settings["functions"].as_object().expect("functions");
    let mail: Vec<String> = functions
        .iter()
        .filter(|(_, own)| own["mail"] == true)
        .map(|(name, _)| name.clone())
        .collect();
    assert!(mail.contains(&"welcome".to_owned()), "{mail:?}");
    mail
}

/// `podman` with the project's configuration (infra/containers/containers.conf), as every project script runs it.
fn podman() -> Command {
    let mut command = Command::new("podman");
    command.env(
        "CONTAINERS_CONF",
        root().join("infra/containers/containers.conf"),
    );
    command
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| {
        panic!("{command:?}: {e} (is podman installed? bash infra/install-podman.sh)")
    })
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The image's reference, after checking it was built.
fn image(name: &str, tag: &str) -> String {
    let reference = format!("jetfn/{name}:{tag}");
    let exists = run(podman().args(["image", "exists", &reference]));
    assert!(
        exists.status.success(),
        "image {reference} is missing: build the images with `bash infra/images.sh` \
         (tests/run.sh does it before the integration tests) {}",
        text(&exists)
    );
    reference
}

/// One field of `podman image inspect`, a Go template such as `{{.Config.User}}`.
fn inspect(reference: &str, format: &str) -> String {
    let output = run(podman().args(["image", "inspect", "--format", format, reference]));
    assert!(
        output.status.success(),
        "inspect {reference}: {}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A detached container, removed (with its anonymous volumes) on drop; its output then goes to the suite's log
/// directory like a function process's, so the secret scan sees it too.
struct Container {
    name: String,
    label: String,
}

impl Container {
    fn start(label: &str, reference: &str, env: &[(&str, String)], args: &[&str]) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("jetfn-it-{label}-{}-{nanos}", std::process::id());
        let mut command = podman();
        command.args(["run", "--detach", "--network", "host", "--name", &name]);
        for (key, value) in env {
            command.arg("--env").arg(format!("{key}={value}"));
        }
        command.arg(reference).args(args);
        let output = run(&mut command);
        assert!(
            output.status.success(),
            "podman run {reference}: {}",
            text(&output)
        );
        Self {
            name,
            label: label.to_owned(),
        }
    }

    fn logs(&self) -> String {
        text(&run(podman().args(["logs", &self.name])))
    }

    async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "container {} did not log {needle:?} within {WAIT:?}:\n{logs}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The container's main process, as the host sees it.
    fn pid(&self) -> u32 {
        let output = run(podman().args(["inspect", "--format", "{{.State.Pid}}", &self.name]));
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the pid of {}: {}", self.name, text(&output)))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(dir) = std::env::var_os(testkit::LOG_DIR_VAR) {
            let dir = PathBuf::from(dir);
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(
                dir.join(format!("image-{}-{}.log", self.label, self.name)),
                self.logs(),
            );
        }
        let _ = podman()
            .args(["rm", "--force", "--volumes", &self.name])
            .output();
    }
}

/// The status line of a plain HTTP/1.0 GET.
async fn http_status(port: u16, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connect to the health port {port}: {e}"));
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn images_welcome_sends_a_published_event_logs_json_and_answers_its_probes() {
    let reference = image("welcome", &tag());
    let system = System::start().await;
    let health = free_port();
    // The test's environment less its text-log and debug settings: the image's own LOG_FORMAT is what is tested.
    let mut env: Vec<(&str, String)> = system
        .env()
        .into_iter()
        .filter(|(key, _)| *key != "RUST_LOG")
        .collect();
    // The host's network is shared: a free port instead of the image's 8080 (checked below from its config).
    env.push(("JOB_HEALTH_ADDR", format!("0.0.0.0:{health}")));
    let container = Container::start("welcome", &reference, &env, &[]);
    container.wait_for_log("serving").await;

    system
        .publisher
        .publish(user("ada.lovelace@example.com", "Ada"))
        .await
        .expect("a valid event publishes");
    let mails = system.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(
        mails[0].rcpt_to,
        vec!["ada.lovelace@example.com".to_owned()]
    );
    let info = system.wait_settled("welcome").await;
    assert_eq!(
        info.delivered.consumer_sequence, 1,
        "one delivery, no retry"
    );

    assert_eq!(http_status(health, "/livez").await, "HTTP/1.1 200 OK");
    assert_eq!(http_status(health, "/readyz").await, "HTTP/1.1 200 OK");

    // Its main process runs as nobody, not merely configured to.
    let status = std::fs::read_to_string(format!("/proc/{}/status", container.pid()))
        .expect("the container's process status");
    let uid = status
        .lines()
        .find(|line| line.starts_with("Uid:"))
        .expect("a Uid line");
    assert_eq!(
        uid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65534"; 4],
        "{uid}"
    );

    let logs = container.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert!(lines.len() >= 2, "{logs}");
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}\n{logs}"));
        assert!(
            value["level"].is_string() && value["timestamp"].is_string(),
            "a JSON log line without level or timestamp: {line}"
        );
    }
    assert_no_address(&logs, "ada.lovelace@example.com");
}

/// Every function binary the images carry was linked with the code start-up and an attempt run placed first and its
/// relative relocations packed (`infra/link/ordered_link.py`), by a list that still names what the binary holds: at
/// least 90% of the names it held when the list was recorded (the list's `# matched` lines). A stale list (after a
/// dependency, toolchain or start-up change) still builds, but an idle function would keep about twice the memory
/// (`tests/bench/ANALYSIS.md`, section 26): record it again.
#[test]
fn images_function_binaries_are_linked_with_their_hot_code_first() {
    let list = std::fs::read_to_string(root().join("infra/link/hot-functions.txt"))
        .expect("read the list");
    let recorded = |name: &str| -> u64 {
        list.lines()
            .find_map(|line| line.strip_prefix(&format!("# matched {name} ")))
            .unwrap_or_else(|| {
                panic!("infra/link/hot-functions.txt has no `# matched {name}` line: record it again with `bash infra/link/record.sh`")
            })
            .parse()
            .expect("a count")
    };
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let deps = target.join("image-build/image/deps");
    for name in binaries().into_iter().filter(|name| name != "jetfn") {
        let prefix = format!("{}-", name.replace('-', "_"));
        let newest = std::fs::read_dir(&deps)
            .unwrap_or_else(|e| panic!("{}: {e} (build the images: bash infra/images.sh)", deps.display()))
            .map(|entry| entry.expect("a deps entry").path())
            .filter(|path| {
                path.file_name()
                    .and_then(|file| file.to_str())
                    .is_some_and(|file| file.starts_with(&prefix) && file.ends_with(".link-order-stats"))
            })
            .max_by_key(|path| path.metadata().and_then(|meta| meta.modified()).ok())
            .unwrap_or_else(|| {
                panic!(
                    "{name}: no {prefix}*.link-order-stats in {}: the image build did not link it through \
                     infra/link/cc (.cargo/config.toml) with infra/link/build.rs",
                    deps.display()
                )
            });
        let stats = std::fs::read_to_string(&newest).expect("read the link statistics");
        let words: Vec<&str> = stats.split_whitespace().collect();
        let found: u64 = words
            .iter()
            .position(|word| *word == "found")
            .and_then(|at| words.get(at + 1))
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no count in {}: {stats}", newest.display()));
        assert!(
            stats.contains("relr True"),
            "{name}: relocations not packed: {stats}"
        );
        let held = recorded(&name);
        assert!(
            found * 10 >= held * 9,
            "{name}: {found} of the names in infra/link/hot-functions.txt are in the binary, against {held} when \
             the list was recorded: the list is stale; record it again with `bash infra/link/record.sh`"
        );
    }
}

#[tokio::test]
async fn images_run_as_nobody_without_a_shell_and_email_images_are_small() {
    let tag = tag();
    let mail = email_functions();
    let mut sizes = Vec::new();
    for name in binaries() {
        let reference = image(&name, &tag);
        assert_eq!(
            inspect(&reference, "{{.Config.User}}"),
            NOBODY,
            "{reference}"
        );
        let env = inspect(&reference, "{{range .Config.Env}}{{.}} {{end}}");
        assert!(env.contains("LOG_FORMAT=json"), "{reference}: {env}");
        if name != "jetfn" {
            let ports = inspect(
                &reference,
                "{{range $port, $_ := .Config.ExposedPorts}}{{$port}} {{end}}",
            );
            assert_eq!(ports, "8080/tcp", "{reference}");
            assert!(
                env.contains("_HEALTH_ADDR=0.0.0.0:8080"),
                "{reference}: {env}"
            );
        }
        // No shell to start: the entrypoint override fails because /bin/sh does not exist.
        let shell = run(podman().args([
            "run",
            "--rm",
            "--entrypoint",
            "/bin/sh",
            &reference,
            "-c",
            "true",
        ]));
        assert!(
            !shell.status.success(),
            "{reference} ran /bin/sh: {}",
            text(&shell)
        );
        assert!(
            text(&shell).contains("no such file"),
            "{reference}: {}",
            text(&shell)
        );
        let bytes: u64 = inspect(&reference, "{{.Size}}").parse().expect("a size");
        sizes.push((reference.clone(), bytes));
        if mail.contains(&name) {
            assert!(
                bytes <= EMAIL_IMAGE_MAX_BYTES,
                "{reference} weighs {bytes} bytes, more than 25 MiB"
            );
        }
    }
    eprintln!("image sizes: {sizes:?}");

    // Indexing keeps its index in the declared volume; the CLI carries the definitions it applies.
    let indexing = image("indexing", &tag);
    assert!(inspect(&indexing, "{{.Config.Volumes}}").contains("/data"));
    assert!(inspect(&indexing, "{{range .Config.Env}}{{.}} {{end}}").contains("INDEX_DIR=/data"));

    // The whole filesystem of an image: the binary, its libraries and loader, a few files under /etc; no other
    // program.
    let welcome = image("welcome", &tag);
    let created = run(podman().args(["create", &welcome]));
    assert!(created.status.success(), "{}", text(&created));
    let id = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let tar = std::env::temp_dir().join(format!("jetfn-it-image-{}.tar", std::process::id()));
    let exported = run(podman().args(["export", "--output"]).arg(&tar).arg(&id));
    let _ = podman().args(["rm", "--force", "--volumes", &id]).output();
    assert!(exported.status.success(), "{}", text(&exported));
    let listing = run(Command::new("tar").arg("-tf").arg(&tar));
    let _ = std::fs::remove_file(&tar);
    let files: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|path| !path.ends_with('/'))
        .map(|path| path.trim_start_matches("./").to_owned())
        .collect();
    let programs: Vec<&String> = files
        .iter()
        .filter(|path| {
            let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
            dir.ends_with("bin") || dir.ends_with("sbin")
        })
        .collect();
    assert_eq!(programs, ["usr/local/bin/welcome"], "{files:?}");
    assert!(
        files.contains(&"etc/ssl/certs/ca-certificates.crt".to_owned()),
        "no CA bundle: {files:?}"
    );
}

#[tokio::test]
async fn images_cli_applies_its_definitions_and_nats_server_and_indexing_serve() {
    let jetfn = image("jetfn", &tag());
    let nats = image("nats-server", NATS_SERVER_TAG);

    // The nats-server image, on a free port, as the compose cluster runs it.
    let port = free_port();
    let server = Container::start(
        "nats-server",
        &nats,
        &[],
        &[
            "--jetstream",
            "--store_dir",
            "/data",
            "--port",
            &port.to_string(),
        ],
    );
    server.wait_for_log("Server is ready").await;
    assert_eq!(inspect(&nats, "{{.Config.User}}"), NOBODY);

    // The provisioning job's command, against the test kit's server and against the image's.
    let testkit_server = NatsServer::start();
    for url in [testkit_server.url(), format!("nats://127.0.0.1:{port}")] {
        let output = run(podman().args([
            "run",
            "--rm",
            "--network",
            "host",
            "--env",
            &format!("NATS_URL={url}"),
            &jetfn,
            "infra",
            "apply",
        ]));
        assert!(
            output.status.success(),
            "jetfn infra apply against {url}: {}",
            text(&output)
        );
        let client = async_nats::connect(&url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        for stream in ["EVENTS", "DLQ"] {
            js.get_stream(stream)
                .await
                .unwrap_or_else(|e| panic!("stream {stream} after apply on {url}: {e}"));
        }
        let events = js.get_stream("EVENTS").await.unwrap();
        events
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("welcome")
            .await
            .unwrap_or_else(|e| panic!("the welcome consumer after apply on {url}: {e}"));
        js.get_key_value("jetfn-ledger")
            .await
            .unwrap_or_else(|e| panic!("the ledger bucket after apply on {url}: {e}"));
    }

    // Indexing, the one image that writes: its index goes into the declared volume, as nobody.
    let health = free_port();
    let indexing = Container::start(
        "indexing",
        &image("indexing", &tag()),
        &[
            ("NATS_URL", format!("nats://127.0.0.1:{port}")),
            ("JOB_HEALTH_ADDR", format!("0.0.0.0:{health}")),
        ],
        &[],
    );
    indexing.wait_for_log("serving").await;
    let deadline = Instant::now() + WAIT;
    while http_status(health, "/readyz").await != "HTTP/1.1 200 OK" {
        assert!(
            Instant::now() < deadline,
            "indexing never ready:\n{}",
            indexing.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
