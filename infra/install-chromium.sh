#!/usr/bin/env bash
# Installs what the console's browser test (tests/it/console.rs, tests/console/) needs, idempotently and quietly
# when it is already there: Debian's chromium (needs root: apt-get; no browser download is possible here, so
# Playwright drives this binary) and the pinned playwright-core from tests/console/package-lock.json (npm ci).
#
# tests/run.sh calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

. infra/lib/apt.sh
command -v chromium >/dev/null || apt_install infra/install-chromium.sh chromium fonts-dejavu-core

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "infra/install-chromium.sh: node and npm are missing (the console's browser test runs Playwright on node):" >&2
  echo "  sudo apt-get install -y nodejs npm" >&2
  exit 1
fi

# Reinstall when the lock file is newer than the last install (no install scripts: playwright-core has none, and
# no browser download is wanted).
if [ ! -f tests/console/node_modules/.package-lock.json ] \
  || [ tests/console/package-lock.json -nt tests/console/node_modules/.package-lock.json ]; then
  echo "==> installing playwright-core into tests/console/node_modules (npm ci)"
  (cd tests/console && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
fi
chromium --version
