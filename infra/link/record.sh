#!/usr/bin/env bash
# Records which functions the welcome function runs from exec to its first email sent, and a little idle time after,
# into infra/link/hot-functions.txt: the list infra/link/ordered_link.py places first in every function binary's `.text`.
#
#   bash infra/link/record.sh          record the list again (after a dependency update, a new toolchain, or a
#                                      change to start-up or the attempt path), then rebuild
#   bash infra/link/record.sh --check  how much of the list the release welcome binary holds (nothing recorded)
#
# It runs the release build of welcome under valgrind's callgrind (apt install valgrind) against a nats-server of its
# own (the one infra/install-nats-server.sh installs) and a small SMTP sink that accepts everything, both on free
# ports of 127.0.0.1; the definitions come from infra/nats through target/debug/jetfn (built if missing).
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

command -v valgrind > /dev/null || { echo "record.sh needs valgrind: apt-get install valgrind" >&2; exit 1; }
NATS_SERVER=${NATS_SERVER:-$ROOT/.tools/venv/bin/nats-server}
[ -x "$NATS_SERVER" ] || { echo "record.sh needs nats-server: bash infra/install-nats-server.sh" >&2; exit 1; }

cargo build --release -p welcome --locked
JETFN=${JETFN:-target/debug/jetfn}
[ -x "$JETFN" ] || cargo build -p jetfn --locked

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
unset JOB_HEALTH_ADDR LOG_FORMAT OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
valgrind --tool=callgrind --dump-instr=no --compress-strings=no --demangle=no \
  --callgrind-out-file="$WORK/callgrind.out" target/release/welcome > "$WORK/welcome.log" 2>&1 &
welcome=$!
pids+=("$welcome")

wait_for() {
  local what=$1 seconds=$2
  for _ in $(seq $((seconds * 10))); do
    if eval "$what"; then return 0; fi
    sleep 0.1
  done
  echo "record.sh: gave up waiting for: $what" >&2
  tail -20 "$WORK/welcome.log" >&2
  exit 1
}
wait_for 'grep -q "consumer bound" "$WORK/welcome.log"' 120
# What start-up ran goes first in the list, then what the first email added: an idle function keeps only the first
# part resident, and the email path joins it when it runs.
sleep 2
callgrind_control --dump=start-up "$welcome" > /dev/null 2>&1
wait_for 'ls "$WORK"/callgrind.out.* > /dev/null 2>&1' 60
"$JETFN" publish users.registered \
  --data '{"user_id":"u-record","email":"ada@example.com","name":"Ada Lovelace"}' > /dev/null
wait_for '[ -s "$WORK/mails" ]' 120
sleep 3
kill -TERM "$welcome"
wait "$welcome" || true

{
  echo "# The functions the welcome function ran from exec to its first email and a moment idle after, recorded by"
  echo "# infra/link/record.sh ($(rustc --version)); infra/link/ordered_link.py places them first in every function"
  echo "# binary. Demangled v0 names without crate hashes (and the crate that instantiated a generic, after @): first what"
  echo "# start-up ran (to the consumer bound and two seconds idle), then what the first email added."
  python3 infra/link/ordered_link.py --keys-of-callgrind target/release/welcome "$WORK"/callgrind.out.* "$WORK/callgrind.out"
} > "$LIST"
echo "record.sh: $(grep -vc '^#' "$LIST") functions in $LIST; rebuild for them to take effect"
