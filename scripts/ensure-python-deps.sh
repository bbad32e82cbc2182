#!/usr/bin/env bash
# Makes sure the Python test dependencies are importable (pip install when not).
set -euo pipefail
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import numpy, pytest, mypy' >/dev/null 2>&1; then
  echo "installing numpy, pytest and mypy with pip" >&2
  "$PYTHON" -m pip install -q --disable-pip-version-check numpy pytest mypy
fi
