#!/usr/bin/env bash
# Runs the whole GPU suite on a GPU machine in one go (see `make gpu-suite`):
# Go cuda and backend tests, the Python tests (host and GPU, vmm and legacy),
# the demo, and the benchmarks. Logs and JSON go to $OUT (or ./gpu-out).
# ONLY_BENCH=1 skips the tests, SKIP_GO_TESTS=1 the Go tests, PYTEST_ARGS
# picks Python tests (default: all), SKIP_BENCH=1 the benchmarks,
# SKIP_GO_BENCH=1 the Go benchmarks, SKIP_WEIGHTS=1 the model-weights
# benchmark, SKIP_HANDOVER=1 the hand-over window, SKIP_ALLOC=1 the
# allocator comparison (ALLOC_KINDS its traces; POOLTRACE_BASE an older
# build's pooltrace, replayed with vmm pieces beside this one's;
# POOLTRACE_GROWTH MiB values of pooltrace -min-growth to replay as well).
# BENCH_MODES and BENCH_N pick backends and samples, BENCH_ARGS adds
# gpu_bench.py arguments (--only get,create); a mode ending in -sync runs
# that backend with --registry-write-behind=false: every Redis script
# before its answer, the baseline of write-behind.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
D=$PWD/.device
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$D/redis/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export REDIS_SERVER=$D/redis/usr/bin/redis-server
export BIN_DIR=$D/bin MEMCUDA_BIN_DIR=$D/bin
for f in "$D"/bin/*.gz "$D"/test/*.gz ${POOLTRACE_BASE:+"$POOLTRACE_BASE.gz"}; do [ -f "$f" ] && gunzip -f "$f"; done
[ -z "${POOLTRACE_BASE:-}" ] || chmod +x "$POOLTRACE_BASE"
# Pure-Python packages the machine lacks (redis-py): unpacked, not installed.
if unpack_wheels "$D/pyclient" "$D/pywheels"; then
  export PYTHONPATH=$D/pyclient${PYTHONPATH:+:$PYTHONPATH}
fi
status=0
step() { echo; echo "=== $*"; }
run() { "$@" || { echo "FAILED: $*"; status=1; }; }
# runlog LOG FILTER CMD...: runs CMD into LOG, shows LOG through FILTER (a
# shell command), and records a failure (a pipeline would lose it).
runlog() {
  local log=$1 filter=$2; shift 2
  "$@" >"$log" 2>&1
  local rc=$?
  bash -c "$filter" <"$log"
  [ $rc -eq 0 ] || { echo "FAILED: $*"; status=1; }
}

step machine
nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
"$REDIS_SERVER" --version

if [ -z "${ONLY_BENCH:-}" ]; then
  if [ -z "${SKIP_GO_TESTS:-}" ]; then
    step go cuda tests
    runlog "$OUT/go-cuda.log" "grep -E '^(--- |PASS|FAIL|ok)|\.go:[0-9]+:'" "$D/test/cuda.test" -test.v -test.count=1
    step go gpu backend tests
    runlog "$OUT/go-gpu.log" "grep -E '^(--- |PASS|FAIL|ok)|\.go:[0-9]+:'" "$D/test/gpu.test" -test.v -test.count=1
  fi
  if [ -z "${SKIP_GO_BENCH:-}${SKIP_GO_TESTS:-}" ]; then
    step go benchmarks: fill, Redis scripts, store create, the agent over its socket
    runlog "$OUT/go-bench.log" "grep -E '^Benchmark'" bash -c "$D/test/cuda.test -test.run '^\$' -test.bench . -test.benchtime 2000x &&
      $D/test/registry.test -test.run '^\$' -test.bench . -test.benchtime 2000x &&
      $D/test/store.test -test.run '^\$' -test.bench . -test.benchtime 1000x &&
      $D/test/agent.test -test.run '^\$' -test.bench Socket -test.benchtime 4000x -test.count 3"
  fi
  step python tests
  runlog "$OUT/pytest.log" "tail -25" bash -c "cd python && python3 -m pytest -q -rs -p no:cacheprovider ${PYTEST_ARGS:-tests}"
  step demo
  runlog "$OUT/demo.log" "cat" bash scripts/demo.sh
fi

if [ -z "${SKIP_BENCH:-}" ]; then
  . scripts/lib.sh
  for mode in ${BENCH_MODES:-vmm legacy vmm-sync}; do
    step "benchmarks ($mode)"
    RUN=$(mktemp -d)
    extra=()
    [[ $mode == *-sync ]] && extra=(--registry-write-behind=false)
    memcuda_up "$RUN" --backend "${mode%-sync}" "${extra[@]}" --log-level warn --metrics-addr 127.0.0.1:19477
    export MEMCUDA_METRICS_URL=http://127.0.0.1:19477/metrics
    # Redis's own round trip here, for the share of it in create and first gets.
    "$D/redis/usr/bin/redis-benchmark" -s "$RUN/redis.sock" -c 1 -n 20000 -q PING 2>&1 | tr '\r' '\n' | tail -1
    "$D/redis/usr/bin/redis-benchmark" -s "$RUN/redis.sock" -c 1 -n 20000 -q EVAL "redis.call('HSET', KEYS[1], 'refcount', 1) return redis.call('HGETALL', KEYS[1])" 1 bench:h 2>&1 | tr '\r' '\n' | tail -1
    MEMCUDA_BACKEND=$mode runlog "$OUT/bench-$mode.log" "cat" python3 bench/gpu_bench.py --out "$OUT/bench-$mode.json" --n "${BENCH_N:-2000}" ${BENCH_ARGS:-}
    memcuda_down
  done
  if [ -z "${SKIP_HANDOVER:-}" ]; then
    # Legacy memory cannot be handed over (its handles are the maker's).
    for mode in vmm; do
      step "hand-over window ($mode)"
      runlog "$OUT/handover-$mode.log" "tail -4" env HANDOVER_BIN="$D/bin/handover" ROUNDS="${HANDOVER_ROUNDS:-10}" \
        bash bench/handover.sh --backend "$mode"
    done
  fi
  if [ -z "${SKIP_WEIGHTS:-}" ]; then
    step "one copy of a model's weights for N processes"
    RUN=$(mktemp -d)
    memcuda_up "$RUN" --backend vmm --log-level warn --metrics-addr ""
    runlog "$OUT/weights.log" "tail -12" python3 bench/weights_bench.py --procs "${WEIGHTS_PROCS:-4,8}" --out "$OUT/weights.json"
    memcuda_down
  fi
  if [ -z "${SKIP_ALLOC:-}" ]; then
    # RMM from the carried wheels (a zip each: unpacked, not installed).
    unpack_wheels "$D/pylib" "$D/wheels"
    # ALLOC_KINDS picks the traces (bench/alloc_trace.py says what each is).
    for kind in ${ALLOC_KINDS:-mixed llm small holes}; do
      step "allocator trace: $kind"
      gen=(--kind "$kind")
      [ "$kind" = small ] && gen+=(--peak-gib 2)
      python3 bench/alloc_trace.py gen "/tmp/memcuda-trace-$kind.txt" "${gen[@]}"
      echo "| allocator | us per op | peak reserved / peak live |"
      echo "| --- | --- | --- |"
      run "$D/bin/pooltrace" -backend vmm "/tmp/memcuda-trace-$kind.txt"
      run "$D/bin/pooltrace" -backend vmm -pieces 8 -whole-maps "/tmp/memcuda-trace-$kind.txt"
      if [ -n "${POOLTRACE_BASE:-}" ]; then
        echo "(the next rows: POOLTRACE_BASE, then this build again)"
        run "$POOLTRACE_BASE" -backend vmm -pieces 8 -whole-maps "/tmp/memcuda-trace-$kind.txt"
        run "$D/bin/pooltrace" -backend vmm -pieces 8 -whole-maps "/tmp/memcuda-trace-$kind.txt"
      fi
      for g in ${POOLTRACE_GROWTH:-}; do
        run "$D/bin/pooltrace" -backend vmm -pieces 8 -whole-maps -min-growth "$g" "/tmp/memcuda-trace-$kind.txt"
      done
      run "$D/bin/pooltrace" -backend sim -pieces 8 "/tmp/memcuda-trace-$kind.txt"
      PYTHONPATH=$D/pylib${PYTHONPATH:+:$PYTHONPATH} run python3 bench/alloc_trace.py run "/tmp/memcuda-trace-$kind.txt" --out "$OUT/alloc-$kind.json"
    done
  fi
fi
step "suite status: $status"
exit $status
