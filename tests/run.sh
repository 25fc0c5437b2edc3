#!/usr/bin/env bash
# Runs every check and every test, the way CI does: formatting, clippy, unit tests and the integration tests
# against a real nats-server 2.15, a real SMTP server and a real OTLP receiver (shared/testkit; the last two run
# inside the test binary; the first is installed by infra/install-nats-server.sh if missing).
#
#   bash tests/run.sh            everything
#   bash tests/run.sh welcome    only integration tests whose name contains "welcome"
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's wall time and the CPU seconds of the processes it ran (compilers included), so a slow CI run says
# where its time went.
# `times` runs in this shell (a command substitution would count only its own subshell's children).
step_label=
step_times=$(mktemp)
step() {
  local cpu
  times >"$step_times"
  cpu=$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%d", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$step_times")
  if [ -n "$step_label" ]; then
    echo "    ($((SECONDS - step_start)) s, $((cpu - step_cpu)) CPU s)"
  fi
  step_label=$1 step_start=$SECONDS step_cpu=$cpu
  [ -z "$1" ] || echo "==> $1"
}
# A run that stops early (a failed step, ^C) stops the background image build too: its cargo and rustc processes
# are in a process group of their own (setsid, below).
images_pid=
trap 'step ""; rm -f "$step_times"; if [ -n "$images_pid" ]; then kill -- "-$images_pid" 2>/dev/null || true; fi' EXIT

step "tools (nats-server, test tools, kubernetes-validate, podman, chromium)"
bash infra/install-nats-server.sh
bash infra/install-test-tools.sh
bash infra/install-kubernetes-validate.sh
bash infra/install-podman.sh
bash infra/install-chromium.sh

# The binaries the integration tests spawn carry the fault-injection hooks the crash tests set
# (JOB_TEST_DELAY_BEFORE_ACK_MS, JOB_TEST_CLOCK_SKEW_MS, INDEX_TEST_*, ROUTER_TEST_*, ...). A build without the feature
# refuses those variables at start-up, so a crash test run against the wrong build fails instead of passing for the
# wrong reason.
BIN_FEATURES=runtime/fault-injection,indexing/fault-injection,dlq-router/fault-injection

# Every function process the suite runs also writes its output here; scan-logs then fails on any test secret,
# URL password or email address in clear (issue 10: secrets stay secret).
export JETFN_TEST_LOG_DIR="$PWD/target/test-logs"
rm -rf "$JETFN_TEST_LOG_DIR"

# The built scan-logs binary (built with the integration tests, whose binaries cargo builds for them): `cargo run`
# would build it again with the test crate's own features, recompiling tokio and its neighbours.
scan_logs() {
  "${CARGO_TARGET_DIR:-target}/debug/scan-logs" "$JETFN_TEST_LOG_DIR"
}

# The container images the image tests run (tests/it/images.rs): release binaries of their own cargo profile, in
# a target directory of their own (target/image-build, chosen by infra/images.sh for every caller, the compose test
# included), so the builds below neither replace them nor wait for their lock. Warm, a few seconds; cold, most of
# CI's time (12 release binaries, about 1,900 CPU seconds on two cores).
build_images() {
  step "container images (infra/images.sh)"
  bash infra/images.sh
}

# The full run builds the images in the background at the lowest CPU priority, from the start: the steps before
# the integration tests keep both cores busy and yield it little, but the integration tests leave about two thirds
# of the machine idle (they wait on servers, timeouts and backoffs), and the build takes that instead of running
# after them. Niced, it cannot starve a test: the scheduler gives a nice-19 process about 1.5% of a core that a
# nice-0 process wants. Its output goes to a log, shown if it fails.
images_log="${CARGO_TARGET_DIR:-target}/images-build.log"
# setsid puts the build in a session of its own (so it can be stopped as a group), and a kernel with autogroups
# (`kernel.sched_autogroup_enabled`, on here) shares the CPU between sessions before it looks at nice values: the
# new session's autogroup gets nice 19 as well, or its rustc would get half the machine (seen: 50% each against
# 44% for the unit tests' build).
start_images() {
  mkdir -p "$(dirname "$images_log")"
  setsid bash -c \
    '{ echo 19 >/proc/self/autogroup; } 2>/dev/null; exec nice -n 19 bash infra/images.sh' >"$images_log" 2>&1 &
  images_pid=$!
}
wait_images() {
  step "container images (infra/images.sh, built in the background since the tools step)"
  local pid=$images_pid
  images_pid=
  if ! wait "$pid"; then
    cat "$images_log" >&2
    echo "tests/run.sh: infra/images.sh failed (log above, in $images_log)" >&2
    exit 1
  fi
  tail -n 15 "$images_log"
}

if [ "$#" -gt 0 ]; then
  build_images
  step "building the binaries the integration tests run"
  cargo build --workspace --bins --features "$BIN_FEATURES"
  step "integration tests matching $*"
  cargo test --workspace --test it -- "$@"
  # A filter that runs no function process leaves nothing to scan.
  if [ -d "$JETFN_TEST_LOG_DIR" ]; then
    scan_logs
  fi
  exit 0
fi

start_images
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (production features, then with the fault-injection hooks)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --workspace --all-targets --features "$BIN_FEATURES" -- -D warnings
step "unit tests and doc tests"
cargo test --workspace --exclude integration-tests
# The committed manifests are the generator's output (shared/provision/tests/registry.rs, in the step above);
# here they are checked against the Kubernetes schemas of the oldest and newest release we claim, and the
# ScaledObjects against KEDA's. A few seconds. Beside them, the same render with the one optional setting the
# shipped settings leave out (`smtp_tls_ca_secret`: a volume and a variable more in every mail function), from the
# jetfn binary the step above built.
step "Kubernetes manifests against the Kubernetes and KEDA schemas (offline)"
k8s_python="${JETFN_TOOLS_VENV:-.tools/venv}/bin/python"
k8s_dir=$(mktemp -d)
"$k8s_python" -c 'import json, sys; s = json.load(open(sys.argv[1])); s["smtp_tls_ca_secret"] = "jetfn-smtp-ca"; json.dump(s, open(sys.argv[2], "w"))' \
  infra/deploy/kubernetes.json "$k8s_dir/kubernetes.json"
"${CARGO_TARGET_DIR:-target}/debug/jetfn" infra kubernetes --settings "$k8s_dir/kubernetes.json" >"$k8s_dir/kubernetes.yaml"
grep -q 'secretName: jetfn-smtp-ca' "$k8s_dir/kubernetes.yaml" || { echo "the render with smtp_tls_ca_secret mounts no CA" >&2; exit 1; }
for version in 1.30.0 1.37.0; do
  "$k8s_python" tests/kubernetes/validate.py "$version" infra/deploy/kubernetes.yaml "$k8s_dir/kubernetes.yaml"
done
rm -rf "$k8s_dir"
# The events crate's tests (above) keep shared/events/asyncapi.json equal to the catalog; here the AsyncAPI project's
# own parser (pinned in tests/asyncapi/package-lock.json, installed from npm on first use) says it is valid AsyncAPI 3.
step "the AsyncAPI document against @asyncapi/parser"
bash tests/asyncapi/check.sh
# The fuzz targets (proptest-driven: random inputs, shrinking, stable Rust) run a few hundred inputs each in the
# step above; here each runs for a bounded time, about a minute in all. `just fuzz` is the long run. The same
# package selection as the step above (the targets are in events, mailer, provision and jetfn), so cargo reuses its
# builds: `-p events -p mailer ...` resolves other features and recompiled 59 crates, jsonschema and reqwest among
# them. --tests leaves out the doc tests, which have no fuzz target and would be compiled again.
step "fuzz targets, bounded (envelope decoder and validator, email composition, schedule parser)"
JETFN_FUZZ_CASES=100000000 JETFN_FUZZ_SECS=12 \
  cargo test --workspace --exclude integration-tests --tests fuzz_ -- --nocapture --test-threads 2
# Built right before the integration tests, so no other step can replace them with a build without the hooks.
step "building the binaries the integration tests run"
cargo build --workspace --bins --features "$BIN_FEATURES"
# `--workspace --test it` rather than `-p integration-tests`: the features resolve as in the unit tests' build, so
# the test binary links the libraries built there instead of a second build of up to 44 crates with other features.
step "integration tests (real nats-server, SMTP server, OTLP receiver, function binaries), but the images'"
cargo test --workspace --test it -- --skip compose_ --skip images::
wait_images
step "integration tests of the container images"
cargo test --workspace --test it images::
# On its own, so its containers do not share the two cores with the tests above (tests/it/compose.rs).
step "the compose stack (images, podman-compose, a three-node cluster over TLS, every function, maildev, Phoenix)"
cargo test --workspace --test it compose_ -- --nocapture
step "no secret and no email address in clear in what the functions printed"
scan_logs
