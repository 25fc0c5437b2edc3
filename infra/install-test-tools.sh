#!/usr/bin/env bash
# The system tools some integration tests drive, installed from Debian if missing: `openssl` makes the TLS tests'
# certificates (tests/it/tls.rs), `ip` (iproute2) builds the network namespaces of the partition test
# (tests/it/partition.rs, which also needs root), `strace` counts nats-server's fsyncs (tests/it/durable_writes.rs).
# Idempotent; a no-op when all are present.
set -euo pipefail
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v strace >/dev/null 2>&1 || missing+=(strace)
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-tools: ${missing[*]} missing; run as root or: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "install-test-tools: installing ${missing[*]} from Debian"
DEBIAN_FRONTEND=noninteractive apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
