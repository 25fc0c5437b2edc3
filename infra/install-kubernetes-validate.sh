#!/usr/bin/env bash
# Installs the pinned offline validators of the Kubernetes manifests into .tools/venv (JETFN_TOOLS_VENV to put them
# elsewhere): kubernetes-validate (PyPI; the Kubernetes OpenAPI schemas of every release, strict mode) and
# cloudcoil-models-keda (PyPI; models generated from KEDA's CRDs, whose JSON schema checks the ScaledObjects).
# tests/run.sh calls it before tests/kubernetes/validate.py. Idempotent and quiet when both are there.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
KEDA_MODELS_VERSION=2.16.1.0
VENV="${JETFN_TOOLS_VENV:-.tools/venv}"

installed() {
  "$VENV/bin/python" - "$KUBERNETES_VALIDATE_VERSION" "$KEDA_MODELS_VERSION" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
ok = version("kubernetes-validate") == sys.argv[1] and version("cloudcoil.models.keda") == sys.argv[2]
# What tests/kubernetes/validate.py imports: a dependency removed by another install into the same venv is caught
# here, and pip's install below puts it back.
import jsonschema, kubernetes_validate, yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
sys.exit(0 if ok else 1)
PY
}

if installed; then
  exit 0
fi
echo "==> installing kubernetes-validate ${KUBERNETES_VALIDATE_VERSION} and cloudcoil-models-keda ${KEDA_MODELS_VERSION} into ${VENV} (PyPI)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}" "cloudcoil-models-keda==${KEDA_MODELS_VERSION}"
installed || { echo "install-kubernetes-validate: the validators did not install into ${VENV}" >&2; exit 1; }
