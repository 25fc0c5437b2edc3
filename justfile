# Thin shortcuts; each recipe is one command. `just` is optional: every line works pasted into a shell.

# Run the whole system locally (nats-server, infra, functions); emails land in .jetfn/mail.
dev:
    bash infra/dev.sh

# Every check and test, as CI runs them.
test:
    bash tests/run.sh

# Integration tests whose name contains FILTER.
test-it filter="":
    bash tests/run.sh {{filter}}

# The fuzz targets (envelope decoder and validator, email composition, schedule parser) for SECS seconds each;
# CI runs 12. A failure prints the smallest input found: make it a regression test.
fuzz secs="600":
    JETFN_FUZZ_CASES=1000000000 JETFN_FUZZ_SECS={{secs}} cargo test -p events -p mailer -p provision -p jetfn fuzz_ -- --nocapture --test-threads 2

fmt:
    cargo fmt --all

lint:
    cargo clippy --workspace --all-targets -- -D warnings

# The churn test as a soak: JETFN_SOAK_EVENTS events (default 50000), JETFN_SOAK_KILLS replica kills (default one per 250
# events), JETFN_SOAK_SEED to replay a run.
soak:
    JETFN_SOAK_EVENTS="${JETFN_SOAK_EVENTS:-50000}" bash tests/run.sh churn_

# The container images (one per function, the CLI, nats-server) with podman; JETFN_IMAGE_TAG (default dev) tags them.
images *names:
    bash infra/images.sh {{names}}

# Provision streams, consumers and KV buckets on the server at $NATS_URL.
apply:
    cargo run -q -p jetfn -- infra apply

# Publish an event, e.g. `just publish users.registered '{"user_id":"u1","email":"ada@example.com","name":"Ada"}'`.
publish type data:
    cargo run -q -p jetfn -- publish {{type}} --data '{{data}}'

dlq:
    cargo run -q -p jetfn -- dlq list

status:
    cargo run -q -p jetfn -- status

# Regenerate the JSON Schemas and CATALOG.md from the Rust types.
schemas:
    cargo run -q -p events --example write_schemas

# Benchmarks (issue 5): jetfn beside raw JetStream and BullMQ; prints a table, writes tests/bench/results.json and
# regenerates BENCHMARKS.md. `just bench --quick`, `just bench --only runtime,publish`.
bench *args:
    bash tests/bench/run.sh {{args}}

# Record again which functions the function binaries run at start-up and for their first job
# (infra/link/hot-functions.txt), which the function binaries' optimised links place first: after a dependency or
# toolchain update, or when the images test says the list is stale. Installs valgrind (Debian) when missing.
# `just link-order --check` shows how much of the list the release welcome binary holds.
link-order *args:
    bash infra/link/record.sh {{args}}
