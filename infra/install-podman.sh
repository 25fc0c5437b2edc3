#!/usr/bin/env bash
# Installs what the images and the compose stack need, idempotently and quietly when it is already there:
# podman and runc from Debian (needs root: apt-get), and the pinned podman-compose (PyPI) into .tools/venv.
# Every project script that runs podman exports CONTAINERS_CONF=infra/containers/containers.conf (the settings
# podman needs on these machines); do the same to run podman by hand:
#
#   export CONTAINERS_CONF="$PWD/infra/containers/containers.conf"
#
# infra/images.sh and tests/run.sh call it.
set -euo pipefail
cd "$(dirname "$0")/.."

PODMAN_COMPOSE_VERSION=1.6.0
export CONTAINERS_CONF="$PWD/infra/containers/containers.conf"

# The compose stack's containers find each other by name (nats-1, mail, traces): with Debian 12's podman (CNI
# networks) that is the dnsname plugin, only a Recommends of podman, so a machine that installed podman without its
# recommends has networks without DNS (provisioning then fails with "failed to lookup address information").
DNSNAME_PLUGIN=/usr/lib/cni/dnsname
packages=()
command -v podman >/dev/null || packages+=(podman)
command -v runc >/dev/null || packages+=(runc)
if [ ! -x "$DNSNAME_PLUGIN" ] && { [ ${#packages[@]} -gt 0 ] ||
  [ "$(podman info --format '{{.Host.NetworkBackend}}' 2>/dev/null)" = cni ]; }; then
  packages+=(golang-github-containernetworking-plugin-dnsname)
fi
. infra/lib/apt.sh
[ ${#packages[@]} -eq 0 ] || apt_install infra/install-podman.sh "${packages[@]}"

if ! .tools/venv/bin/podman-compose --version 2>/dev/null | grep -q "podman-compose version ${PODMAN_COMPOSE_VERSION}\b"; then
  echo "==> installing podman-compose ${PODMAN_COMPOSE_VERSION} into .tools/venv (PyPI)"
  [ -x .tools/venv/bin/python ] || python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check "podman-compose==${PODMAN_COMPOSE_VERSION}"
fi

# A podman that cannot start (a wrong configuration, a missing runtime) fails here, with podman's own words,
# rather than in the middle of an image build.
if ! out=$(podman info --format '{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}' 2>&1); then
  echo "infra/install-podman.sh: podman does not work with $CONTAINERS_CONF:" >&2
  echo "$out" >&2
  exit 1
fi
