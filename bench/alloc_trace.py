"""The allocator comparison of docs/benchmarks.md: alloc/free traces replayed
through the original design's candidates: PyTorch's caching allocator (by
default and with expandable_segments:True), CuPy's pool, the CUDA
stream-ordered pool (cudaMallocAsync), plain cudaMalloc, and RMM's pool when
its wheel is importable. mem-cuda's own pool replays the same file with
bench/pooltrace (Go). Reports time per op and peak reserved / peak live as
each allocator counts it; with --device, also the peak of the device memory
each one took (cudaMemGetInfo, in an untimed second replay), which counts
what the driver rounds up beneath an allocator's own count.

Traces (--kind):
  mixed   sizes 512 B to 256 MiB, log-uniform, random frees (--peak-gib)
  llm     LLM serving: a 7B model's bf16 weights loaded once, then steps whose
          activations are sized by the batch's token count and freed in
          reverse order layer by layer, and 2 MiB KV blocks that grow per
          request and are freed when it ends
  small   90 % of sizes 512 B to 64 KiB, 10 % 1 to 64 MiB, random frees
  holes   rounds of 1-4 MiB blocks, every other one freed, then 6-12 MiB
          blocks that fit none of the holes (what splits a pool's segments)

  python3 bench/alloc_trace.py gen trace.txt [--kind mixed --ops 20000 --peak-gib 8.2]
  python3 bench/alloc_trace.py run trace.txt [--device] [--out results.json]
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


class _Writer:
    """Writes a trace and keeps its live set."""

    def __init__(self, path: str) -> None:
        self.f = open(path, "w")
        self.live: dict[int, int] = {}
        self.total = 0
        self.ops = 0
        self._next = 0

    def alloc(self, size: int) -> int:
        self._next += 1
        self.live[self._next] = size
        self.total += size
        self.ops += 1
        self.f.write(f"a {self._next} {size}\n")
        return self._next

    def free(self, i: int) -> None:
        self.total -= self.live.pop(i)
        self.ops += 1
        self.f.write(f"f {i}\n")

    def close(self) -> None:
        self.f.close()


def gen_llm(path: str, ops: int, seed: int) -> None:
    rng = random.Random(seed)
    w = _Writer(path)
    hidden, inter, layers, vocab, bf16 = 4096, 11008, 32, 32000, 2
    w.alloc(vocab * hidden * bf16)  # embeddings
    for _ in range(layers):
        for _ in range(4):
            w.alloc(hidden * hidden * bf16)  # q, k, v, o
        for _ in range(3):
            w.alloc(hidden * inter * bf16)  # gate, up, down
        for _ in range(2):
            w.alloc(hidden * bf16)  # norms
    w.alloc(hidden * bf16)
    w.alloc(vocab * hidden * bf16)  # lm head
    block_tokens, block = 16, 2 << 20
    reqs: list[dict[str, Any]] = []
    while w.ops < ops:
        while len(reqs) < 32:
            prompt = rng.randint(16, 1024)
            reqs.append({"new": prompt, "done": 0, "left": rng.randint(32, 1024), "blocks": []})
        tokens = 0
        for r in reqs:
            t = r["new"] if r["new"] else 1
            r["new"] = 0
            tokens += t
            for _ in range((r["done"] + t + block_tokens - 1) // block_tokens - len(r["blocks"])):
                r["blocks"].append(w.alloc(block))
            r["done"] += t
        resid = w.alloc(tokens * hidden * bf16)
        for _ in range(layers):
            acts = [w.alloc(tokens * hidden * bf16) for _ in range(3)] + [w.alloc(tokens * inter * bf16) for _ in range(2)]
            for a in reversed(acts):
                w.free(a)
        logits = w.alloc(len(reqs) * vocab * 4)
        w.free(logits)
        w.free(resid)
        for r in reqs:
            r["left"] -= 1
        for r in [r for r in reqs if r["left"] <= 0]:
            for b in r["blocks"]:
                w.free(b)
            reqs.remove(r)
    w.close()


def gen_small(path: str, ops: int, peak_gib: float, seed: int) -> None:
    rng = random.Random(seed)
    w = _Writer(path)
    cap = int(peak_gib * (1 << 30))
    while w.ops < ops:
        if w.live and (rng.random() < 0.45 or w.total > cap * 0.9):
            w.free(rng.choice(list(w.live)))
            continue
        if rng.random() < 0.9:
            size = int(math.exp(rng.uniform(math.log(512), math.log(64 << 10))))
        else:
            size = int(math.exp(rng.uniform(math.log(1 << 20), math.log(64 << 20))))
        w.alloc(size)
    w.close()


def gen_holes(path: str, ops: int, seed: int) -> None:
    rng = random.Random(seed)
    w = _Writer(path)
    while w.ops < ops:
        small = [w.alloc(rng.randint(1 << 20, 4 << 20)) for _ in range(200)]
        for i in small[::2]:
            w.free(i)
        big = [w.alloc(rng.randint(6 << 20, 12 << 20)) for _ in range(100)]
        rest = small[1::2] + big
        rng.shuffle(rest)
        for i in rest:
            w.free(i)
    w.close()


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
           reserved: Callable[[], int], sync: Callable[[], None], device: bool = False) -> tuple[float, int]:
    """Replays the trace: (seconds per op, the peak of reserved() after
    each op; with device, of device_reserved() instead)."""
    held: dict[int, Any] = {}
    peak = 0
    sync()
    if device:
        reserved = device_reserved()  # after the sync: what was freed before is gone
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


def device_reserved() -> Callable[[], int]:
    """The device memory taken since this call (cudaMemGetInfo's total less
    free): what an allocator holds from the driver, whatever it counts
    itself. A driver call per read, so replay reads it in place of an
    allocator's own count only in the untimed pass (--device)."""
    from cuda.bindings import runtime as rt

    def used() -> int:
        e, free, total = rt.cudaMemGetInfo()
        assert e == rt.cudaError_t.cudaSuccess, e
        return int(total) - int(free)

    base = used()
    return lambda: used() - base


def run_torch(trace: Any, device: bool = False) -> tuple[float, int]:
    import torch

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    dt, peak = replay(trace, lambda n: torch.empty(n, dtype=torch.uint8, device="cuda"), lambda h: None,
                      lambda: 0, torch.cuda.synchronize, device)
    if not device:
        peak = torch.cuda.max_memory_reserved()
    torch.cuda.empty_cache()
    return dt, peak


def run_torch_expandable(trace: Any, device: bool = False) -> tuple[float, int]:
    """PyTorch with expandable_segments:True, in a process of its own (the
    setting is read when CUDA starts)."""
    import os
    import subprocess

    env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
    cmd = [sys.executable, __file__, "run", TRACE_PATH, "--only", "torch"] + (["--device"] if device else [])
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise OSError(f"the expandable_segments run failed: {r.stderr[-500:]}")
    got = json.loads(r.stdout.strip().splitlines()[-1])
    return got["dt"], got["peak"]


TRACE_PATH = ""


def run_cupy(trace: Any, device: bool = False) -> tuple[float, int]:
    import cupy

    pool = cupy.cuda.MemoryPool()
    # Its own count is of the bytes it asked cudaMalloc for, which rounds
    # them up beneath it: only the device pass sees what it holds.
    res = replay(trace, pool.malloc, lambda h: None, pool.total_bytes, cupy.cuda.Device().synchronize, device)
    pool.free_all_blocks()
    return res


def run_async(trace: Any, device: bool = False) -> tuple[float, int]:
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

    def trim() -> None:
        # A trim keeps what frees still pending on the stream hold, so it
        # follows a sync: replay frees what is left held without one.
        rt.cudaDeviceSynchronize()
        rt.cudaMemPoolTrimTo(pool, 0)

    trim()
    dt, peak = replay(trace, alloc, lambda p: rt.cudaFreeAsync(p, 0), lambda: 0, rt.cudaDeviceSynchronize, device)
    if not device:
        _, high = rt.cudaMemPoolGetAttribute(pool, rt.cudaMemPoolAttr.cudaMemPoolAttrReservedMemHigh)
        peak = int(high)
    trim()
    return dt, peak


def run_malloc(trace: Any, device: bool = False) -> tuple[float, int]:
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

    return replay(trace, alloc, free, lambda: live["n"], rt.cudaDeviceSynchronize, device)


def run_rmm(trace: Any, device: bool = False) -> tuple[float, int]:
    import rmm

    cuda_mr = rmm.mr.CudaMemoryResource()
    pool = rmm.mr.PoolMemoryResource(cuda_mr, initial_pool_size=0)
    stats = rmm.mr.StatisticsResourceAdaptor(pool)
    return replay(trace, lambda n: rmm.DeviceBuffer(size=n, mr=stats), lambda h: None, lambda: pool.pool_size(),
                  lambda: None, device)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["gen", "run"])
    ap.add_argument("trace")
    ap.add_argument("--ops", type=int, default=20000)
    ap.add_argument("--peak-gib", type=float, default=8.2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default="")
    ap.add_argument("--kind", choices=["mixed", "llm", "small", "holes"], default="mixed")
    ap.add_argument("--only", default="", help="internal: run one allocator (torch) and print its result as JSON")
    ap.add_argument("--device", action="store_true",
                    help="after each allocator's timed replay, an untimed one reading its peak from the device's "
                         "free memory (cudaMemGetInfo) instead of the allocator's own count")
    args = ap.parse_args()
    if args.cmd == "gen":
        if args.kind == "llm":
            gen_llm(args.trace, args.ops, args.seed)
        elif args.kind == "small":
            gen_small(args.trace, args.ops, args.peak_gib, args.seed)
        elif args.kind == "holes":
            gen_holes(args.trace, args.ops, args.seed)
        else:
            gen(args.trace, args.ops, args.peak_gib, args.seed)
        return
    global TRACE_PATH
    TRACE_PATH = args.trace
    trace = load(args.trace)
    if args.only == "torch":
        dt, peak = run_torch(trace, args.device)
        print(json.dumps({"dt": dt, "peak": peak}))
        return
    live = peak_live(trace)
    results: dict[str, Any] = {"peak_live": live, "ops": len(trace)}
    for name, fn in [("pytorch caching allocator", run_torch), ("pytorch, expandable_segments:True", run_torch_expandable),
                     ("cupy memory pool", run_cupy), ("cudaMallocAsync pool", run_async), ("cudaMalloc", run_malloc),
                     ("rmm pool", run_rmm)]:
        try:
            dt, peak = fn(trace)
        except (ImportError, AttributeError, OSError) as e:  # not installed, or its libraries missing
            results[name] = {"skipped": str(e)}
            print(f"{name}: skipped ({e})", file=sys.stderr)
            continue
        results[name] = {"us_per_op": dt * 1e6, "peak_reserved": peak, "reserved_over_live": peak / live}
        row = f"| {name} | {dt * 1e6:.1f} | {peak / live:.6f} |"
        if args.device:
            _, dev = fn(trace, True)
            results[name].update(device_peak=dev, device_over_live=dev / live)
            row += f" {dev / live:.6f} |"
        print(row, flush=True)
    if args.out:
        json.dump(results, open(args.out, "w"), indent=2)


if __name__ == "__main__":
    main()
