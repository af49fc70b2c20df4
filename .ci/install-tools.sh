#!/usr/bin/env bash
# Installs the tools that must live outside the project's .venv because their pins clash with it.
# checkov 3.3.30 pins (boto3, pydantic, ...) differ from constraints.txt, so it gets its own venv.
# Idempotent: it does nothing when the pinned version is already installed.
set -euo pipefail

CHECKOV_VERSION="3.3.30"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/.venv-tools/checkov"
PYTHON="${PYTHON:-python3.11}"

installed_version() {
  "${VENV}/bin/python" -c 'import importlib.metadata as m; print(m.version("checkov"))' 2>/dev/null || true
}

if [[ -x "${VENV}/bin/checkov" && "$(installed_version)" == "${CHECKOV_VERSION}" ]]; then
  echo "checkov ${CHECKOV_VERSION} already installed in ${VENV}"
  exit 0
fi

if ! command -v "${PYTHON}" >/dev/null 2>&1; then
  echo "error: ${PYTHON} not found; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

"${PYTHON}" -m venv "${VENV}"
"${VENV}/bin/pip" install --quiet --disable-pip-version-check "checkov==${CHECKOV_VERSION}"
echo "checkov $(installed_version) installed in ${VENV}"
