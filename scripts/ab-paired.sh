#!/usr/bin/env bash
# Paired A/B of two agent builds (bench/ab_paired.py): agent A from the
# binaries in A_BIN and agent B from B_BIN run side by side, each with its
# own Redis, on the same backend; one client process alternates blocks of
# calls between them. Runs here (host backend) or on the GPU machine (vmm, legacy:
# .device/redis is used when present, gzipped binaries are unpacked).
#   bash scripts/ab-paired.sh A_BIN B_BIN [modes...]   (default: vmm legacy)
# Env: AB_N timed calls per agent and call (default 2000), AB_ONLY calls (default all),
# AB_GAP_US an untimed pause before each call (the client spinning; default none),
# OUT where the JSON summaries go (default gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
A_BIN=$(cd "${1:?usage: ab-paired.sh A_BIN B_BIN [modes...]}" && pwd) || exit 2
B_BIN=$(cd "${2:?usage: ab-paired.sh A_BIN B_BIN [modes...]}" && pwd) || exit 2
shift 2
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(vmm legacy)
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
. scripts/lib.sh
ab_binaries "$A_BIN" "$B_BIN"
pids=()
down() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  pids=()
}
trap down EXIT
status=0
for mode in "${modes[@]}"; do
  RUN_A=$(mktemp -d) RUN_B=$(mktemp -d)
  up=0
  for side in a b; do
    [ $side = a ] && bins=$A_BIN run=$RUN_A || bins=$B_BIN run=$RUN_B
    BIN_DIR=$bins memcuda_up "$run" --backend "$mode" --log-level warn --redis-prefix "memcuda-ab-$side:" || up=1
    pids+=("$AGENT_PID" "$REDIS_PID") # Redis runs even when its agent did not start
    [ $up = 0 ] || break
  done
  if [ $up != 0 ]; then
    status=1; down; rm -rf "$RUN_A" "$RUN_B"; continue
  fi
  AB_SOCKET_A=$RUN_A/agent.sock AB_SOCKET_B=$RUN_B/agent.sock python3 bench/ab_paired.py --n "${AB_N:-2000}" \
    ${AB_ONLY:+--only "$AB_ONLY"} ${AB_GAP_US:+--gap-us "$AB_GAP_US"} --label "$mode" --out "$OUT/ab-paired-$mode.json" || status=1
  down
  rm -rf "$RUN_A" "$RUN_B"
done
exit $status
