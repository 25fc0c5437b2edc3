#!/usr/bin/env bash
# Validates the committed AsyncAPI document (shared/events/asyncapi.json) with @asyncapi/parser, pinned in
# package-lock.json and installed here from the npm registry on first use (`npm ci`, no install scripts). The events
# crate's tests keep the document equal to the catalog; this checks it is valid AsyncAPI 3. Needs node 18+.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v node >/dev/null; then
  echo "tests/asyncapi/check.sh: node is not installed (node 18 or newer is needed to run @asyncapi/parser)" >&2
  exit 1
fi
# Reinstall when the lock file is newer than the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
fi
node validate.mjs ../../shared/events/asyncapi.json
