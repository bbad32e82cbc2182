#!/usr/bin/env bash
# A/B benchmark on a GPU machine: the build in BASE (a directory with bin/
# holding memcuda-agent and memcuda, python/ and bench/ of the baseline
# commit) against this checkout's .device build (`make gpu-suite`), in the
# same session, alternating A B B A per backend so that a drifting machine
# does not favour either. Each run starts its own Redis and agent.
#   bash scripts/gpu-ab.sh BASE [modes...]   (default modes: vmm legacy)
# A BASE without bench/ is an agent-only A/B: its runs use this tree's
# client and benchmark too (and this tree's CLI when BASE/bin has none).
# Env: AB_N samples per measure (default 1000); AB_ARGS more arguments of
# gpu_bench.py for every run (--only unheld); OUT where logs go. Against a
# baseline with its own benchmark, this tree's runs leave out the measures
# it lacks (unheld gets).
set -uo pipefail
cd "$(dirname "$0")/.."
BASE=$(cd "${1:?usage: gpu-ab.sh BASE [modes...]}" && pwd)
shift
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(vmm legacy)
D=$PWD/.device
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$D/redis/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export REDIS_SERVER=$D/redis/usr/bin/redis-server
for f in "$D"/bin/*.gz "$BASE"/bin/*.gz; do [ -f "$f" ] && gunzip -f "$f"; done
chmod +x "$D"/bin/* "$BASE"/bin/* # gunzip keeps the .gz file's mode, which may have lost it
[ -x "$BASE/bin/memcuda" ] || cp "$D/bin/memcuda" "$BASE/bin/memcuda"
BASE_TREE=$BASE
[ -f "$BASE/bench/gpu_bench.py" ] || BASE_TREE=$PWD
. scripts/lib.sh
status=0
mkdir -p "$OUT/ab"
n=0
# one LABEL BIN_DIR TREE MODE: the benchmark of TREE's client against BIN_DIR's agent.
one() {
  local label=$1 bins=$2 tree=$3 mode=$4 extra=()
  [ "$tree" = "$PWD" ] && [ "$BASE_TREE" != "$PWD" ] && extra=(--skip-unheld)
  read -ra more <<<"${AB_ARGS:-}"
  extra+=("${more[@]}")
  n=$((n + 1))
  local log=$OUT/ab/$n-$label-$mode
  echo; echo "=== $n: $label $mode"
  RUN=$(mktemp -d)
  BIN_DIR=$bins memcuda_up "$RUN" --backend "$mode" --log-level warn --metrics-addr "" || { status=1; return; }
  MEMCUDA_BACKEND=$mode python3 "$tree/bench/gpu_bench.py" --n "${AB_N:-1000}" --out "$log.json" "${extra[@]}" \
    >"$log.log" 2>&1 || { echo "FAILED: $label $mode"; tail -20 "$log.log"; status=1; }
  grep -E '^\| (get|create|warm get\+release, 16|unheld)' "$log.log"
  memcuda_down
  rm -rf "$RUN"
}
for mode in "${modes[@]}"; do
  one base "$BASE/bin" "$BASE_TREE" "$mode"
  one new "$D/bin" "$PWD" "$mode"
  one new "$D/bin" "$PWD" "$mode"
  one base "$BASE/bin" "$BASE_TREE" "$mode"
done
tar -C "$OUT" -czf "$OUT/ab.tar.gz" ab && rm -rf "$OUT/ab"
echo; echo "=== ab status: $status"
exit $status
