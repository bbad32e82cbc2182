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


def interleaved(a: Callable[[], float], b: Callable[[], float], n: int, block: int = 20,
                warm: int = 3) -> tuple[list[float], list[float], list[float]]:
    """n timed calls of each of a and b (each returns the time of its timed
    part), alternating in blocks of block calls, the first warm of each
    block untimed: a ratio of two separate loops moves with whatever the
    machine did between them. Returns (a's times, b's times, the ratio of
    a's median to b's in each pair of blocks)."""
    ta: list[float] = []
    tb: list[float] = []
    ratios: list[float] = []
    while len(ta) < n:
        got = []
        for fn, out in ((a, ta), (b, tb)):
            ts = [fn() for _ in range(block)][warm:]
            out.extend(ts)
            got.append(statistics.median(ts))
        ratios.append(got[0] / got[1])
    return ta, tb, ratios


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
        s._conn.sock.sendall(fget)
        s._conn.sock.recvmsg(65536, so.CMSG_SPACE(32))
        s._conn.sock.sendall(frel)
        s._conn.sock.recvmsg(65536, so.CMSG_SPACE(32))

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
    for i in range(11 * k):
        s.create(f"b.cold{i}", (8 << 20,), "f32").release()
    # Let the agent finish what the creates left running (their registry
    # scripts: a get of a name with one pending waits for it; the clears of
    # the new segments on the GPU) before timing gets.
    s.list()
    time.sleep(0.2)
    vmm = s.hello.get("mode") == "vmm"
    names = [f"b.cold{i}" for i in range(k)]
    before = agent_ops()
    cold, raw, split, c, cold_held = cold_pass(names, 0.0)
    note = agent_mean(before, "get")
    if note:
        NOTES.append(f"cold get: {note}")
    NOTES.append(f"cold get split, p50 us: {split}")
    base_name, base_first = "raw driver open (same calls)", raw
    if vmm:
        # The raw driver sequence a process runs with a segment's descriptor
        # in hand, on segments it never mapped (as a cold get's are).
        base_name = "raw driver sequence, descriptor in hand, first map"
        base_first, ours_first = raw_first_imports([f"b.cold{i}" for i in range(3 * k, 4 * k)])
        NOTES.append(f"first maps with the descriptor in hand, alternating, p50 us: the raw sequence "
                     f"{us(pct(base_first, 50))}, the client's import_segment {us(pct(ours_first, 50))}")
        # The same round trip as a cold get's, passing one of these
        # segments' descriptors (a CUDA export) instead of a memfd.
        cuda_fd = c._segments[cold_held[0].info.segment_id].fd
        row("Unix-socket round trip passing a CUDA-exported descriptor", socket_rtt(200, with_fd=True, fd=cuda_fd),
            "same, passing a memfd", socket_rtt(200, with_fd=True), "")
    c.close()
    # What waiting does to the work after it: the same with 2 ms idle
    # before each get, and with the client polling for its answers
    # (spin_us) instead of sleeping in recvmsg.
    paused, paused_raw, split, c, _ = cold_pass([f"b.cold{i}" for i in range(k, 2 * k)], 0.002)
    c.close()
    NOTES.append(f"cold get, 2 ms idle before each: {us(pct(paused, 50))} vs import {us(pct(paused_raw, 50))}; split {split}")
    spun, spun_raw, split, c, _ = cold_pass([f"b.cold{i}" for i in range(4 * k, 5 * k)], 0.0, spin_us=300)
    c.close()
    NOTES.append(f"cold get, client polling for the answer: {us(pct(spun, 50))} vs import {us(pct(spun_raw, 50))}; "
                 f"split {split}")
    # Several names at once: the requests go together and each answer is
    # mapped while the agent answers the next.
    batch = 8
    c = memcuda.connect()
    many: list[float] = []
    held_many = []  # held: a dropped tensor's segment could be unmapped inside the next call
    for i in range(2 * k, 3 * k, batch):
        t0 = time.perf_counter()
        held_many.extend(c.get_many([f"b.cold{j}" for j in range(i, i + batch)]))
        many.extend([(time.perf_counter() - t0) / batch] * batch)
    c.close()
    if vmm:
        cold_breakdown(k)
    floor, floor_import = cold_floor([f"b.cold{i}" for i in range(5 * k, 6 * k)])
    ahead = first_gets_pushed_ahead([f"b.cold{i}" for i in range(6 * k, 7 * k)])
    cold_i, floor_i, bare_i, raw_i, note = cold_against_floor([f"b.cold{i}" for i in range(7 * k, 8 * k)],
                                                              [f"b.cold{i}" for i in range(8 * k, 9 * k)],
                                                              [f"b.cold{i}" for i in range(9 * k, 10 * k)],
                                                              [f"b.cold{i}" for i in range(10 * k, 11 * k)])
    NOTES.append(note)
    for i in range(11 * k):
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
    if vmm:
        row("get, cold (new segment: fd + import + map) ", cold, base_name, base_first, "<= 1.2x raw")
    row(f"get_many, cold, {batch} names per call (time per tensor)", many, base_name, base_first, "")
    row("floor of a cold get: bare Python round trip" + (" passing the descriptor" if vmm else "") + " + the same import",
        floor, "the import alone (same loop)", floor_import, "over 1.2x: no cold get can meet 1.2x here")
    row("get, cold against its floor (same run)", cold, "floor of a cold get", floor, "<= 1.1x the floor")
    row("get, cold against its floor (raw driver import), one of each in turn", cold_i,
        "floor of a cold get with the raw driver import, in turn", raw_i, "<= 1.1x the floor")
    row("get, cold against its floor, one of each in turn", cold_i, "floor of a cold get, in turn", floor_i,
        "<= 1.1x the floor")
    row("get, cold, in turn, against a bare agent get frame + decode + the same import", cold_i,
        "bare agent get frame + the same import, in turn", bare_i, "")
    row("bare agent get frame + the same import, in turn", bare_i, "floor of a cold get, in turn", floor_i, "")
    row("first get of a tensor, segments pushed ahead (watch_segments)", ahead, "raw driver import+map (same calls)", raw,
        "< 1.0x raw")
    row("first get of a tensor, segments pushed ahead (watch_segments) ", ahead, "get, warm (connection holds the tensor)",
        held, "")
    row("Unix-socket round trip passing a descriptor (part of a cold get)", socket_rtt(n, with_fd=True),
        "Python Unix-socket echo round trip", echo, "")
    s.delete("b.get")
    s.delete("b.keep")
    s.close()


def watching_client(names: list[str]) -> Any:
    """A fresh connection that watches segments (Client.watch_segments),
    once the agent's pushes of the segments of names are mapped."""
    c = memcuda.connect()
    c.max_idle_mappings, c.max_idle_bytes = 1 << 20, 1 << 50
    sids = {c.stat(n).segment_id for n in names}
    c.watch_segments()
    deadline = time.monotonic() + 60
    while not all(sid in c._segments and c._segments[sid].mapping is not None for sid in sids):
        if time.monotonic() > deadline:
            raise SystemExit("the watch did not map the segments within 60 s")
        time.sleep(0.01)
    return c


def first_gets_pushed_ahead(names: list[str]) -> list[float]:
    """The first get of each tensor on a watching connection (watching_client)."""
    c = watching_client(names)
    times, held = [], []
    for n in names:
        t0 = time.perf_counter()
        t = c.get(n)
        times.append(time.perf_counter() - t0)
        held.append(t)
    NOTES.append(f"segments pushed ahead: {c.prefetched} mapped by the watch before the gets")
    for t in held:
        t.release()
    c.close()
    return times


def mark_reads(client: Any) -> list[float]:
    """Notes when each response frame read off the client's socket is in
    hand (undo with `del client._conn.read_frame`)."""
    replied: list[float] = []
    read = client._conn.read_frame

    def timed_read() -> Any:
        try:
            return read()
        finally:
            replied.append(time.perf_counter())

    client._conn.read_frame = timed_read
    return replied


def cold_pass(names: list[str], pause: float, spin_us: float = 0) -> tuple[list[float], list[float], str, Any, list[Any]]:
    """Gets each name once on a fresh connection (each in its own segment:
    a cold get), timing the call, the import inside it, and when the
    answer arrived. Returns (get times, import times, split, the open
    connection, the tensors: held, so that no segment is unmapped between
    gets)."""
    raw: list[float] = []
    spans: list[tuple[float, float]] = []  # (start, end) of each import
    orig = _cuda.import_segment

    def instrumented(fd: int, info: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return orig(fd, info)
        finally:
            t1 = time.perf_counter()
            raw.append(t1 - t0)
            spans.append((t0, t1))

    from memcuda import _wire

    decoded: list[float] = []  # when each answer's JSON was decoded
    orig_decode = _wire.decode_answer

    def timed_decode(body: bytes, cache: bool = True) -> Any:
        try:
            return orig_decode(body, cache)
        finally:
            decoded.append(time.perf_counter())

    c = memcuda.connect(spin_us=spin_us)
    replied = mark_reads(c)
    _cuda.import_segment = instrumented
    _wire.decode_answer = timed_decode
    cold: list[float] = []
    to_reply: list[float] = []
    reply_to_import: list[float] = []
    reply_to_decoded: list[float] = []
    after_import: list[float] = []
    held = []
    import resource

    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    try:
        for name in names:
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            held.append(c.get(name))
            t1 = time.perf_counter()
            cold.append(t1 - t0)
            to_reply.append(replied[-1] - t0)
            reply_to_import.append(spans[-1][0] - replied[-1])
            reply_to_decoded.append(decoded[-1] - replied[-1])
            after_import.append(t1 - spans[-1][1])
    finally:
        _cuda.import_segment = orig
        _wire.decode_answer = orig_decode
        del c._conn.read_frame
    split = (f"request to reply {us(pct(to_reply, 50))}, reply to import {us(pct(reply_to_import, 50))} "
             f"(of which reading the frame and decoding its JSON {us(pct(reply_to_decoded, 50))}), "
             f"import {us(pct(raw, 50))}, import to return {us(pct(after_import, 50))}; "
             f"{(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / len(names):.1f} minor page faults per get")
    return cold, raw, split, c, held


def _raw_map(lib: Any, fd: int, size: int, desc: Any, at: int = 0) -> int:
    """What a process does with a VMM descriptor in hand: import, reserve a
    range (unless at is given), map, set access, drop the handle."""
    h = ctypes.c_uint64()
    _cuda._check("import", lib.cuMemImportFromShareableHandle(ctypes.byref(h), ctypes.c_void_p(fd), 1))
    ptr = ctypes.c_uint64(at)
    if not at:
        _cuda._check("reserve", lib.cuMemAddressReserve(ctypes.byref(ptr), ctypes.c_size_t(size), ctypes.c_size_t(0),
                                                        ctypes.c_uint64(0), ctypes.c_uint64(0)))
    _cuda._check("map", lib.cuMemMap(ptr, ctypes.c_size_t(size), ctypes.c_size_t(0), h, ctypes.c_uint64(0)))
    _cuda._check("access", lib.cuMemSetAccess(ptr, ctypes.c_size_t(size), ctypes.byref(desc), ctypes.c_size_t(1)))
    lib.cuMemRelease(h)
    return ptr.value


def _close_map(lib: Any, m: Any) -> None:
    """Unmaps what _raw_map mapped, (its pointer, its size), or closes a
    client's mapping."""
    if isinstance(m, tuple):
        lib.cuMemUnmap(ctypes.c_uint64(m[0]), ctypes.c_size_t(m[1]))
        lib.cuMemAddressFree(ctypes.c_uint64(m[0]), ctypes.c_size_t(m[1]))
    else:
        m.close()


def _passed_fds(anc: list[Any]) -> list[int]:
    """The descriptors in recvmsg's ancillary data."""
    return [int.from_bytes(p[i:i + 4], sys.byteorder) for _l, _t, p in anc for i in range(0, len(p) - 3, 4)]


def _bare_get(c: Any, frame: bytes) -> "tuple[bytes, list[Any]]":
    """frame (a request with an id no client call uses) written on c's
    socket and its answer read raw, past the client (which does not read
    it): (body, recvmsg's ancillary data)."""
    import socket as so

    from memcuda import _wire

    c._conn.sock.sendall(frame)
    data, anc, _, _ = c._conn.sock.recvmsg(65536, so.CMSG_SPACE(4 * _wire.MAX_FDS))
    return data[_wire.HEADER_SIZE:], anc


def _fetch_answers(c: Any, names: list[str]) -> "list[tuple[Any, list[int]]]":
    """Gets each name with a bare frame on c's socket, which the client
    itself does not read: (record, descriptors passed with it) for each,
    nothing mapped."""
    from memcuda import _wire

    out = []
    for n in names:
        body, anc = _bare_get(c, _wire.encode_request(1 << 40, "get", name=n))
        info = _wire.decode_answer(body, False).record
        assert info is not None
        fds = _passed_fds(anc)
        assert len(fds) == (info.ipc_mode != "legacy"), f"{n}: {len(fds)} descriptors (each tensor should have its own segment)"
        out.append((info, fds))
    return out


def raw_first_imports(names: list[str]) -> tuple[list[float], list[float]]:
    """The raw driver sequence (_raw_map) over segments this process never
    mapped, descriptors from _fetch_answers, each mapped, timed, and
    unmapped. Every other one goes through the client's own import_segment
    instead, for comparison; returns (raw, client's)."""
    c = memcuda.connect()
    got = [(fds[0], info) for info, fds in _fetch_answers(c, names)]
    lib = _cuda._load()
    ordinal = _cuda.ordinal_of(got[0][1].device_uuid)
    desc = _cuda._access(ordinal)
    out: list[float] = []
    ours: list[float] = []
    mapped: list[Any] = []
    with _cuda._Current(ordinal):
        for i, (fd, info) in enumerate(got):
            t0 = time.perf_counter()
            if i % 2:
                m = _cuda.import_segment(fd, info)
                ours.append(time.perf_counter() - t0)
                mapped.append(m)
                continue
            p = _raw_map(lib, fd, info.segment_size, desc)
            out.append(time.perf_counter() - t0)
            mapped.append((p, info.segment_size))
        for m in mapped:
            _close_map(lib, m)
    for fd, _ in got:
        os.close(fd)
    c.close()
    return out, ours


def cold_breakdown(k: int) -> None:
    """Where a cold get's import goes, call by call, on the pure-Python
    mapping path (a second fresh connection over the same tensors), and what the same import costs on a
    virtual range reserved beforehand (descriptors duplicated from that
    connection, imported again after it closed)."""
    calls: dict[str, list[float]] = {}
    orig_fn = _cuda._fn

    def timing_fn(name: str) -> Any:
        f = orig_fn(name)

        def call(*a: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return f(*a)
            finally:
                calls.setdefault(name, []).append(time.perf_counter() - t0)
        return call

    # The pure-Python mapping path: its driver calls go through _fn (the C
    # module's do not).
    c_map = _cuda.c_vmm_map
    _cuda._fn, _cuda.c_vmm_map = timing_fn, None
    c = memcuda.connect()
    try:
        ts = [c.get(f"b.cold{i}") for i in range(k)]
    finally:
        _cuda._fn, _cuda.c_vmm_map = orig_fn, c_map
    NOTES.append("cold get import, driver calls p50 us: " + ", ".join(
        f"{name} {us(pct(v, 50))}" for name, v in calls.items() if len(v) >= k // 2))
    segs = [(os.dup(c._segments[t.info.segment_id].fd), t.info.segment_size, t.info.device_uuid) for t in ts]
    for t in ts:
        t.release()
    c.close()

    lib = _cuda._load()
    ordinal = _cuda.ordinal_of(segs[0][2])
    size = segs[0][1]
    desc = _cuda._access(ordinal)
    whole: list[float] = []
    prereserved: list[float] = []
    with _cuda._Current(ordinal):
        base = ctypes.c_uint64()
        _cuda._check("cuMemAddressReserve", lib.cuMemAddressReserve(
            ctypes.byref(base), ctypes.c_size_t(size * len(segs)), ctypes.c_size_t(0), ctypes.c_uint64(0), ctypes.c_uint64(0)))
        mapped = []
        for i, (fd, sz, _) in enumerate(segs):
            t0 = time.perf_counter()
            p = _raw_map(lib, fd, sz, desc, at=base.value + i * size if i % 2 else 0)
            (prereserved if i % 2 else whole).append(time.perf_counter() - t0)
            mapped.append((p, sz, i % 2 == 0))
        for p, sz, own in mapped:
            lib.cuMemUnmap(ctypes.c_uint64(p), ctypes.c_size_t(sz))
            if own:
                lib.cuMemAddressFree(ctypes.c_uint64(p), ctypes.c_size_t(sz))
        lib.cuMemAddressFree(base, ctypes.c_size_t(size * len(segs)))
    for fd, _, _ in segs:
        os.close(fd)
    NOTES.append(f"cold get import again, p50 us: with its own reserve {us(pct(whole, 50))}, "
                 f"on a range reserved beforehand {us(pct(prereserved, 50))}")


def _mp_consumer(q_in: Any, q_out: Any) -> None:
    while True:
        t = q_in.get()
        if t is None:
            return
        q_out.put(t.data_ptr())
        del t


def _echo_server(path: str, ready: Any, with_fd: bool, fds_from_client: int) -> None:
    """Answers each message with itself. With with_fd the answer carries a
    descriptor: a memfd, or, when the client first sent fds_from_client
    descriptors, the one its message's first 8 digits number."""
    import socket as so

    srv = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    ready.set()
    c, _ = srv.accept()
    fds = [os.memfd_create("echo")] if with_fd else []
    if fds_from_client:
        fds = []
        while len(fds) < fds_from_client:
            _, got, _, _ = so.recv_fds(c, 16, _FDS_PER_MESSAGE)
            fds.extend(got)
        c.sendall(b"k")
    while True:
        b = c.recv(4096)
        if not b:
            return
        if with_fd:
            so.send_fds(c, [b], [fds[int(b[:8]) % len(fds)]])
        else:
            c.sendall(b)


_FDS_PER_MESSAGE = 16


class _Echo:
    """A Python process across a Unix socket that answers every message at
    once (see _echo_server): the floor under any request to the agent."""

    def __init__(self, with_fd: bool, fds: "list[int] | None" = None) -> None:
        import socket as so
        import tempfile

        self.with_fd = with_fd
        path = os.path.join(tempfile.mkdtemp(), "echo.sock")
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        self.proc = ctx.Process(target=_echo_server, args=(path, ready, with_fd, len(fds or ())))
        self.proc.start()
        ready.wait()
        self.sock = so.socket(so.AF_UNIX, so.SOCK_STREAM)
        self.sock.connect(path)
        if fds:
            for i in range(0, len(fds), _FDS_PER_MESSAGE):
                so.send_fds(self.sock, [b"f"], fds[i:i + _FDS_PER_MESSAGE])
            self.sock.recv(1)

    def round_trip(self, i: int = 0) -> int:
        """Sends a 100-byte message naming descriptor i; returns the
        descriptor that came back (the caller closes it), or -1."""
        import socket as so

        self.sock.sendall(b"%08d" % i + b"x" * 92)
        if not self.with_fd:
            self.sock.recv(4096)
            return -1
        _, fds, _, _ = so.recv_fds(self.sock, 4096, 1, getattr(so, "MSG_CMSG_CLOEXEC", 0))
        return fds[0]

    def close(self) -> None:
        self.sock.close()
        self.proc.join()


def socket_rtt(n: int, with_fd: bool = False, fd: int = -1) -> list[float]:
    """Round trip of a 100-byte message over a Unix socket to another Python
    process. With with_fd every answer carries a descriptor (as a cold
    get's does), which the client closes: a memfd, or a duplicate of fd
    when given."""
    echo = _Echo(with_fd, [fd] if fd >= 0 else None)

    def once() -> None:
        got = echo.round_trip()
        if got >= 0:
            os.close(got)

    out = timed(once, n)
    echo.close()
    return out


class _Floor:
    """The floor of a cold get on the segments of names: a bare round trip
    to a Python process (carrying the segment's descriptor on vmm) followed
    by an import of it, with no agent and no client work, on segments this
    process never mapped. The import is the client's own import_segment,
    or with raw on vmm the raw driver sequence (_raw_map: the import the
    issue's floor names; legacy's is one driver call either way)."""

    def __init__(self, names: list[str], raw: bool = False) -> None:
        self.c = memcuda.connect()
        self.answers = _fetch_answers(self.c, names)
        vmm = self.answers[0][0].ipc_mode == "vmm"
        self.fds = [got[0] for _, got in self.answers] if vmm else []
        self.echo = _Echo(vmm, self.fds)
        self.maps: list[Any] = []
        self.raw = raw and vmm
        self.lib = _cuda._load()
        if self.raw:
            self.desc = _cuda._access(_cuda.ordinal_of(self.answers[0][0].device_uuid))

    def once(self, i: int) -> tuple[float, float]:
        """The floor on the i-th segment: (round trip + import, the import alone)."""
        t0 = time.perf_counter()
        fd = self.echo.round_trip(i)
        t1 = time.perf_counter()
        info = self.answers[i][0]
        if self.raw:
            self.maps.append((_raw_map(self.lib, fd, info.segment_size, self.desc), info.segment_size))
        else:
            self.maps.append(_cuda.import_segment(fd, info))
        t2 = time.perf_counter()
        if fd >= 0:
            os.close(fd)
        return t2 - t0, t2 - t1

    def close(self) -> None:
        self.echo.close()
        for m in self.maps:
            _close_map(self.lib, m)
        for fd in self.fds:
            os.close(fd)
        self.c.close()


def cold_floor(names: list[str]) -> tuple[list[float], list[float]]:
    """The least any cold get can cost here (_Floor) on each of names:
    (round trip + import, the import alone)."""
    fl = _Floor(names)
    got = [fl.once(i) for i in range(len(names))]
    fl.close()
    return [w for w, _ in got], [imp for _, imp in got]


def cold_against_floor(cold_names: list[str], floor_names: list[str], bare_names: list[str],
                       raw_names: list[str]) -> "tuple[list[float], list[float], list[float], list[float], str]":
    """Cold gets (a fresh connection, each name in a segment of its own),
    the floor of a cold get (_Floor, with the client's import), a bare get
    frame to the agent read raw, then the same import (the agent's part
    without the client's), and the floor with the raw driver import
    (_Floor raw), on segments of their own, one of each in turn, the order
    rotating: (cold gets, floors, bare gets, raw floors, a note splitting
    them). The device's primary context is current throughout, as PyTorch
    leaves it on a thread that used the GPU."""
    from memcuda import _wire

    c = memcuda.connect()
    bare_c = memcuda.connect()
    fl = _Floor(floor_names)
    raw_fl = _Floor(raw_names, raw=True)
    current = _cuda._Current(_cuda.ordinal_of(fl.answers[0][0].device_uuid))
    current.__enter__()
    cold: list[float] = []
    floor: list[float] = []
    floor_rtt: list[float] = []
    raw: list[float] = []
    bare: list[float] = []
    bare_rtt: list[float] = []
    held = []
    maps = []

    def one_cold(i: int) -> None:
        t0 = time.perf_counter()
        held.append(c.get(cold_names[i]))
        cold.append(time.perf_counter() - t0)

    def one_floor(i: int) -> None:
        whole, imp = fl.once(i)
        floor.append(whole)
        floor_rtt.append(whole - imp)

    def one_raw(i: int) -> None:
        raw.append(raw_fl.once(i)[0])

    def one_bare(i: int) -> None:
        frame = _wire.encode_request(1 << 40, "get", name=bare_names[i])
        t0 = time.perf_counter()
        body, anc = _bare_get(bare_c, frame)
        t1 = time.perf_counter()
        info = _wire.decode_answer(body, False).record
        fds = _passed_fds(anc)
        maps.append(_cuda.import_segment(fds[0] if fds else -1, info))
        bare.append(time.perf_counter() - t0)
        bare_rtt.append(t1 - t0)
        for fd in fds:
            os.close(fd)

    order = [one_cold, one_floor, one_bare, one_raw]
    for i in range(len(cold_names)):
        k = i % len(order)
        for f in order[k:] + order[:k]:
            f(i)
    fl.close()
    raw_fl.close()
    for t in held:
        t.release()
    for m in maps:
        m.close()
    c.close()
    bare_c.close()
    current.__exit__()
    note = (f"cold get, floors and bare agent frame in turn, p50 us: cold get {us(pct(cold, 50))}, floor with the raw "
            f"driver import {us(pct(raw, 50))}, floor with the client's import {us(pct(floor, 50))} "
            f"(its round trip {us(pct(floor_rtt, 50))}), bare agent get frame + decode + the client's import "
            f"{us(pct(bare, 50))} (its round trip {us(pct(bare_rtt, 50))}): the client's own work is the cold get "
            f"less the bare one")
    return cold, floor, bare, raw, note


# --- create ------------------------------------------------------------------

def bench_create(n: int) -> None:
    import torch

    s = memcuda.connect()
    before = agent_ops()
    seq = iter(range(1 << 30))

    def one_create() -> float:
        """A create of a new name, timed alone; released and deleted after."""
        name = f"b.c.{next(seq)}"
        t0 = time.perf_counter()
        t = s.create(name, (256, 1024), "bf16")
        dt = time.perf_counter() - t0
        t.release()
        s.delete(name)
        return dt

    times = [one_create() for _ in range(n + 20)][20:]

    # The target's ratio, create and echo interleaved (see interleaved).
    echo = _Echo(False)

    def one_echo() -> float:
        t0 = time.perf_counter()
        echo.round_trip()
        return time.perf_counter() - t0

    ic, ie, ratios = interleaved(one_create, one_echo, n)
    echo.close()
    row("create against the echo, interleaved in blocks", ic, "Python Unix-socket echo, interleaved", ie, "<= 3x")
    NOTES.append(f"create / echo interleaved: median of block-pair ratios {statistics.median(ratios):.2f}x "
                 f"(quartiles {pct(ratios, 25):.2f}-{pct(ratios, 75):.2f}x, {len(ratios)} pairs)")

    # The same, split at the moment the answer was read (a separate pass:
    # the marks cost a little).
    replied = mark_reads(s)
    to_answer: list[float] = []
    after_answer: list[float] = []
    for j in range(n // 4):
        name = f"b.c.{j}"
        replied.clear()
        t0 = time.perf_counter()
        t = s.create(name, (256, 1024), "bf16")
        t1 = time.perf_counter()
        to_answer.append(replied[-1] - t0)
        after_answer.append(t1 - replied[-1])
        t.release()
        s.delete(name)
    del s._conn.read_frame
    NOTES.append(f"create split, p50 us: request to answer {us(pct(to_answer, 50))}, "
                 f"answer to return {us(pct(after_answer, 50))}")

    # Several at once: create_many, 8 per call, time per tensor.
    batch = 8
    many: list[float] = []
    for j in range(0, n // 2, batch):
        names = [f"b.m.{j + i}" for i in range(batch)]
        t0 = time.perf_counter()
        ts = s.create_many([(nm, (256, 1024), "bf16") for nm in names])
        many.extend([(time.perf_counter() - t0) / batch] * batch)
        for t in ts:
            t.release()
        for nm in names:
            s.delete(nm)

    note = agent_mean(before, "create")
    if note:
        RESULTS["create_agent"] = note
        NOTES.append(f"create: {note}")
    # With write-behind the create script runs after the answer, on the
    # connection's thread: its own metric.
    note = agent_mean(before, "registry_write")
    if note:
        NOTES.append(f"create: registry write after the answer: {note}")

    # The same creates as precomputed frames, replies read raw: the socket
    # and the agent without the client's encoding, decoding and objects.
    import socket as so

    from memcuda import _wire

    s.flush()
    raw_create: list[float] = []
    for j in range(n + 20):
        name = f"b.r.{j}"
        fc = _wire.encode_request(1 << 40, "create", name=name, dtype="bf16", shape=[256, 1024], device="")
        tail = _wire.encode_request(1 << 40, "release", name=name) + _wire.encode_request(1 << 40, "delete", name=name)
        t0 = time.perf_counter()
        s._conn.sock.sendall(fc)
        _, anc, _, _ = s._conn.sock.recvmsg(65536, so.CMSG_SPACE(32))
        dt = time.perf_counter() - t0
        for fd in _passed_fds(anc):  # a descriptor for a segment this connection has not seen
            os.close(fd)
        s._conn.sock.sendall(tail)
        _drain_frames(s._conn.sock, 2)
        if j >= 20:
            raw_create.append(dt)

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
    row("create bf16 256x1024 against the socket's floor", times, "Python Unix-socket echo round trip", socket_rtt(n), "<= 3x")
    row("create bf16 256x1024 (warm pool, zero-filled) ", times, "cuMemAlloc + cuIpcGetMemHandle", mi, "<= 60 us p50")
    row(f"create_many, {batch} per call (time per tensor)", many, "create (Python client)", times, "")
    row("create, precomputed frame read raw (socket + agent, no client work)", raw_create, "create (Python client)", times, "")
    row("create, the client's work alone (recorded answer, no socket)", client_work_create(n), "create (Python client)", times, "")
    s.close()


class ReplayedCreates:
    """A connection whose creates are answered by one recorded answer: a
    create of a tensor in a segment it has mapped, its answer (its id
    rewritten) written ahead of each call into a socket pair that stands in
    for the agent's socket, so that each create times the client's own work
    alone, the system calls of its send and read included. Names start
    with prefix; close() restores the socket and deletes them."""

    def __init__(self, prefix: str) -> None:
        import socket as so

        from memcuda import _wire

        self.prefix, self.wire = prefix, _wire
        c = self.c = memcuda.connect()
        c.create(prefix + ".0", (256, 1024), "bf16").release()  # the segment's descriptor arrives here
        c.flush()
        got: list[bytes] = []
        read = c._conn.read_frame

        def recording() -> Any:
            nfd, body = read()
            got.append(body)
            return nfd, body

        c._conn.read_frame = recording  # type: ignore[method-assign]
        try:
            self.held = c.create(prefix + ".1", (256, 1024), "bf16")
        finally:
            del c._conn.read_frame
        body = got[-1]
        # The id runs to the first separator: "," in JSON, \x1f in a compact record.
        self.head = body[:1] if body[:1] == b"R" else b'{"id":'
        self.tail = body[body.index(b"\x1f" if body[:1] == b"R" else b","):]
        self.sock = c._conn.sock
        c._conn.sock, self.peer = so.socketpair(so.AF_UNIX, so.SOCK_STREAM)
        self.peer.setblocking(False)

    def create(self) -> tuple[Any, float]:
        """One create against the recorded answer: (the tensor, the call's
        seconds). The tensor is never released (the socket is not the agent's)."""
        body = self.head + b"%d" % (self.c._next_id + 1) + self.tail
        self.peer.sendall(self.wire.frame(self.wire.KIND_RESPONSE, body))
        t0 = time.perf_counter()
        x = self.c.create(self.prefix + ".1", (256, 1024), "bf16")
        dt = time.perf_counter() - t0
        x._released = True
        self.peer.recv(1 << 16)  # the request
        return x, dt

    def close(self) -> None:
        self.c._conn.sock.close()
        self.peer.close()
        self.c._conn.sock = self.sock
        self.held.release()
        self.c.delete(self.prefix + ".0")
        self.c.delete(self.prefix + ".1")
        self.c.close()


def client_work_create(n: int) -> list[float]:
    """A create's time in the client alone: the same call against a recorded answer."""
    rc = ReplayedCreates("b.w")
    held = []

    def one() -> float:
        x, dt = rc.create()
        held.append(x)
        return dt

    out = [one() for _ in range(n + 20)][20:]
    rc.close()
    return out


def _drain_frames(sock: Any, count: int) -> None:
    """Reads count whole response frames (header: body length in bytes 8-12)."""
    buf = b""
    while count:
        buf += sock.recv(65536)
        while count and len(buf) >= 12 and len(buf) >= 12 + int.from_bytes(buf[8:12], "big"):
            buf = buf[12 + int.from_bytes(buf[8:12], "big"):]
            count -= 1


# --- throughput --------------------------------------------------------------

def _tput_worker(sock: str, name: str, held: bool, seconds: float, start: float, out: Any) -> None:
    """get+release of name in a loop: held, the connection keeps a reference
    throughout (no Redis on the path); unheld, each get is the connection's
    first reference. Puts the pair count and every 16th pair's time."""
    os.environ["MEMCUDA_SOCKET"] = sock
    s = memcuda.connect()
    hold = s.get(name) if held else None
    for _ in range(200):
        s.get(name).release()
    while time.time() < start:
        time.sleep(0.001)
    n = 0
    sample: list[float] = []
    clock = time.perf_counter
    end = time.time() + seconds
    while time.time() < end:
        t0 = clock()
        s.get(name).release()
        if n & 15 == 0:
            sample.append(clock() - t0)
        n += 1
    if hold is not None:
        hold.release()
    s.flush()
    out.put((n, sample))


def node_times() -> tuple[int, int, int, int]:
    """The node's idle (with I/O wait) and total CPU ticks and its online
    CPUs, from /proc/stat, and the microseconds in which some task waited
    for a CPU (/proc/pressure/cpu; -1 without it), as the agent's
    --hot-spin gate reads them."""
    with open("/proc/stat") as f:
        lines = [line.split() for line in f if line.startswith("cpu")]
    ticks = [int(v) for v in lines[0][1:9]]
    try:
        with open("/proc/pressure/cpu") as f:
            stall = int(f.readline().split("total=")[1])
    except (OSError, IndexError, ValueError):
        stall = -1
    return ticks[3] + ticks[4], sum(ticks), len(lines) - 1, stall


def node_load(a: tuple[int, int, int, int], b: tuple[int, int, int, int], seconds: float) -> str:
    """The node's idle CPUs on average from a to b (node_times), and the
    share of that time in which some task waited for a CPU."""
    idle = b[2] * (b[0] - a[0]) / max(b[1] - a[1], 1)
    if a[3] < 0 or b[3] < 0:
        return f"node idle {idle:.1f} CPUs"
    return f"node idle {idle:.1f} CPUs, CPU pressure {(b[3] - a[3]) / (seconds * 1e6):.2f}"


def _tput_run(procs: int, held: bool, distinct: bool, seconds: float) -> tuple[float, float, str]:
    """Pairs per second of all processes together, the p50 pair in us, and
    the node's load over the timed window (node_load)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start = time.time() + 3.0
    names = [f"b.tput.{i}" if distinct else "b.tput" for i in range(procs)]
    ws = [ctx.Process(target=_tput_worker, args=(os.environ["MEMCUDA_SOCKET"], names[i], held, seconds, start, q)) for i in range(procs)]
    for w in ws:
        w.start()
    time.sleep(max(start - time.time(), 0))
    before, t0 = node_times(), time.perf_counter()
    time.sleep(seconds * 0.9)  # within the window, whichever worker ends first
    load = node_load(before, node_times(), time.perf_counter() - t0)
    got = [q.get() for _ in ws]
    for w in ws:
        w.join()
    sample = [x for _, xs in got for x in xs]
    return sum(n for n, _ in got) / seconds, pct(sample, 50) * 1e6, load


def bench_throughput(procs: list[int], seconds: float) -> None:
    s = memcuda.connect()
    s.create("b.tput", (1024,), "f32").release()
    for p in procs:
        rate, _, load = _tput_run(p, True, False, seconds)
        RESULTS[f"throughput_{p}"] = rate
        ROWS.append((f"warm get+release, {p} client process(es)", f"{rate:,.0f} gets/s, {load}", "", "",
                     ">= 100k/s at 16" if p == 16 else ""))
    s.delete("b.tput")
    s.close()


def tput_tensors(s: Any, procs: int) -> list[str]:
    """Creates the tensors of the unheld runs: the shared name and one per
    process, for _tput_run; returns their names, for the caller to delete."""
    names = ["b.tput"] + [f"b.tput.{i}" for i in range(procs)]
    for n in names:
        s.create(n, (1024,), "f32").release()
    return names


def bench_unheld(procs: list[int], seconds: float, rounds: int = 3) -> None:
    """get, use, release: the connection holds no reference between pairs,
    on one shared name and on a name per process, against the held loop in
    the same run. At the most processes, rounds of the held loop, one name
    and a name each take turns and each reports its median and range: a
    shared machine's throughput moves between runs minutes apart, so one
    sample of each says little, and the held loop beside them is the
    baseline of the same moments."""
    s = memcuda.connect()
    tensors = tput_tensors(s, max(procs))
    out: dict[str, Any] = {}
    held_rate, held_p50, load = _tput_run(1, True, False, seconds)
    out["held_1"] = {"rate": held_rate, "p50_us": held_p50, "load": load}
    top = max(procs)
    for distinct in (False, True):
        for p in procs:
            if (distinct and p == 1) or p == top:
                continue  # one process: one name either way; the most: in rounds below
            rate, p50, load = _tput_run(p, False, distinct, seconds)
            key = f"unheld_{'each' if distinct else 'one'}_{p}"
            out[key] = {"rate": rate, "p50_us": p50, "load": load}
            if p == 1:
                ROWS.append(("unheld get+release, 1 process", f"{p50:.1f} (p50 pair), {rate:,.0f} pairs/s, {load}",
                             f"held get+release: {held_p50:.1f}, {held_rate:,.0f} pairs/s", f"{p50 / held_p50:.2f}x", "<= 2x"))
            else:
                names = "a name each" if distinct else "one name"
                ROWS.append((f"unheld get+release, {p} processes, {names}", f"{rate:,.0f} pairs/s, p50 pair {p50:.1f}, {load}",
                             "", "", ""))
    kinds = {"held": (True, False), "one": (False, False), "each": (False, True)}
    runs: dict[str, list[float]] = {k: [] for k in kinds}
    loads: dict[str, list[str]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for k, (held, distinct) in kinds.items():
            rate, _, load = _tput_run(top, held, distinct, seconds)
            runs[k].append(rate)
            loads[k].append(load)
    held_top = statistics.median(runs["held"])
    out[f"held_{top}"] = {"rate": held_top, "runs": runs["held"], "loads": loads["held"]}
    for k, names in (("one", "one name"), ("each", "a name each")):
        rate = statistics.median(runs[k])
        out[f"unheld_{k}_{top}"] = {"rate": rate, "runs": runs[k], "loads": loads[k]}
        ROWS.append((f"unheld get+release, {top} processes, {names}, median of {rounds} rounds (range)",
                     f"{rate:,.0f} pairs/s ({min(runs[k]):,.0f}-{max(runs[k]):,.0f}); {'; '.join(loads[k])}",
                     f"held, {top} processes, same rounds: {held_top:,.0f} ({min(runs['held']):,.0f}-{max(runs['held']):,.0f})",
                     f"{rate / held_top:.2f}x", ">= 100k/s"))
    RESULTS["unheld"] = out
    for n in tensors:
        s.delete(n)
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
    ap.add_argument("--skip-unheld", action="store_true", help="leave out the unheld get+release runs")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the held and unheld runs at 16 processes")
    ap.add_argument("--only", default="", help="comma-separated parts to run: get, create, throughput, unheld, bandwidth")
    args = ap.parse_args()
    if args.rounds < 1 or args.seconds <= 0 or args.n < 1:
        ap.error("--rounds and --n must be at least 1, --seconds above 0")
    import torch

    RESULTS["device"] = torch.cuda.get_device_name(0)
    only = set(filter(None, args.only.split(",")))
    unknown = only - {"get", "create", "throughput", "unheld", "bandwidth"}
    if unknown:
        raise SystemExit(f"--only: unknown parts {sorted(unknown)}")
    parts: list[tuple[str, Callable[[], None]]] = [
        ("get", lambda: bench_get(args.n)), ("create", lambda: bench_create(args.n)),
        ("throughput", lambda: bench_throughput([1, 16], args.seconds)),
        ("unheld", lambda: None if args.skip_unheld else bench_unheld([1, 4, 16], args.seconds, args.rounds)),
        ("bandwidth", bench_bandwidth)]
    for name, fn in parts:
        if not only or name in only:
            fn()
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
