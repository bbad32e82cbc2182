#!/usr/bin/env bash
# The agent's --hot-spin on a GPU machine, after `make gpu-suite` (the call
# carries .device/bin, .device/redis, .device/pywheels and
# python/memcuda/_speedups.abi3.so). One agent build, run as agents that
# differ only in their environment (--hot-spinners left at its default,
# one per 8 CPUs):
#   s0   MEMCUDA_HOT_SPIN=0 (polling off);
#   s250 250us of polling whatever the node's load
#        (--hot-spin-max-pressure -1);
#   g250 250us of polling while the node's tasks do not wait for CPUs (the
#        default gate, --hot-spin-max-pressure 0.3).
# Steps, each only while LIMIT seconds (default 560) leave room:
#   1. bench/gpu_bench.py --only throughput,unheld on vmm for s0, g250 and
#      s250 (with the node's idle CPUs and CPU pressure in each window);
#   2. bench/gpu_bench.py --only get,create for g250 and s0 on vmm and
#      legacy (cold gets in turn, creates against the echo, warm gets);
#   3. bench/ab_paired.py, s0 against g250, each call after 100 us of client
#      work (AB_GAP_US).
# Each run's polling counters come from the agent's /metrics.
set -uo pipefail
export OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
LIMIT=${LIMIT:-560}
left() { [ $SECONDS -lt $((LIMIT - $1)) ]; }
D=$PWD/.device
for f in "$D"/bin/*.gz; do [ -f "$f" ] && gunzip -f "$f"; done
chmod +x "$D"/bin/*
nproc; nvidia-smi -L; nvidia-smi --query-gpu=driver_version --format=csv,noheader
# setting DIR ENV...: a bin directory whose agent runs with the environment ENV.
setting() {
  local dir=$1; shift
  mkdir -p "$dir"; cp "$D/bin/memcuda" "$dir/"; ln -sf "$D/bin/memcuda-agent" "$dir/memcuda-agent.real"
  printf '#!/bin/sh\nexec env %s "%s/memcuda-agent.real" "$@"\n' "$*" "$dir" > "$dir/memcuda-agent"
  chmod +x "$dir/memcuda-agent"
}
X=$(mktemp -d)
setting $X/s0 MEMCUDA_HOT_SPIN=0
setting $X/s250 MEMCUDA_HOT_SPIN=250us MEMCUDA_HOT_SPIN_MAX_PRESSURE=-1
setting $X/g250 MEMCUDA_HOT_SPIN=250us
export LD_LIBRARY_PATH=$D/redis/usr/lib/x86_64-linux-gnu REDIS_SERVER=$D/redis/usr/bin/redis-server PYTHONUNBUFFERED=1
. scripts/lib.sh
[ -d "$D/pyclient" ] || unpack_wheels "$D/pyclient" "$D/pywheels"
export PYTHONPATH=$D/pyclient
spins() { python3 -c 'import urllib.request as u; print(" ".join(l for l in u.urlopen("http://127.0.0.1:19477/metrics").read().decode().splitlines() if l.startswith(("memcuda_hot_spin", "memcuda_node_"))))' 2>&1; }
bench() { # label bins mode args...
  local label=$1 bins=$2 mode=$3; shift 3
  RUN=$(mktemp -d)
  BIN_DIR=$bins memcuda_up "$RUN" --backend $mode --log-level warn --metrics-addr 127.0.0.1:19477
  export MEMCUDA_METRICS_URL=http://127.0.0.1:19477/metrics
  MEMCUDA_BACKEND=$mode timeout 200 python3 bench/gpu_bench.py "$@" > $OUT/b-$label-$mode.log 2>&1
  echo "=== $label $mode t=$SECONDS"; spins
  grep -E '^\| (get|create|floor|first get|unheld|warm|[0-9]+ proc|bare)|^cold get|^create' $OUT/b-$label-$mode.log | cut -c1-300
  memcuda_down
}
for s in s0 g250 s250; do left 100 && bench tput-$s $X/$s vmm --only throughput,unheld --rounds 3 --seconds 2; done
for run in "g250 vmm" "g250 legacy" "s0 vmm" "s0 legacy"; do
  set -- $run; left 50 && bench $1 $X/$1 $2 --only get,create --n 400
done
if left 40; then
  echo "=== ab-paired s0 vs g250, gap 100 t=$SECONDS"
  AB_N=1000 AB_GAP_US=${AB_GAP_US:-100} AB_ONLY=get-warm,get-first,create timeout $((LIMIT - SECONDS - 10)) bash scripts/ab-paired.sh $X/s0 $X/g250 vmm legacy 2>&1 | grep -E '^\||pause'
fi
echo "done t=$SECONDS"
