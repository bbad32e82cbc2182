#!/usr/bin/env bash
# The main job: start Redis and the agent, then two processes share a named
# tensor. With a GPU and PyTorch it uses the GPU (Python demo); otherwise the
# host backend (Go demo).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-$PWD/bin}
. scripts/lib.sh
memcuda_session demo
echo "== agent up: socket $MEMCUDA_SOCKET, Redis $MEMCUDA_REDIS_URL"
if [ -x python/demo.py ] || [ -f python/demo.py ]; then
  if python3 -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    PYTHONPATH=python python3 python/demo.py
    exit 0
  fi
fi
"$BIN_DIR/memcuda" demo
echo "== registry after the demo:"
"$BIN_DIR/memcuda" ls
