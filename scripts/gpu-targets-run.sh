#!/usr/bin/env bash
# Issue 18's speed targets in one device call, after `make gpu-suite` (the
# call carries .device/bin, .device/redis, .device/pywheels,
# .device/test/gpu.test.gz and python/memcuda/_speedups.abi3.so): the GPU
# client tests (test_gpu, test_gpu_survival, test_pieces, test_wire,
# test_transport); per backend, bench/gpu_bench.py (BENCH_ARGS, default
# --only get,create --n 1000) and bench/client_work.py; unless
# SKIP_ALLOC=1, each allocator trace through pooltrace without and with
# -min-growth 256, twice in turn, and through the peers (as each counts
# itself, then the device memory each took), and a segment made and
# released by size; ONLY_ALLOC=1 runs the traces alone, POOL_GROWTHS
# sets the -min-growth replays, ALLOC_KINDS the traces (RMM among the
# peers when .device/wheels is carried too). Each step runs
# only while LIMIT seconds (default 540) leave room for it. SKIP_TESTS=1
# leaves the tests out.
set -uo pipefail
export OUT=${OUT:-$PWD/gpu-out}
LIMIT=${LIMIT:-540}
left() { [ $SECONDS -lt $((LIMIT - $1)) ]; }
D=$PWD/.device
for f in "$D"/bin/*.gz "$D"/test/*.gz; do [ -f "$f" ] && gunzip -f "$f"; done
if [ -z "${ONLY_ALLOC:-}${SKIP_TESTS:-}" ]; then
  echo "=== tests"
  SKIP_GO_TESTS=1 PYTEST_ARGS="tests/test_gpu.py tests/test_gpu_survival.py tests/test_pieces.py tests/test_wire.py tests/test_transport.py" SKIP_BENCH=1 \
    MEMCUDA_REQUIRE_SPEEDUPS=1 bash scripts/gpu-suite-run.sh > $OUT/tests.log 2>&1
  grep -E 'passed|failed|^FAILED|suite status|^(NVIDIA|torch)' $OUT/tests.log
  echo "t=$SECONDS"
fi
export LD_LIBRARY_PATH=$D/redis/usr/lib/x86_64-linux-gnu REDIS_SERVER=$D/redis/usr/bin/redis-server BIN_DIR=$D/bin MEMCUDA_BIN_DIR=$D/bin PYTHONUNBUFFERED=1
export PYTHONPATH=$D/pyclient
. scripts/lib.sh
# The client's pure-Python packages (redis-py), unless the tests unpacked them.
[ -d "$D/pyclient" ] || unpack_wheels "$D/pyclient" "$D/pywheels"
for mode in vmm legacy; do
  [ -z "${ONLY_ALLOC:-}" ] && left 150 || break
  RUN=$(mktemp -d)
  memcuda_up "$RUN" --backend $mode --log-level warn --metrics-addr 127.0.0.1:19477
  export MEMCUDA_METRICS_URL=http://127.0.0.1:19477/metrics
  MEMCUDA_BACKEND=$mode timeout 240 python3 bench/gpu_bench.py ${BENCH_ARGS:---only get,create --n 1000} > $OUT/b-$mode.log 2>&1
  timeout 60 python3 bench/client_work.py --n 4000 > $OUT/cw-$mode.log 2>&1
  echo "=== $mode t=$SECONDS"
  cat $OUT/cw-$mode.log
  grep -E '^\| (create|get|floor|first get|unheld|warm|x\.mul|[0-9]+ proc)|^create / echo|^cold get split|^create split' $OUT/b-$mode.log | cut -c1-250
  memcuda_down
done
# RMM, when its wheels are carried (.device/wheels): unpacked, not installed.
[ -n "${SKIP_ALLOC:-}" ] || [ -d "$D/pylib" ] || unpack_wheels "$D/pylib" "$D/wheels"
for kind in ${ALLOC_KINDS:-mixed holes small llm}; do
  [ -z "${SKIP_ALLOC:-}" ] && left 60 || break
  gen=(--kind "$kind"); [ "$kind" = small ] && gen+=(--peak-gib 2)
  python3 bench/alloc_trace.py gen "/tmp/t-$kind.txt" "${gen[@]}"
  echo "=== trace $kind t=$SECONDS"
  for g in ${POOL_GROWTHS:-0 256 0 256}; do
    "$D/bin/pooltrace" -backend vmm -pieces 8 -whole-maps -min-growth $g "/tmp/t-$kind.txt" 2>&1 | grep -E '^\||segments made' | cut -c1-160
  done
  left 40 && PYTHONPATH=$D/pylib:$PYTHONPATH timeout 120 python3 bench/alloc_trace.py run "/tmp/t-$kind.txt" --device --out "$OUT/alloc-$kind.json" 2>&1 | grep -E '^\|' | cut -c1-120
done
echo "=== segments t=$SECONDS"
[ -z "${SKIP_ALLOC:-}" ] && left 20 && timeout 60 "$D/test/gpu.test" -test.run '^$' -test.bench Segment -test.benchtime 30x 2>&1 | grep -E '^Benchmark|FAIL'
echo "done t=$SECONDS"
