//! Secured NATS, the way production runs it: a TLS-only nats-server with certificates this test makes, mutual TLS,
//! user/password and token auth, and a nats CLI context. A real function (welcome) and the real `jetfn` CLI connect
//! through the one options builder (`runtime::connect_options`) with the same `NATS_*` variables, and what they
//! print never holds a password, a token or an email address in clear. And secured SMTP: welcome sending over
//! STARTTLS to a relay whose certificate a private CA signed (`SMTP_TLS_CA_FILE`).

use std::process::{Command, Output};
use std::sync::Mutex;

use async_nats::ConnectOptions;
use integration_tests::scan;
use testkit::{FunctionProcess, NatsServer, SmtpServer, SmtpTls, TestCertificates, binary_path};

use crate::support::{System, TempDir, WAIT};

const APP_PASSWORD: &str = "S3cret-App-Pw";
const ADMIN_PASSWORD: &str = "S3cret-Admin-Pw";
const TOKEN: &str = "T0ken-7f3a9c1e";
const SMTP_PASSWORD: &str = "Smtp-Pw-5b8d";

/// Every line the functions and the CLI printed in these tests, for [`assert_no_secret`].
static PRINTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn keep(who: &str, text: &str) {
    PRINTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(format!("[{who}]\n{text}"));
    assert_no_secret(who, text);
}

/// Fails on a secret of these tests, a URL's password, or an email address in clear.
fn assert_no_secret(who: &str, text: &str) {
    for secret in [APP_PASSWORD, ADMIN_PASSWORD, TOKEN, SMTP_PASSWORD] {
        assert!(
            scan::TEST_SECRETS.contains(&secret),
            "add {secret} to scan::TEST_SECRETS, so the whole suite's scan looks for it too"
        );
    }
    if let Some(found) = scan::find(text, scan::TEST_SECRETS) {
        panic!("{who} printed {found}:\n{text}");
    }
}

/// Runs the `jetfn` CLI with only `envs` for its NATS settings (none inherited), keeping what it printed.
fn jetfn(args: &[&str], envs: &[(&str, String)]) -> Output {
    let path = binary_path("jetfn");
    let mut command = Command::new(&path);
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("NATS_") {
            command.env_remove(name);
        }
    }
    for (name, value) in envs {
        command.env(name, value);
    }
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("running {}: {err} (build the bins first)", path.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    keep(&format!("jetfn {}", args.join(" ")), &text);
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_ok(output: &Output, what: &str) {
    assert!(output.status.success(), "{what} failed: {output:?}");
}

fn assert_refused(output: &Output, what: &str, expected: &[&str]) {
    assert!(
        !output.status.success(),
        "{what} was not refused: {output:?}"
    );
    let err = stderr(output);
    assert!(
        expected.iter().any(|needle| err.contains(needle)),
        "{what}: the error says none of {expected:?}:\n{err}"
    );
}

/// Publishes one welcome event through the CLI and waits for its email.
async fn publish_and_wait(system: &System, envs: &[(&str, String)], emails: usize) {
    let output = jetfn(&["publish", "users.registered", "--example"], envs);
    assert_ok(&output, "jetfn publish");
    system.smtp.wait_for_messages(emails, WAIT).await;
}

fn stop(process: &FunctionProcess, who: &str) {
    process.sigterm();
    process.wait_exit_blocking(WAIT);
    keep(who, &process.output());
}

fn tls_admin(certs: &TestCertificates) -> ConnectOptions {
    ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(certs.ca())
        .add_client_certificate(certs.client_cert(), certs.client_key())
}

#[tokio::test]
async fn functions_and_the_cli_verify_a_tls_server_against_its_ca() {
    let certs = TestCertificates::generate();
    let server = NatsServer::builder().tls(&certs, false).start();
    let system = System::start_on(server, tls_admin(&certs), |_| {}).await;
    let trusted = vec![
        ("NATS_URL", system.nats.url()),
        ("NATS_TLS_CA_FILE", certs.ca().display().to_string()),
    ];

    let welcome = system.spawn("welcome", &trusted[1..]).await;
    publish_and_wait(&system, &trusted, 1).await;
    assert_ok(&jetfn(&["status"], &trusted), "jetfn status over TLS");
    stop(&welcome, "welcome over TLS");

    // A CA that did not sign the server's certificate, or none (the system's roots): refused, saying why.
    let wrong = vec![
        ("NATS_URL", system.nats.url()),
        ("NATS_TLS_CA_FILE", certs.other_ca().display().to_string()),
    ];
    let why = ["is not signed by the CA of NATS_TLS_CA_FILE"];
    assert_refused(&jetfn(&["status"], &wrong), "a wrong CA", &why);
    assert_refused(
        &jetfn(&["status"], &[("NATS_URL", system.nats.url())]),
        "no CA",
        &why,
    );
    let mut env = system.env();
    env.extend(wrong[1..].iter().cloned());
    let unverified = FunctionProcess::spawn("welcome", &env);
    let text = unverified.wait_for_output("certificate", WAIT).await;
    assert!(
        !text.contains("serving"),
        "welcome served unverified:\n{text}"
    );
    stop(&unverified, "welcome with a wrong CA");
}

#[tokio::test]
async fn mutual_tls_takes_a_client_certificate_and_refuses_a_client_without_one() {
    let certs = TestCertificates::generate();
    let server = NatsServer::builder().tls(&certs, true).start();
    let system = System::start_on(server, tls_admin(&certs), |_| {}).await;
    let mutual = vec![
        ("NATS_URL", system.nats.url()),
        ("NATS_TLS_CA_FILE", certs.ca().display().to_string()),
        (
            "NATS_TLS_CERT_FILE",
            certs.client_cert().display().to_string(),
        ),
        (
            "NATS_TLS_KEY_FILE",
            certs.client_key().display().to_string(),
        ),
    ];
    let welcome = system.spawn("welcome", &mutual[1..]).await;
    publish_and_wait(&system, &mutual, 1).await;
    assert_ok(
        &jetfn(&["status"], &mutual),
        "jetfn status with a client certificate",
    );
    stop(&welcome, "welcome with mutual TLS");

    let without = &mutual[..2];
    assert_refused(
        &jetfn(&["status"], without),
        "no client certificate",
        // Under TLS 1.3 the client's side of the handshake ends before the server checks the certificate: the
        // client reads the server's alert, or (under load) only a reset connection, and the hint fits both.
        &[
            "the server wants a client certificate: set NATS_TLS_CERT_FILE",
            "if it verifies clients, set NATS_TLS_CERT_FILE",
        ],
    );
    // The server writes its line after it sends the alert; the client can exit before the line is read.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let log = system.nats.log();
        if log.contains("client didn't provide a certificate")
            || log.contains("TLS handshake error")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not say why: {log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn user_password_from_variables_a_file_the_url_or_a_context() {
    let server = NatsServer::start_with(&format!(
        "authorization {{ users = [ {{user: admin, password: \"{ADMIN_PASSWORD}\"}}, \
         {{user: app, password: \"{APP_PASSWORD}\"}} ] }}"
    ));
    let system = System::start_on(
        server,
        ConnectOptions::with_user_and_password("admin".into(), ADMIN_PASSWORD.into()),
        |_| {},
    )
    .await;
    let dir = TempDir::new("auth");
    let password_file = dir.0.join("password");
    std::fs::write(&password_file, format!("{APP_PASSWORD}\n")).unwrap();
    let url = system.nats.url();
    let in_url = url.replacen("nats://", &format!("nats://app:{APP_PASSWORD}@"), 1);

    // A function: the password from a mounted file; another with it in NATS_URL.
    let from_file = system
        .spawn(
            "welcome",
            &[
                ("NATS_USER", "app".to_owned()),
                ("NATS_PASSWORD_FILE", password_file.display().to_string()),
            ],
        )
        .await;
    let from_url = system
        .spawn("welcome", &[("NATS_URL", in_url.clone())])
        .await;

    // The CLI: variables, the URL's user info, and a nats context selected by name.
    let variables = vec![
        ("NATS_URL", url.clone()),
        ("NATS_USER", "app".to_owned()),
        ("NATS_PASSWORD", APP_PASSWORD.to_owned()),
    ];
    publish_and_wait(&system, &variables, 1).await;
    publish_and_wait(&system, &[("NATS_URL", in_url.clone())], 2).await;
    let contexts = dir.0.join("nats/context");
    std::fs::create_dir_all(&contexts).unwrap();
    std::fs::write(
        contexts.join("secured.json"),
        serde_json::json!({
            "description": "", "url": url, "user": "app", "password": APP_PASSWORD,
            "token": "", "creds": "", "nkey": "", "cert": "", "key": "", "ca": "", "nsc": "",
        })
        .to_string(),
    )
    .unwrap();
    let home = [("XDG_CONFIG_HOME", dir.path())];
    assert_ok(
        &jetfn(&["--context", "secured", "status"], &home),
        "jetfn --context secured status",
    );
    let by_variable = [home[0].clone(), ("NATS_CONTEXT", "secured".to_owned())];
    publish_and_wait(&system, &by_variable, 3).await;

    // A wrong password is refused, and the error shows neither password.
    let wrong = [
        ("NATS_URL", url.clone()),
        ("NATS_USER", "app".to_owned()),
        ("NATS_PASSWORD", "not-the-password".to_owned()),
    ];
    let output = jetfn(&["status"], &wrong);
    assert_refused(
        &output,
        "a wrong password",
        &["the server refused the credentials"],
    );
    assert!(!stderr(&output).contains("not-the-password"), "{output:?}");
    // Half a pair names what is missing.
    let output = jetfn(
        &["status"],
        &[("NATS_URL", url.clone()), ("NATS_USER", "app".to_owned())],
    );
    assert_refused(
        &output,
        "a user without a password",
        &["NATS_USER: is set without NATS_PASSWORD"],
    );

    stop(&from_file, "welcome with NATS_PASSWORD_FILE");
    stop(&from_url, "welcome with user info in NATS_URL");
}

#[tokio::test]
async fn token_auth_for_a_function_and_the_cli() {
    let server = NatsServer::start_with(&format!("authorization {{ token: \"{TOKEN}\" }}"));
    let system = System::start_on(server, ConnectOptions::with_token(TOKEN.into()), |_| {}).await;
    let dir = TempDir::new("token");
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let welcome = system
        .spawn(
            "welcome",
            &[("NATS_TOKEN_FILE", token_file.display().to_string())],
        )
        .await;
    let token = vec![
        ("NATS_URL", system.nats.url()),
        ("NATS_TOKEN", TOKEN.to_owned()),
    ];
    publish_and_wait(&system, &token, 1).await;
    assert_ok(&jetfn(&["status"], &token), "jetfn status with a token");
    let both = [
        token[0].clone(),
        token[1].clone(),
        ("NATS_TOKEN_FILE", token_file.display().to_string()),
    ];
    assert_refused(
        &jetfn(&["status"], &both),
        "a token given twice",
        &["NATS_TOKEN: is set and so is NATS_TOKEN_FILE; set only one"],
    );
    assert_refused(
        &jetfn(&["status"], &[("NATS_URL", system.nats.url())]),
        "no token",
        &["authorization violation"],
    );
    stop(&welcome, "welcome with NATS_TOKEN_FILE");
}

#[tokio::test]
async fn an_nkey_seed_file_for_a_function_and_the_cli() {
    let user = nkeys::KeyPair::new_user();
    let admin = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with(&format!(
        "authorization {{ users = [ {{nkey: {}}}, {{nkey: {}}} ] }}",
        user.public_key(),
        admin.public_key()
    ));
    let admin_seed = admin.seed().expect("a seed");
    let system = System::start_on(server, ConnectOptions::with_nkey(admin_seed), |_| {}).await;
    let dir = TempDir::new("nkey");
    let seed_file = dir.0.join("user.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().expect("a seed"))).unwrap();
    let nkey = vec![
        ("NATS_URL", system.nats.url()),
        ("NATS_NKEY_FILE", seed_file.display().to_string()),
    ];
    let welcome = system.spawn("welcome", &nkey[1..]).await;
    publish_and_wait(&system, &nkey, 1).await;
    stop(&welcome, "welcome with NATS_NKEY_FILE");
    let not_a_seed = dir.0.join("empty.nk");
    std::fs::write(&not_a_seed, "no seed here\n").unwrap();
    assert_refused(
        &jetfn(
            &["status"],
            &[
                ("NATS_URL", system.nats.url()),
                ("NATS_NKEY_FILE", not_a_seed.display().to_string()),
            ],
        ),
        "a file without a seed",
        &["holds no user nkey seed (a line starting with SU)"],
    );
}

/// An email function with a password in `SMTP_URL` and in `NATS_URL`: what it prints while sending, when its
/// settings are wrong, and its `--help` hold neither password nor the recipient's address in clear.
#[tokio::test]
async fn an_email_function_prints_no_password_and_no_address() {
    let server = NatsServer::start_with(&format!(
        "authorization {{ users = [ {{user: admin, password: \"{ADMIN_PASSWORD}\"}}, \
         {{user: app, password: \"{APP_PASSWORD}\"}} ] }}"
    ));
    let system = System::start_on(
        server,
        ConnectOptions::with_user_and_password("admin".into(), ADMIN_PASSWORD.into()),
        |_| {},
    )
    .await;
    let nats_url = system
        .nats
        .url()
        .replacen("nats://", &format!("nats://app:{APP_PASSWORD}@"), 1);
    let smtp_url =
        system
            .smtp
            .url()
            .replacen("smtp://", &format!("smtp://mailer:{SMTP_PASSWORD}@"), 1);
    let env = [
        ("NATS_URL", nats_url.clone()),
        ("SMTP_URL", smtp_url.clone()),
    ];
    let welcome = system.spawn("welcome", &env).await;
    system
        .publisher
        .publish(crate::support::user("grace.hopper@example.com", "Grace"))
        .await
        .expect("publish");
    system.smtp.wait_for_messages(1, WAIT).await;
    system.wait_settled("welcome").await;
    stop(&welcome, "welcome sending through SMTP with a password");

    // Settings that do not work: the errors name the variable, not the secret.
    let bad_smtp = smtp_url.replacen("127.0.0.1:", "127.0.0.1:port", 1);
    let broken = FunctionProcess::spawn(
        "welcome",
        &[("NATS_URL", nats_url.clone()), ("SMTP_URL", bad_smtp)],
    );
    let status = broken.wait_exit_blocking(WAIT);
    assert!(!status.success(), "a bad SMTP_URL was accepted");
    keep("welcome with an unusable SMTP_URL", &broken.output());
    let bad_nats = nats_url.replacen("127.0.0.1:", "127.0.0.1:port", 1);
    let broken = FunctionProcess::spawn("welcome", &[("NATS_URL", bad_nats)]);
    broken.wait_exit_blocking(WAIT);
    keep("welcome with an unusable NATS_URL", &broken.output());
    let help = FunctionProcess::spawn_with_args("welcome", &["--help"], &env);
    help.wait_exit_blocking(WAIT);
    let text = help.output();
    assert!(text.contains("SMTP_URL_FILE"), "{text}");
    keep("welcome --help", &text);

    let printed = PRINTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .join("\n");
    assert!(
        printed.contains("gr***@example.com") || printed.contains("***@example.com"),
        "the masked recipient is not in the log, so this test checks nothing:\n{printed}"
    );
}

/// welcome sends through a relay whose certificate a private CA signed: with that CA in `SMTP_TLS_CA_FILE` over
/// STARTTLS, authenticating only once encrypted; with another CA the event is retried and nothing is sent; and a
/// file that holds no certificate stops it at start-up, naming the variable.
#[tokio::test]
async fn an_email_function_sends_over_starttls_to_a_relay_with_a_private_ca() {
    let certs = TestCertificates::generate();
    let system = System::start().await;
    let relay = SmtpServer::start_tls(SmtpTls::StartTls, &certs.server_cert(), &certs.server_key());
    let smtp_url = relay
        .url()
        .replacen("smtp://", &format!("smtp://mailer:{SMTP_PASSWORD}@"), 1);
    assert!(smtp_url.ends_with("?tls=required"), "{smtp_url}");
    let with_ca = |ca: std::path::PathBuf| {
        [
            ("SMTP_URL", smtp_url.clone()),
            ("SMTP_TLS_CA_FILE", ca.display().to_string()),
        ]
    };

    let welcome = system.spawn("welcome", &with_ca(certs.ca())).await;
    system
        .publisher
        .publish(crate::support::user("ada.lovelace@example.com", "Ada"))
        .await
        .expect("publish");
    let mail = &relay.wait_for_messages(1, WAIT).await[0];
    assert!(mail.tls, "the email came over TLS");
    assert_eq!(mail.rcpt_to, ["ada.lovelace@example.com"]);
    let in_clear: Vec<String> = relay
        .commands()
        .into_iter()
        .filter(|command| !command.tls)
        .map(|command| command.verb)
        .collect();
    assert!(
        in_clear
            .iter()
            .all(|verb| verb == "EHLO" || verb == "STARTTLS"),
        "sent in clear: {in_clear:?}"
    );
    assert!(
        relay.commands().iter().any(|c| c.verb == "AUTH" && c.tls),
        "authenticated over TLS"
    );
    let info = system.wait_settled("welcome").await;
    assert_eq!(
        info.delivered.consumer_sequence, 1,
        "one delivery, no retry"
    );
    assert!(system.dlq().await.is_empty());
    stop(&welcome, "welcome over SMTP STARTTLS with a private CA");

    // Another CA: the handshake fails, the attempt is transient and retried, and nothing goes out.
    let untrusting = system.spawn("welcome", &with_ca(certs.other_ca())).await;
    system
        .publisher
        .publish(crate::support::user("grace.hopper@example.com", "Grace"))
        .await
        .expect("publish");
    let deadline = std::time::Instant::now() + WAIT;
    while system
        .consumer_info("EVENTS", "welcome")
        .await
        .delivered
        .consumer_sequence
        < 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the event was not retried"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(relay.tls_failures() >= 2, "{}", relay.tls_failures());
    assert_eq!(
        relay.count(),
        1,
        "nothing sent with an untrusted certificate"
    );
    assert!(
        system.dlq().await.is_empty(),
        "not dead-lettered at the first attempt"
    );
    stop(&untrusting, "welcome with another CA in SMTP_TLS_CA_FILE");

    // A file with no certificate in it: the function does not start, and says which variable and why.
    let mut env = system.env();
    env.extend(with_ca(certs.server_key()));
    let broken = FunctionProcess::spawn("welcome", &env);
    let status = broken.wait_exit_blocking(WAIT);
    let text = broken.output();
    assert!(
        !status.success(),
        "an unusable SMTP_TLS_CA_FILE was accepted:\n{text}"
    );
    assert!(
        text.contains("SMTP_TLS_CA_FILE") && text.contains("holds no PEM certificate"),
        "{text}"
    );
    assert!(!text.contains("serving"), "{text}");
    keep("welcome with an unusable SMTP_TLS_CA_FILE", &text);
}

#[test]
fn the_secret_scan_tells_masked_from_clear() {
    assert_eq!(scan::clear_email("to gr***@example.com sent"), None);
    assert_eq!(
        scan::clear_email("to=\"grace@example.com\""),
        Some("grace@example.com".to_owned())
    );
    assert_eq!(scan::clear_email("at user@localhost only"), None);
    assert_eq!(
        scan::clear_email("From: jetfn <no-reply@jetfn.local>"),
        None
    );
    assert_eq!(
        scan::url_password("url=nats://app:***@127.0.0.1:4222"),
        None
    );
    assert_eq!(scan::url_password("url=nats://127.0.0.1:4222"), None);
    assert_eq!(
        scan::url_password("url=smtp://mailer:pw@127.0.0.1:25 x"),
        Some("mailer:***@127.0.0.1:25".to_owned())
    );
    assert!(scan::find("nats://app:pw@host", &[]).is_some());
    // A code of digits counts as a whole number, never inside a timestamp's fraction or a longer number.
    let code = &["804913"];
    assert!(scan::find("2026-11-30T19:04:13.804913Z DEBUG published seq=1338", code).is_none());
    assert!(scan::find("sequence=18049130 took 0.804913s", code).is_none());
    for leak in [
        "code=804913",
        r#"{"code":"804913"}"#,
        "your code is 804913.",
        "804913",
    ] {
        assert!(scan::find(leak, code).is_some(), "{leak}");
    }
    assert!(scan::find("token=T0ken-7f3a9c1e2", &["T0ken-7f3a9c1e"]).is_some());
    assert!(scan::find("pass=hunter2", scan::TEST_SECRETS).is_some());
    assert_eq!(scan::find("to=ad***@example.com", scan::TEST_SECRETS), None);
}
