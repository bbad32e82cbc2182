#!/usr/bin/env bash
# End-to-end benchmark on the host backend: a throwaway Redis and agent, then
# hostbench with 1 and 16 client processes.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-$PWD/bin}
. scripts/lib.sh
memcuda_session bench --log-level warn "$@" # extra args go to the agent
go build -o "$RUN/hostbench" ./bench/hostbench
"$RUN/hostbench" -socket "$MEMCUDA_SOCKET" -redis-url "$MEMCUDA_REDIS_URL" -procs "${PROCS:-1,16}" -ops "${OPS:-5000}"
