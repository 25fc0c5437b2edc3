#!/usr/bin/env bash
# The compose test's Python client: nats-py (PyPI, pinned) into .tools/venv, once.
set -euo pipefail
cd "$(dirname "$0")/../.."
NATS_PY_VERSION=2.16.0
if ! .tools/venv/bin/python -c "import sys, nats.aio.client as c; sys.exit(c.__version__ != '$NATS_PY_VERSION')" 2>/dev/null; then
  echo "==> installing nats-py $NATS_PY_VERSION into .tools/venv (PyPI)"
  [ -x .tools/venv/bin/python ] || python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check "nats-py==$NATS_PY_VERSION"
fi
