//! A tiny fixture binary for the harness self-tests of `FunctionProcess`: prints a line on stdout
//! and on stderr, then waits for SIGTERM and exits with code 7.

use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut sigterm = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    println!("fixture started pid={}", std::process::id());
    let message = std::env::var("FIXTURE_MESSAGE").unwrap_or_default();
    eprintln!("fixture message: {message}");
    sigterm.recv().await;
    println!("fixture got SIGTERM, exiting");
    std::process::exit(7);
}
