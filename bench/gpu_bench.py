"""GPU benchmarks of mem-cuda against what users would otherwise use, each
measured in the same run. Needs a running agent ($MEMCUDA_SOCKET), PyTorch
with a GPU. Prints a Markdown table; writes all numbers as JSON to --out."""
from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import memcuda  # noqa: E402
from memcuda import _cuda  # noqa: E402

RESULTS: dict[str, Any] = {}
ROWS: list[tuple[str, str, str, str, str]] = []
NOTES: list[str] = []


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p / 100))]


def us(x: float) -> str:
    return f"{x * 1e6:.1f}"


def timed(fn: Callable[[], Any], n: int, warm: int = 20) -> list[float]:
    for _ in range(warm):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def row(what: str, ours: list[float], base_name: str, base: list[float], target: str) -> None:
    RESULTS[what] = {"p50": pct(ours, 50), "p99": pct(ours, 99), "baseline": base_name,
                     "baseline_p50": pct(base, 50), "baseline_p99": pct(base, 99)}
    ROWS.append((what, f"{us(pct(ours, 50))} / {us(pct(ours, 99))}", f"{base_name}: {us(pct(base, 50))} / {us(pct(base, 99))}",
                 f"{pct(ours, 50) / pct(base, 50):.2f}x", target))


def agent_ops() -> dict[str, tuple[float, float]]:
    """(count, seconds) per socket op from the agent's metrics
    ($MEMCUDA_METRICS_URL), to split a call's time between agent and client."""
    url = os.environ.get("MEMCUDA_METRICS_URL")
    if not url:
        return {}
    import re
    import urllib.request

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[str, list[float]] = {}
    for m in re.finditer(r'^memcuda_op_duration_seconds_(sum|count)\{op="(\w+)",path="socket"\} (\S+)$', text, re.M):
        kind, op, v = m.groups()
        out.setdefault(op, [0.0, 0.0])[0 if kind == "count" else 1] = float(v)
    return {op: (c, t) for op, (c, t) in out.items()}


def agent_mean(before: dict[str, tuple[float, float]], op: str) -> str:
    after = agent_ops()
    if op not in after:
        return ""
    c0, t0 = before.get(op, (0.0, 0.0))
    c1, t1 = after[op]
    return f"agent-side mean {(t1 - t0) / max(1.0, c1 - c0) * 1e6:.1f} us over {c1 - c0:.0f} {op}s"


# --- get ---------------------------------------------------------------------

def bench_get(n: int) -> None:
    import torch

    s = memcuda.connect()
    s.create("b.get", (1024, 1024), "f32").release()
    s.create("b.keep", (16,), "f32").release()
    keep = s.get("b.keep")  # same small segment? keeps the segment mapped either way
    hold = s.get("b.get")

    # get alone: its release is sent after the timed call and its reply read
    # in front of the next get's (the client pipelines releases).
    held: list[float] = []
    before = agent_ops()
    for i in range(n + 20):
        t0 = time.perf_counter()
        t = s.get("b.get")
        dt = time.perf_counter() - t0
        t.release()
        if i >= 20:
            held.append(dt)

    note = agent_mean(before, "get")
    if note:
        NOTES.append(f"warm get: {note}")

    def warm_pair() -> None:
        s.get("b.get").release()

    pair = timed(warm_pair, n)
    s.flush()
    # The same get as a precomputed frame, reply read raw: the agent and the
    # socket alone, without the client's encoding, decoding and bookkeeping.
    import socket as so

    from memcuda import _wire

    fget = _wire.encode_request(1 << 40, "get", name="b.get")
    frel = _wire.encode_request(1 << 40, "release", name="b.get")

    def raw_get() -> None:
        s._sock.sendall(fget)
        s._sock.recvmsg(65536, so.CMSG_SPACE(32))
        s._sock.sendall(frel)
        s._sock.recvmsg(65536, so.CMSG_SPACE(32))

    raw_frames = [x / 2 for x in timed(raw_get, n)]
    hold.release()
    # First reference of the connection, segment already mapped through b.keep
    # when both share a segment: a Redis round trip per get and per release.
    def warm_first() -> None:
        t = s.get("b.get")
        t.release()
        s.flush()  # the release's Redis script inside the timed call

    first = timed(warm_first, n)
    keep.release()

    # Cold: a fresh connection; each get brings a new segment (32 MiB tensors
    # get their own segments): descriptor over the socket + import + map.
    k = 48
    for i in range(k):
        s.create(f"b.cold{i}", (8 << 20,), "f32").release()
    raw: list[float] = []
    orig = _cuda.import_segment

    def instrumented(fd: int, info: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return orig(fd, info)
        finally:
            raw.append(time.perf_counter() - t0)

    _cuda.import_segment = instrumented  # type: ignore[assignment]
    cold: list[float] = []
    c = memcuda.connect()
    ts = []
    before = agent_ops()
    for i in range(k):
        t0 = time.perf_counter()
        ts.append(c.get(f"b.cold{i}"))
        cold.append(time.perf_counter() - t0)
    _cuda.import_segment = orig  # type: ignore[assignment]
    note = agent_mean(before, "get")
    if note:
        NOTES.append(f"cold get: {note}")
    for t in ts:
        t.release()
    c.close()
    for i in range(k):
        s.delete(f"b.cold{i}")

    # torch.multiprocessing: share a CUDA tensor through a Queue, consumer acks.
    ctx = torch.multiprocessing.get_context("spawn")
    q_in, q_out = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_mp_consumer, args=(q_in, q_out))
    p.start()
    x = torch.empty(8 << 20, device="cuda")
    mp_times = []
    for i in range(60):
        t0 = time.perf_counter()
        q_in.put(x)
        q_out.get()
        if i >= 10:
            mp_times.append(time.perf_counter() - t0)
    q_in.put(None)
    p.join()

    row("get, warm (connection holds the tensor)", held, "torch.multiprocessing Queue share", mp_times, "<= 50 us p50")
    row("get+release pair, warm", pair, "torch.multiprocessing Queue share", mp_times, "")
    echo = socket_rtt(n)
    row("get, warm (connection holds the tensor) ", held, "Python Unix-socket echo round trip", echo, "")
    row("agent round trip, raw get frame (no client work)", raw_frames, "Python Unix-socket echo round trip", echo, "")
    row("get, warm (first reference: one Redis script each way)", first, "torch.multiprocessing Queue share", mp_times, "")
    row("get, cold (new segment: fd + import + map)", cold, "raw driver import+map (same calls)", raw, "<= 1.2x raw")
    row("Unix-socket round trip passing a descriptor (part of a cold get)", socket_rtt(n, with_fd=True),
        "Python Unix-socket echo round trip", echo, "")
    s.delete("b.get")
    s.delete("b.keep")
    s.close()


def _mp_consumer(q_in: Any, q_out: Any) -> None:
    while True:
        t = q_in.get()
        if t is None:
            return
        q_out.put(t.data_ptr())
        del t


def _echo_server(path: str, ready: Any, with_fd: bool) -> None:
    import socket as so

    srv = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    ready.set()
    c, _ = srv.accept()
    fd = os.memfd_create("echo") if with_fd else -1
    while True:
        b = c.recv(4096)
        if not b:
            return
        if with_fd:
            so.send_fds(c, [b], [fd])
        else:
            c.sendall(b)


def socket_rtt(n: int, with_fd: bool = False) -> list[float]:
    """Round trip of a 100-byte message over a Unix socket to another Python
    process: the floor under any request to the agent on this machine. With
    with_fd every answer carries a descriptor (as a cold get's does), which
    the client closes."""
    import socket as so
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "echo.sock")
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_echo_server, args=(path, ready, with_fd))
    p.start()
    ready.wait()
    c = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    c.connect(path)
    msg = b"x" * 100

    def once() -> None:
        c.sendall(msg)
        if with_fd:
            _, fds, _, _ = so.recv_fds(c, 4096, 1, getattr(so, "MSG_CMSG_CLOEXEC", 0))
            for f in fds:
                os.close(f)
        else:
            c.recv(4096)

    out = timed(once, n)
    c.close()
    p.join()
    return out


# --- create ------------------------------------------------------------------

def bench_create(n: int) -> None:
    import torch

    s = memcuda.connect()
    before = agent_ops()
    times = []  # only the create call is timed
    for j in range(n + 20):
        name = f"b.c.{j}"
        t0 = time.perf_counter()
        t = s.create(name, (256, 1024), "bf16")
        dt = time.perf_counter() - t0
        t.release()
        s.delete(name)
        if j >= 20:
            times.append(dt)

    note = agent_mean(before, "create")
    if note:
        RESULTS["create_agent"] = note
        NOTES.append(f"create: {note}")
    # With write-behind the create script runs after the answer, on the
    # connection's thread: its own metric.
    note = agent_mean(before, "registry_write")
    if note:
        NOTES.append(f"create: registry write after the answer: {note}")

    def torch_empty() -> None:
        x = torch.empty((256, 1024), dtype=torch.bfloat16, device="cuda")
        del x

    te = timed(torch_empty, n)
    lib = ctypes.CDLL("libcuda.so.1")
    _cuda._load()
    ptr = ctypes.c_uint64()
    h = (ctypes.c_char * 64)()
    frees = []

    def malloc_ipc() -> None:
        with _cuda._Current(0):
            _cuda._check("cuMemAlloc", lib.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(512 << 10)))
            _cuda._check("cuIpcGetMemHandle", lib.cuIpcGetMemHandle(h, ptr))
        frees.append(ptr.value)

    mi = timed(malloc_ipc, n, warm=5)
    with _cuda._Current(0):
        for p in frees:
            lib.cuMemFree_v2(ctypes.c_uint64(p))
    row("create bf16 256x1024 (warm pool, zero-filled)", times, "torch.empty (caching allocator)", te, "<= 60 us p50")
    row("create bf16 256x1024 (warm pool, zero-filled) ", times, "cuMemAlloc + cuIpcGetMemHandle", mi, "<= 60 us p50")
    s.close()


# --- throughput --------------------------------------------------------------

def _tput_worker(sock: str, seconds: float, start: float, out: Any) -> None:
    os.environ["MEMCUDA_SOCKET"] = sock
    s = memcuda.connect()
    hold = s.get("b.tput")
    for _ in range(200):
        s.get("b.tput").release()
    while time.time() < start:
        time.sleep(0.001)
    n = 0
    end = time.time() + seconds
    while time.time() < end:
        s.get("b.tput").release()
        n += 1
    hold.release()
    out.put(n)


def bench_throughput(procs: list[int], seconds: float) -> None:
    s = memcuda.connect()
    s.create("b.tput", (1024,), "f32").release()
    ctx = mp.get_context("spawn")
    for p in procs:
        q = ctx.Queue()
        start = time.time() + 3.0
        ws = [ctx.Process(target=_tput_worker, args=(os.environ["MEMCUDA_SOCKET"], seconds, start, q)) for _ in range(p)]
        for w in ws:
            w.start()
        total = sum(q.get() for _ in ws)
        for w in ws:
            w.join()
        rate = total / seconds
        RESULTS[f"throughput_{p}"] = rate
        ROWS.append((f"warm get+release, {p} client process(es)", f"{rate:,.0f} gets/s", "", "", ">= 100k/s at 16" if p == 16 else ""))
    s.delete("b.tput")
    s.close()


# --- bandwidth ---------------------------------------------------------------

def bench_bandwidth() -> None:
    import torch

    s = memcuda.connect()
    n = 256 << 20  # 1 GiB of f32
    t = s.create("b.bw", (n,), "f32")
    shared = t.torch()
    local = torch.empty(n, device=shared.device)
    shared.fill_(1.0)
    local.fill_(1.0)

    def run(x: Any) -> list[float]:
        times = []
        for i in range(25):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            x.mul_(1.0000001)
            b.record()
            b.synchronize()
            if i >= 5:
                times.append(a.elapsed_time(b) / 1e3)
        return times

    rl, rs = run(local), run(shared)
    rl2 = run(local)
    loc = statistics.median(rl + rl2)
    sh = statistics.median(rs)
    gbps = 2 * 4 * n / sh / 1e9
    RESULTS["bandwidth"] = {"local_s": loc, "shared_s": sh, "shared_GBps": gbps, "ratio": loc / sh}
    ROWS.append(("x.mul_ over 1 GiB f32 (read+write)", f"{sh * 1e3:.3f} ms ({gbps:.0f} GB/s)", f"local torch tensor: {loc * 1e3:.3f} ms",
                 f"{loc / sh * 100:.1f}% of local", ">= 97%"))
    t.release()
    s.delete("b.bw")
    s.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    import torch

    RESULTS["device"] = torch.cuda.get_device_name(0)
    bench_get(args.n)
    bench_create(args.n)
    bench_throughput([1, 16], args.seconds)
    bench_bandwidth()
    print(f"\n### {RESULTS['device']} ({os.environ.get('MEMCUDA_BACKEND', 'vmm')} backend)\n")
    print("| measure | mem-cuda p50 / p99 us | baseline p50 / p99 us (same run) | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")
    for line in NOTES:
        print(f"\n{line}")
    RESULTS["notes"] = NOTES
    if args.out:
        with open(args.out, "w") as f:
            json.dump(RESULTS, f, indent=2)


if __name__ == "__main__":
    main()
