//! The README's first command: `jetfn dev` runs the whole system on an embedded default, and Ctrl-C stops it.

use std::time::{Duration, Instant};

use testkit::{FunctionProcess, Signal, free_port, nats_server_bin};

use crate::support::WAIT;

#[tokio::test]
async fn jetfn_dev_runs_everything_writes_emails_to_files_and_stops_on_ctrl_c() {
    let home = std::env::temp_dir().join(format!("jetfn-dev-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let (port, monitor) = (free_port(), free_port());
    let infra = testkit::workspace_root().join("infra/nats");
    let home_arg = home.to_string_lossy().into_owned();
    let infra_arg = infra.to_string_lossy().into_owned();
    let (port_arg, monitor_arg) = (port.to_string(), monitor.to_string());
    let dev = FunctionProcess::spawn_with_args(
        "jetfn",
        &[
            "dev",
            "--home",
            &home_arg,
            "--infra",
            &infra_arg,
            "--port",
            &port_arg,
            "--monitor-port",
            &monitor_arg,
            "--no-health",
        ],
        &[
            (
                "NATS_SERVER_BIN",
                nats_server_bin().to_string_lossy().into_owned(),
            ),
            ("SMTP_URL", String::new()),
        ],
    );
    dev.wait_for_output("jetfn is running", WAIT).await;
    // Every function and the router log "serving" once bound to its consumer.
    let deadline = Instant::now() + WAIT;
    while dev.output().matches("serving").count() < 8 {
        assert!(
            Instant::now() < deadline,
            "not every function is serving:\n{}",
            dev.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let url = format!("nats://127.0.0.1:{port}");
    let publish = FunctionProcess::spawn_with_args(
        "jetfn",
        &[
            "publish",
            "users.registered",
            "--data",
            r#"{"user_id":"u1","email":"dev@example.com","name":"Dev"}"#,
        ],
        &[("NATS_URL", url.clone())],
    );
    assert_eq!(
        publish.wait_exit(WAIT).await.code(),
        Some(0),
        "{}",
        publish.output()
    );

    let mail = home.join("mail");
    let deadline = Instant::now() + WAIT;
    let eml = loop {
        let files: Vec<_> = std::fs::read_dir(&mail)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|entry| entry.path())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(file) = files
            .into_iter()
            .find(|path| path.extension().is_some_and(|ext| ext == "eml"))
        {
            break file;
        }
        assert!(
            Instant::now() < deadline,
            "no .eml in {}:\n{}",
            mail.display(),
            dev.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = std::fs::read_to_string(&eml).unwrap();
    assert!(
        text.contains("To: \"Dev\" <dev@example.com>") || text.contains("dev@example.com"),
        "{text}"
    );

    dev.signal(Signal::SIGINT);
    let status = dev.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{}", dev.output());
    let output = dev.output();
    assert!(
        output.contains("welcome stopped (exit status: 0)")
            && output.contains("nats-server stopped"),
        "{output}"
    );
    let _ = std::fs::remove_dir_all(&home);
}
