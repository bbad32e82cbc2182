#!/usr/bin/env bash
# Hostile load on the host backend: a throwaway Redis and agent, then
# connsoak holds idle connections and slowloris clients while a client
# times warm gets (docs/benchmarks.md). IDLE and SLOWLORIS pick the load;
# their sum must stay under the agent's file-descriptor limit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-$PWD/bin}
. scripts/lib.sh
IDLE=${IDLE:-18900}
SLOWLORIS=${SLOWLORIS:-1000}
memcuda_session conns --log-level warn --max-connections $((IDLE + SLOWLORIS + 64)) --backend host ${AGENT_ARGS:-}
go build -o "$RUN/connsoak" ./bench/connsoak
"$RUN/connsoak" -socket "$MEMCUDA_SOCKET" -agent-pid "$AGENT_PID" -idle "$IDLE" -slowloris "$SLOWLORIS" ${SOAK_ARGS:-}
grep -h "crowd of connections" "$RUN/agent.log" || true # with AGENT_ARGS="--log-level debug"
