#!/usr/bin/env bash
# Throughput A/B of two agent builds: agent A from the binaries in A_BIN,
# agent B from B_BIN, each started afresh for every run and alternating
# (A B B A ...), bench/unheld_ab.py against it (unheld get+release pairs/s
# at AB_PROCS processes, one name and a name each, with the node's load
# in each); prints each run and the medians. Runs here (host backend) or on
# the GPU machine (.device/redis is used when present, gzipped binaries are
# unpacked).
#   bash scripts/ab-throughput.sh A_BIN B_BIN [mode] [rounds]   (default: vmm, 3)
set -uo pipefail
cd "$(dirname "$0")/.."
A_BIN=$(cd "${1:?usage: ab-throughput.sh A_BIN B_BIN [mode] [rounds]}" && pwd) || exit 2
B_BIN=$(cd "${2:?usage: ab-throughput.sh A_BIN B_BIN [mode] [rounds]}" && pwd) || exit 2
mode=${3:-vmm}
rounds=${4:-3}
. scripts/lib.sh
ab_binaries "$A_BIN" "$B_BIN"
trap memcuda_down EXIT
results=$(mktemp)
for r in $(seq 1 "$rounds"); do
  order="a b"; [ $((r % 2)) -eq 0 ] && order="b a"
  for side in $order; do
    [ "$side" = a ] && bins=$A_BIN || bins=$B_BIN
    run=$(mktemp -d)
    BIN_DIR=$bins memcuda_up "$run" --backend "$mode" --log-level warn || exit 1
    line=$(python3 bench/unheld_ab.py --procs "${AB_PROCS:-16}" --seconds "${AB_SECONDS:-3}") || exit 1
    memcuda_down
    echo "$side $line" | tee -a "$results"
  done
done
python3 - "$results" <<'PY'
import json, statistics, sys
runs = {"a": [], "b": []}
for line in open(sys.argv[1]):
    side, js = line.split(" ", 1)
    runs[side].append(json.loads(js))
for key in ("one_name", "a_name_each"):
    a = statistics.median(r[key] for r in runs["a"])
    b = statistics.median(r[key] for r in runs["b"])
    print(f"{key}: median A {a:,.0f} / B {b:,.0f} pairs/s (B/A {b / a:.3f})")
PY
