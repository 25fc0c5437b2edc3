#!/usr/bin/env bash
# Records which functions each function binary runs from exec to its first job done (the email functions to their
# first email sent, indexing and cleanup to their first job, dlq-router its start-up) into
# infra/link/hot-functions.txt: the list infra/link/ordered_link.py places first in every function binary's `.text`.
#
#   bash infra/link/record.sh          record the list again (after a dependency update, a new toolchain, or a
#                                      change to start-up or the attempt path), then rebuild
#   bash infra/link/record.sh --check  how much of the list the release welcome binary holds (nothing recorded)
#
# It runs the release build of each function in turn under valgrind's callgrind (Debian's; installed when missing),
# against a nats-server of its own (the one infra/install-nats-server.sh installs) and a small SMTP sink that accepts
# everything, both on free ports of 127.0.0.1; the definitions come from infra/nats through target/debug/jetfn,
# built first (or $JETFN).
# A stale list is never a failed build: what it no longer names is linked where it would have been anyway.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
LIST=infra/link/hot-functions.txt

if [ "${1:-}" = --check ]; then
  cargo build --release -p welcome --locked
  stats=$(ls -t target/release/deps/welcome-*.link-order-stats | head -1)
  echo "$stats: $(cat "$stats")"
  exit 0
fi

# valgrind (callgrind and callgrind_control) from Debian, installed here when missing (as root; otherwise named).
. "$ROOT/infra/lib/apt.sh"
command -v valgrind > /dev/null && command -v callgrind_control > /dev/null || apt_install infra/link/record.sh valgrind
NATS_SERVER=${NATS_SERVER:-$ROOT/.tools/venv/bin/nats-server}
[ -x "$NATS_SERVER" ] || { echo "record.sh needs nats-server: bash infra/install-nats-server.sh" >&2; exit 1; }

# Each email function and the event type it consumes (infra/nats/consumers/EVENTS), published with the catalog's
# example data (`jetfn publish --example`).
FUNCTIONS=(
  welcome:users.registered
  order-confirmation:orders.placed
  shipping-notification:orders.shipped
  order-status:orders.status_changed
  password-reset:users.password_reset_requested
  email-verification:users.email_verification_requested
  contact:contact.submitted
  subscription-notification:subscription.created
)
# The functions that send no email, each with the event type of its first job (none: start-up alone) and the log line
# that says the job is done.
OTHERS=(
  "indexing:messages.created:indexed"
  "cleanup:cleanup.requested:cleanup.completed published"
  "dlq-router::"
)
# Every function binary, for the count of the list's names each holds (the images test holds the images to it).
packages=()
for dir in functions/*/; do packages+=(-p "$(basename "$dir")"); done
cargo build --release --locked "${packages[@]}"
# The CLI of this checkout (an older one may lack `--example`'s moved expiry), unless $JETFN names one.
if [ -z "${JETFN:-}" ]; then
  cargo build -p jetfn --locked
  JETFN=target/debug/jetfn
fi

WORK=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
  wait 2> /dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NATS_PORT=$(free_port)
SMTP_PORT=$(free_port)

cat > "$WORK/nats.conf" << EOF
listen: 127.0.0.1:$NATS_PORT
jetstream { store_dir: "$WORK/store", sync_interval: always }
EOF
"$NATS_SERVER" -c "$WORK/nats.conf" > "$WORK/nats.log" 2>&1 &
pids+=($!)

# An SMTP server that accepts every message and counts them in a file.
python3 - "$SMTP_PORT" "$WORK/mails" > "$WORK/smtp.log" 2>&1 << 'EOF' &
import asyncio, sys
port, count_file = int(sys.argv[1]), sys.argv[2]
count = 0
async def session(reader, writer):
    global count
    writer.write(b"220 sink ESMTP\r\n")
    while line := await reader.readline():
        verb = line[:4].upper()
        if verb in (b"EHLO", b"HELO"):
            writer.write(b"250-sink\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n")
        elif verb == b"DATA":
            writer.write(b"354 go on\r\n")
            await writer.drain()
            while (await reader.readline()) not in (b".\r\n", b""):
                pass
            count += 1
            open(count_file, "w").write(str(count))
            writer.write(b"250 accepted\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n")
            await writer.drain()
            break
        else:
            writer.write(b"250 ok\r\n")
        await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(session, "127.0.0.1", port)
    async with server:
        await server.serve_forever()
asyncio.run(main())
EOF
pids+=($!)

export NATS_URL=nats://127.0.0.1:$NATS_PORT
"$JETFN" infra apply --wait-secs 10 > "$WORK/apply.log"

export SMTP_URL=smtp://127.0.0.1:$SMTP_PORT RUST_LOG=info
# What three functions require, as `jetfn dev` sets it.
export PASSWORD_RESET_URL=http://localhost:3000/reset-password CONTACT_SUPPORT_TO=support@jetfn.local
export INDEX_DIR=$WORK/index
unset JOB_HEALTH_ADDR LOG_FORMAT OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_TRACES_ENDPOINT

wait_for() {
  local what=$1 seconds=$2 log=$3
  for _ in $(seq $((seconds * 10))); do
    if eval "$what"; then return 0; fi
    sleep 0.1
  done
  echo "record.sh: gave up waiting for: $what" >&2
  tail -20 "$log" >&2
  exit 1
}

runs=()
# Runs one function under callgrind: its start-up, then (with a type) its first job, the catalog's example of the
# type, until `done` (a shell test) holds. `--example` moves an expiry ahead, as an expired link is refused before
# the email path.
record() {
  local name=$1 type=$2 done=$3
  local out=$WORK/$name.callgrind
  valgrind --tool=callgrind --dump-instr=no --compress-strings=no --demangle=no --callgrind-out-file="$out" \
    "target/release/$name" > "$WORK/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_for 'grep -q "consumer bound" "$WORK/$name.log"' 120 "$WORK/$name.log"
  # What start-up ran is dumped apart, to go first in the list; what the first job adds follows it. An idle
  # function then keeps only the first part resident, and the job's path joins it when it runs.
  sleep 2
  callgrind_control --dump=start-up "$pid" > /dev/null 2>&1
  wait_for '[ -s "$out.1" ]' 60 "$WORK/$name.log"
  if [ -n "$type" ]; then
    "$JETFN" publish "$type" --example > /dev/null
    wait_for "$done" 120 "$WORK/$name.log"
    sleep 1
  fi
  kill -TERM "$pid"
  wait "$pid" || true
  runs+=("target/release/$name" "$out.1" "$out")
  echo "record.sh: $name recorded"
}
for entry in "${FUNCTIONS[@]}"; do
  sent=$(cat "$WORK/mails" 2> /dev/null || echo 0)
  record "${entry%%:*}" "${entry#*:}" '[ "$(cat "$WORK/mails" 2> /dev/null || echo 0)" -gt "$sent" ]'
done
for entry in "${OTHERS[@]}"; do
  IFS=: read -r name type line <<< "$entry"
  if [ "$name" = cleanup ]; then
    # Its example purges the search index too, through the indexing function's service: one runs beside it
    # (natively, with an index of its own).
    INDEX_DIR=$WORK/index-service target/release/indexing > "$WORK/indexing-service.log" 2>&1 &
    pids+=($!)
    wait_for 'grep -q "search service started" "$WORK/indexing-service.log"' 60 "$WORK/indexing-service.log"
  fi
  record "$name" "$type" "grep -qF '$line' \"\$WORK/$name.log\""
done

{
  echo "# The functions the function binaries ran from exec to their first job done (an email sent, a message indexed,"
  echo "# a cleanup; dlq-router: start-up only), recorded by infra/link/record.sh ($(rustc --version));"
  echo "# infra/link/ordered_link.py places them first in every function binary. Demangled v0 names without crate hashes"
  echo "# (and the crate that instantiated a generic, after @): first what each function's start-up ran (to its consumer"
  echo "# bound and two seconds idle), then what its first job added."
  python3 infra/link/ordered_link.py --keys-of-callgrind "${runs[@]}"
} > "$WORK/list"
binaries=()
for dir in functions/*/; do binaries+=("target/release/$(basename "$dir")"); done
{
  head -5 "$WORK/list"
  echo "# How many of these names each function binary held when they were recorded (tests/it/images.rs):"
  python3 infra/link/ordered_link.py --count "$WORK/list" "${binaries[@]}"
  tail -n +6 "$WORK/list"
} > "$LIST"
echo "record.sh: $(grep -vc '^#' "$LIST") functions in $LIST; rebuild for them to take effect"
