#!/usr/bin/env bash
# Brings the compose stack (compose.yaml) up with podman-compose, in the order its depends_on says:
#
#   1. the certificates and passwords (secrets.sh; kept when they exist)
#   2. the three NATS nodes, the mail catcher and the trace backend
#   3. the provisioning step, `jetfn infra apply --replicas 3`, once; a failure stops here with its output
#   4. every function, then waits until the mail and trace pages answer
#
# Why not one `podman-compose up -d`: podman-compose 1.6 turns depends_on into `podman create --requires`, and
# podman starts a required container that is not running whenever the dependent one starts. The provisioning
# container has exited by then, so podman runs it a second time, beside the functions (and again on every restart
# of a function), and with podman 4.3 a dependency that has dependencies of its own makes the start fail outright
# ("generating dependency graph ... not found in input list"). It also waits for
# service_completed_successfully without looking at the exit code. So the functions are created here with
# --no-deps, after this script has seen the provisioning succeed. docker compose honours depends_on as written:
# `docker compose up -d` (after secrets.sh) needs none of this.
#
# Environment: COMPOSE_PROJECT_NAME (default jetfn), COMPOSE_FILE (e.g. compose.yaml:compose.pull.yaml), the
# JETFN_*_PORT and JETFN_COMPOSE_DIR variables compose.yaml names, JETFN_IMAGE_TAG.
set -euo pipefail
cd "$(dirname "$0")/../../.."

export CONTAINERS_CONF="$PWD/infra/containers/containers.conf"
bash infra/install-podman.sh
compose=(.tools/venv/bin/podman-compose)
infrastructure=(nats-1 nats-2 nats-3 mail traces)

bash infra/deploy/compose/secrets.sh

# Every image must be here already (nothing can be pulled): name the command that builds a missing one.
missing=()
for image in $("${compose[@]}" config 2>/dev/null | awk '$1 == "image:" { print $2 }' | sort -u); do
  podman image exists "$image" || missing+=("$image")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "infra/deploy/compose/up.sh: missing images: ${missing[*]}" >&2
  echo "  build them: bash infra/images.sh && bash infra/deploy/compose/build.sh" >&2
  exit 1
fi

start=$SECONDS
echo "==> the NATS cluster, the mail catcher and the trace backend"
"${compose[@]}" up -d "${infrastructure[@]}" >/dev/null

echo "==> provisioning: jetfn infra apply --replicas 3"
if ! "${compose[@]}" run -T --rm --no-deps provision; then
  echo "infra/deploy/compose/up.sh: provisioning failed (above); the functions were not started" >&2
  exit 1
fi

functions=()
for service in $("${compose[@]}" config --services); do
  case " ${infrastructure[*]} provision " in
    *" $service "*) ;;
    *) functions+=("$service") ;;
  esac
done
echo "==> the functions: ${functions[*]}"
"${compose[@]}" up -d --no-deps "${functions[@]}" >/dev/null

# A container that could not start (a bad setting, a missing secret) shows here rather than later.
project=${COMPOSE_PROJECT_NAME:-jetfn}
down=$(comm -23 \
  <(podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}' | sort) \
  <(podman ps --filter "label=io.podman.compose.project=$project" --format '{{.Names}}' | sort))
if [ -n "$down" ]; then
  echo "infra/deploy/compose/up.sh: not running: $down" >&2
  for name in $down; do podman logs --tail 20 "$name" >&2 || true; done
  exit 1
fi
# The two pages answer last (Phoenix migrates its database first, half a minute or so); spans sent before that
# are lost, so wait for them.
for url in "http://127.0.0.1:${JETFN_MAILDEV_PORT:-1080}/healthz" "http://127.0.0.1:${JETFN_PHOENIX_PORT:-6006}/healthz"; do
  if ! command -v curl >/dev/null; then
    echo "==> not waiting for $url: no curl (apt-get install curl)"
    continue
  fi
  deadline=$((SECONDS + 180))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "infra/deploy/compose/up.sh: $url does not answer after 180 s" >&2
      exit 1
    fi
    sleep 1
  done
done
echo "==> up in $((SECONDS - start)) s: mail at http://127.0.0.1:${JETFN_MAILDEV_PORT:-1080}," \
  "traces at http://127.0.0.1:${JETFN_PHOENIX_PORT:-6006} (project jetfn)"
