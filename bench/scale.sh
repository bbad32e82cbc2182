#!/usr/bin/env bash
# Many tensors on the host backend: a throwaway Redis and agent, then
# bench/scale fills it with N tensors (default 100,000) and times ls, the
# paged list and gets, and the Python client's list (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-$PWD/bin}
. scripts/lib.sh
N=${N:-100000}
memcuda_session scale --log-level warn --backend host ${AGENT_ARGS:-}
go build -o "$RUN/scale" ./bench/scale
"$RUN/scale" -socket "$MEMCUDA_SOCKET" -agent-pid "$AGENT_PID" -redis-url "$MEMCUDA_REDIS_URL" -cli "$BIN_DIR/memcuda" -n "$N"
PYTHONPATH=$PWD/python python3 - <<PY
import time, memcuda
c = memcuda.connect()
t0 = time.perf_counter()
n = len(c.list())
print(f"| Python Client.list() | {time.perf_counter() - t0:.3f} s, {n} records | | |")
PY
