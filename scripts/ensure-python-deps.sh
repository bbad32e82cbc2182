#!/usr/bin/env bash
# Makes sure the Python test dependencies are importable (pip install when
# not): the test runner and type checker, and what the client works with
# when present (NumPy, ml_dtypes for bf16/fp8 on the host, redis-py for the
# Redis-only path, JAX for the DLPack tests). PyTorch is not installed here:
# its wheels carry CUDA; the GPU suite runs the torch tests.
set -euo pipefail
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import numpy, pytest, mypy, ml_dtypes, redis, jax' >/dev/null 2>&1; then
  echo "installing numpy, pytest, mypy, ml_dtypes, redis and jax with pip" >&2
  "$PYTHON" -m pip install -q --disable-pip-version-check numpy pytest mypy ml_dtypes "redis>=4.2" jax
fi
# Python's headers, for the client's C decoder (make python-ext).
inc=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
if [ ! -f "$inc/Python.h" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Python's headers (python3-dev) with apt" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-dev
fi
