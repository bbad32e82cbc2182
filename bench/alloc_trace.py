"""The allocator comparison of docs/benchmarks.md: one mixed alloc/free trace
(sizes 512 B to 256 MiB, log-uniform, random frees) replayed through the
original design's candidates: PyTorch's caching allocator, CuPy's pool, the CUDA
stream-ordered pool (cudaMallocAsync), plain cudaMalloc, and RMM's pool when
its wheel is importable. mem-cuda's own pool replays the same file with
bench/pooltrace (Go). Reports time per op and peak reserved / peak live.

  python3 bench/alloc_trace.py gen trace.txt [--ops 20000 --peak-gib 8.2]
  python3 bench/alloc_trace.py run trace.txt [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from typing import Any, Callable


def gen(path: str, ops: int, peak_gib: float, seed: int) -> None:
    rng = random.Random(seed)
    live: dict[int, int] = {}
    total = 0
    cap = int(peak_gib * (1 << 30))
    nid = 0
    with open(path, "w") as f:
        for _ in range(ops):
            if live and (rng.random() < 0.45 or total > cap * 0.9):
                i = rng.choice(list(live))
                total -= live.pop(i)
                f.write(f"f {i}\n")
                continue
            size = int(math.exp(rng.uniform(math.log(512), math.log(256 << 20))))
            while total + size > cap and live:
                i = rng.choice(list(live))
                total -= live.pop(i)
                f.write(f"f {i}\n")
            nid += 1
            live[nid] = size
            total += size
            f.write(f"a {nid} {size}\n")


def load(path: str) -> list[tuple[str, int, int]]:
    out = []
    for line in open(path):
        p = line.split()
        out.append((p[0], int(p[1]), int(p[2]) if p[0] == "a" else 0))
    return out


def peak_live(trace: list[tuple[str, int, int]]) -> int:
    live: dict[int, int] = {}
    cur = peak = 0
    for op, i, n in trace:
        if op == "a":
            live[i] = n
            cur += n
            peak = max(peak, cur)
        else:
            cur -= live.pop(i)
    return peak


def replay(trace: list[tuple[str, int, int]], alloc: Callable[[int], Any], free: Callable[[Any], None],
           reserved: Callable[[], int], sync: Callable[[], None]) -> tuple[float, int]:
    held: dict[int, Any] = {}
    peak = 0
    sync()
    t0 = time.perf_counter()
    for op, i, n in trace:
        if op == "a":
            held[i] = alloc(n)
        else:
            free(held.pop(i))
        r = reserved()
        if r > peak:
            peak = r
    sync()
    dt = time.perf_counter() - t0
    for h in held.values():
        free(h)
    return dt / len(trace), peak


def run_torch(trace: Any) -> tuple[float, int]:
    import torch

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    dt, _ = replay(trace, lambda n: torch.empty(n, dtype=torch.uint8, device="cuda"), lambda h: None,
                   lambda: 0, torch.cuda.synchronize)
    peak = torch.cuda.max_memory_reserved()
    torch.cuda.empty_cache()
    return dt, peak


def run_cupy(trace: Any) -> tuple[float, int]:
    import cupy

    pool = cupy.cuda.MemoryPool()
    res = replay(trace, pool.malloc, lambda h: None, pool.total_bytes, cupy.cuda.Device().synchronize)
    pool.free_all_blocks()
    return res


def run_async(trace: Any) -> tuple[float, int]:
    from cuda.bindings import driver as drv
    from cuda.bindings import runtime as rt

    err, pool = rt.cudaDeviceGetDefaultMemPool(0)
    # Keep freed memory in the pool, as a caching allocator does.
    rt.cudaMemPoolSetAttribute(pool, rt.cudaMemPoolAttr.cudaMemPoolAttrReleaseThreshold, drv.cuuint64_t(2**64 - 1))
    rt.cudaMemPoolSetAttribute(pool, rt.cudaMemPoolAttr.cudaMemPoolAttrReservedMemHigh, drv.cuuint64_t(0))

    def alloc(n: int) -> Any:
        e, p = rt.cudaMallocAsync(n, 0)
        assert e == rt.cudaError_t.cudaSuccess, e
        return p

    dt, _ = replay(trace, alloc, lambda p: rt.cudaFreeAsync(p, 0), lambda: 0, rt.cudaDeviceSynchronize)
    _, high = rt.cudaMemPoolGetAttribute(pool, rt.cudaMemPoolAttr.cudaMemPoolAttrReservedMemHigh)
    rt.cudaMemPoolTrimTo(pool, 0)
    return dt, int(high)


def run_malloc(trace: Any) -> tuple[float, int]:
    from cuda.bindings import runtime as rt

    live = {"n": 0}
    sizes: dict[int, int] = {}

    def alloc(n: int) -> Any:
        e, p = rt.cudaMalloc(n)
        assert e == rt.cudaError_t.cudaSuccess, e
        sizes[int(p)] = n
        live["n"] += n
        return p

    def free(p: Any) -> None:
        rt.cudaFree(p)
        live["n"] -= sizes.pop(int(p))

    return replay(trace, alloc, free, lambda: live["n"], rt.cudaDeviceSynchronize)


def run_rmm(trace: Any) -> tuple[float, int]:
    import rmm

    cuda_mr = rmm.mr.CudaMemoryResource()
    pool = rmm.mr.PoolMemoryResource(cuda_mr, initial_pool_size=0)
    stats = rmm.mr.StatisticsResourceAdaptor(pool)
    return replay(trace, lambda n: rmm.DeviceBuffer(size=n, mr=stats), lambda h: None, lambda: pool.pool_size(), lambda: None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["gen", "run"])
    ap.add_argument("trace")
    ap.add_argument("--ops", type=int, default=20000)
    ap.add_argument("--peak-gib", type=float, default=8.2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.cmd == "gen":
        gen(args.trace, args.ops, args.peak_gib, args.seed)
        return
    trace = load(args.trace)
    live = peak_live(trace)
    results: dict[str, Any] = {"peak_live": live, "ops": len(trace)}
    for name, fn in [("pytorch caching allocator", run_torch), ("cupy memory pool", run_cupy),
                     ("cudaMallocAsync pool", run_async), ("cudaMalloc", run_malloc), ("rmm pool", run_rmm)]:
        try:
            dt, peak = fn(trace)
        except (ImportError, AttributeError, OSError) as e:  # not installed, or its libraries missing
            results[name] = {"skipped": str(e)}
            print(f"{name}: skipped ({e})", file=sys.stderr)
            continue
        results[name] = {"us_per_op": dt * 1e6, "peak_reserved": peak, "reserved_over_live": peak / live}
        print(f"| {name} | {dt * 1e6:.1f} | {peak / live:.3f} |", flush=True)
    if args.out:
        json.dump(results, open(args.out, "w"), indent=2)


if __name__ == "__main__":
    main()
