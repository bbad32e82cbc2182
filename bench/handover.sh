#!/usr/bin/env bash
# The hand-over window (docs/benchmarks.md): a throwaway Redis, then
# bench/handover starts an agent and ROUNDS successors, each taking over
# from the one before, while a client gets and releases in a loop. Extra
# arguments go to the agents (e.g. --backend vmm on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-$PWD/bin}
. scripts/lib.sh
bash scripts/ensure-redis.sh
RUN=$(mktemp -d /tmp/memcuda-handover.XXXXXX)
trap 'memcuda_down; [ -n "${KEEP_RUN:-}" ] || rm -rf "$RUN"' EXIT
memcuda_redis_up "$RUN"
HANDOVER=${HANDOVER_BIN:-}
if [ -z "$HANDOVER" ]; then
  go build -o "$RUN/handover" ./bench/handover
  HANDOVER=$RUN/handover
fi
"$HANDOVER" -agent "$BIN_DIR/memcuda-agent" -socket "$RUN/agent.sock" -redis-url "unix://$RUN/redis.sock" -dir "$RUN" \
  -rounds "${ROUNDS:-10}" -tensors "${TENSORS:-1000}" -- --redis-prefix "handover-$$:" --log-level "${LOG_LEVEL:-warn}" "${@:---backend=host}"
