#!/usr/bin/env bash
# Runs every check and every test, the way CI does: formatting, clippy, unit tests and the integration tests
# against a real nats-server 2.15, a real SMTP server and a real OTLP receiver (shared/testkit; the last two run
# inside the test binary; the first is installed by infra/install-nats-server.sh if missing).
#
#   bash tests/run.sh            everything
#   bash tests/run.sh welcome    only integration tests whose name contains "welcome"
set -euo pipefail
cd "$(dirname "$0")/.."

bash infra/install-nats-server.sh

if [ "$#" -gt 0 ]; then
  cargo build --workspace --bins
  exec cargo test -p integration-tests --test it -- "$@"
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> building the binaries the integration tests run"
cargo build --workspace --bins
echo "==> unit tests and doc tests"
cargo test --workspace --exclude integration-tests
echo "==> integration tests (real nats-server, SMTP server, OTLP receiver, function binaries)"
cargo test -p integration-tests --test it
