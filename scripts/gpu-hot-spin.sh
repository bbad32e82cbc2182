#!/usr/bin/env bash
# The agent's --hot-spin on a GPU machine, after `make gpu-suite` (the call
# carries .device/bin, .device/redis, .device/pywheels and
# python/memcuda/_speedups.abi3.so). One agent build, run as three agents
# that differ only in MEMCUDA_HOT_SPIN (0, 250us, 1ms; --hot-spinners
# left at its default, one per 8 CPUs):
#   1. bench/ab_paired.py, spin 0 against 250us, each call after 100 us of
#      client work (AB_GAP_US), vmm and legacy: the paired A/B;
#   2. bench/gpu_bench.py --only get,create per setting and backend, in
#      the order 0, 250us per backend, then 1ms (cold gets in turn, creates
#      against the echo, warm gets), with each run's polling counters;
#   3. bench/gpu_bench.py --only throughput,unheld on vmm, 0 then 250us.
# Each step runs only while LIMIT seconds (default 560) leave room.
set -uo pipefail
export OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
LIMIT=${LIMIT:-560}
left() { [ $SECONDS -lt $((LIMIT - $1)) ]; }
D=$PWD/.device
for f in "$D"/bin/*.gz; do [ -f "$f" ] && gunzip -f "$f"; done
chmod +x "$D"/bin/*
nproc; nvidia-smi -L; nvidia-smi --query-gpu=driver_version --format=csv,noheader
# setting DIR SPIN: a bin directory whose agent runs with MEMCUDA_HOT_SPIN=SPIN.
setting() {
  mkdir -p "$1"; cp "$D/bin/memcuda" "$1/"; ln -sf "$D/bin/memcuda-agent" "$1/memcuda-agent.real"
  printf '#!/bin/sh\nexec env MEMCUDA_HOT_SPIN=%s "%s/memcuda-agent.real" "$@"\n' "$2" "$1" > "$1/memcuda-agent"
  chmod +x "$1/memcuda-agent"
}
X=$(mktemp -d); setting $X/s0 0; setting $X/s250 250us; setting $X/s1m 1ms
export LD_LIBRARY_PATH=$D/redis/usr/lib/x86_64-linux-gnu REDIS_SERVER=$D/redis/usr/bin/redis-server PYTHONUNBUFFERED=1
. scripts/lib.sh
[ -d "$D/pyclient" ] || unpack_wheels "$D/pyclient" "$D/pywheels"
export PYTHONPATH=$D/pyclient
echo "=== ab-paired s0 vs s250, gap 100 t=$SECONDS"
AB_N=1000 AB_GAP_US=${AB_GAP_US:-100} AB_ONLY=get-warm,get-first,create timeout 150 bash scripts/ab-paired.sh $X/s0 $X/s250 vmm legacy 2>&1 | grep -E '^\||pause'
spins() { python3 -c 'import urllib.request as u; print(" ".join(l for l in u.urlopen("http://127.0.0.1:19477/metrics").read().decode().splitlines() if l.startswith("memcuda_hot_spins")))' 2>&1; }
bench() { # label bins mode args...
  local label=$1 bins=$2 mode=$3; shift 3
  RUN=$(mktemp -d)
  BIN_DIR=$bins memcuda_up "$RUN" --backend $mode --log-level warn --metrics-addr 127.0.0.1:19477
  export MEMCUDA_METRICS_URL=http://127.0.0.1:19477/metrics
  MEMCUDA_BACKEND=$mode timeout 150 python3 bench/gpu_bench.py "$@" > $OUT/b-$label-$mode.log 2>&1
  echo "=== $label $mode t=$SECONDS"; spins
  grep -E '^\| (get|create|floor|first get|unheld|warm|[0-9]+ proc|bare)|^cold get|^create' $OUT/b-$label-$mode.log | cut -c1-300
  memcuda_down
}
for run in "s0 vmm" "s250 vmm" "s0 legacy" "s250 legacy" "s1m vmm" "s1m legacy"; do
  set -- $run; left 60 && bench $1 $X/$1 $2 --only get,create --n 400
done
for s in s0 s250; do left 60 && bench tput-$s $X/$s vmm --only throughput,unheld --rounds 3 --seconds 2; done
echo "done t=$SECONDS"
