"""GPU end to end with PyTorch, for the vmm and the legacy backend. Skipped
without a CUDA GPU; run on one by `make gpu-suite` (scripts/gpu-suite-run.sh)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import memcuda
from conftest import child_pythonpath

PKG = child_pythonpath()

PRELUDE = """
import hashlib, os, sys, time, torch, memcuda
def digest(t):
    return hashlib.sha256(t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.uint8).cpu().numpy().tobytes()).hexdigest()
def say(*a):
    print(*a, flush=True)
def busy(seconds, *then):
    # Queues about `seconds` of GPU work on the current stream (f32 matrix
    # products, timed once first), without waiting for it. `then`: tensors
    # the caller writes next with fill_: the fill kernel runs once first,
    # because the first launch of a kernel loads it (CUDA's lazy module
    # loading), and that load waits for all queued work to finish.
    a = torch.randn(4096, 4096, device="cuda")
    c = torch.empty_like(a)
    for x in then:
        x.fill_(-1.0)
    torch.mm(a, a, out=c); torch.cuda.synchronize()
    t0 = time.perf_counter(); torch.mm(a, a, out=c); torch.cuda.synchronize()
    one = time.perf_counter() - t0
    n = max(1, int(seconds / max(one, 1e-6)))
    t0 = time.perf_counter()
    for _ in range(n):
        torch.mm(a, a, out=c)
    # What was queued, for the skip message when it all ran at launch.
    return f"{n} products of {one * 1e3:.2f} ms queued in {(time.perf_counter() - t0) * 1e3:.1f} ms"
"""


SYNC_LAUNCH = ("the writer's kernel did not stay queued behind a second of GPU work "
               f"(CUDA_LAUNCH_BLOCKING={os.environ.get('CUDA_LAUNCH_BLOCKING', 'unset')}); "
               "stream ordering cannot be observed on this machine")


class Child:
    """A Python process speaking line by line over its stdin/stdout."""

    def __init__(self, agent, code: str, prefix_cmd: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        e = dict(os.environ, MEMCUDA_SOCKET=agent.socket, PYTHONPATH=PKG, PYTHONUNBUFFERED="1", **(env or {}))
        self.p = subprocess.Popen([*(prefix_cmd or []), sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
                                  env=e, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def read(self, timeout: float = 120) -> str:
        line = self.p.stdout.readline()
        if not line:
            err = self.p.stderr.read()
            raise AssertionError(f"child exited ({self.p.wait()}): {err}")
        return line.strip()

    def send(self, line: str) -> None:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def wait(self) -> None:
        out, err = self.p.communicate(timeout=120)
        assert self.p.returncode == 0, err

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()


def refcount(name: str) -> int:
    with memcuda.connect() as s:
        return s.stat(name).refcount


def test_share_bf16_between_processes(gpu_agent) -> None:
    name = f"w.{gpu_agent.mode}"
    a = Child(gpu_agent, f"""
        s = memcuda.connect()
        t = s.create("{name}", (4096, 4096), "bf16")
        x = t.torch()
        assert x.is_cuda and x.dtype == torch.bfloat16 and x.shape == (4096, 4096)
        assert int(torch.count_nonzero(x)) == 0, "new tensors are zero-filled"
        torch.manual_seed(1)
        x.copy_(torch.randn(4096, 4096, device=x.device, dtype=torch.bfloat16))
        torch.cuda.synchronize()
        say(digest(x))
        assert sys.stdin.readline().strip() == "check"
        torch.cuda.synchronize()
        say(float(x[0, :8].float().sum()), float(x[4095, 4095]))
        sys.stdin.readline()
    """)
    want = a.read()
    b = Child(gpu_agent, f"""
        with memcuda.connect() as s, s.get("{name}") as t:
            x = t.torch()
            say(digest(x))
            x[0, :8] = 1.0
            x[4095, 4095] = 3.0
            torch.cuda.synchronize()
            say("wrote")
    """)
    assert b.read() == want, "process B sees other bytes than A wrote"
    assert b.read() == "wrote"
    b.wait()
    a.send("check")
    assert a.read() == "8.0 3.0", "A does not see B's writes"
    a.send("done")
    a.wait()


def _cuda_starts_under(prefix: list[str]) -> str:
    """'' when CUDA initialises in a process run under prefix, else why not."""
    probe = "import ctypes, os; print(os.getpid(), ctypes.CDLL('libcuda.so.1').cuInit(0))"
    r = subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, text=True)
    if r.returncode != 0 or r.stdout.split() != ["1", "0"]:
        return f"CUDA does not initialise under {' '.join(prefix)} here (pid, cuInit -> {r.stdout.strip() or r.stderr.strip()})"
    return ""


def test_open_from_new_pid_namespace(gpu_agent, new_pid_namespace) -> None:
    why = _cuda_starts_under(new_pid_namespace)
    if why:
        pytest.skip(why)
    name = f"ns.{gpu_agent.mode}"
    with memcuda.connect() as s, s.create(name, (64,), "f32") as t:
        import torch

        t.torch().fill_(3.0)
        torch.cuda.synchronize()
        c = Child(gpu_agent, f"""
            with memcuda.connect() as s, s.get("{name}") as t:
                say(os.getpid(), float(t.torch().sum()))
        """, prefix_cmd=new_pid_namespace)
        pid, val = c.read().split()
        c.wait()
        assert pid == "1" and val == "192.0", (pid, val)
        deadline = time.time() + 2
        while s.stat(name).refcount != 2:  # the registry's and ours: the child's went with it
            assert time.time() < deadline, "the child's reference outlived it"
            time.sleep(0.01)


def test_kill9_reader_releases_within_2s(gpu_agent) -> None:
    name = f"k.{gpu_agent.mode}"
    with memcuda.connect() as s:
        s.create(name, (1024, 1024), "f32").release()
        r = Child(gpu_agent, f"""
            s = memcuda.connect()
            ts = [s.get("{name}") for _ in range(4)]
            xs = [t.torch() for t in ts]
            xs[0].fill_(2.0); torch.cuda.synchronize()
            say("ready")
            time.sleep(600)
        """)
        assert r.read() == "ready"
        assert s.stat(name).refcount == 2
        r.kill()
        deadline = time.time() + 2
        while s.stat(name).refcount != 1:
            assert time.time() < deadline, "refcount not back within 2 s"
            time.sleep(0.01)
        with s.get(name) as t:
            assert float(t.torch().sum()) == 2.0 * 1024 * 1024


def test_tensor_outlives_its_creator(gpu_agent) -> None:
    name = f"o.{gpu_agent.mode}"
    c = Child(gpu_agent, f"""
        s = memcuda.connect()
        t = s.create("{name}", (256,), torch.float16)
        t.torch().fill_(0.5); torch.cuda.synchronize()
        say("ok")
    """)
    assert c.read() == "ok"
    c.wait()
    import torch

    with memcuda.connect() as s, s.get(name) as t:
        x = t.torch()
        assert x.dtype == torch.float16 and float(x.float().sum()) == 128.0
        assert t.info.ipc_mode == gpu_agent.mode and t.info.device_uuid.startswith("GPU-")


def test_cupy_and_cuda_array_interface(gpu_agent) -> None:
    cupy = pytest.importorskip("cupy")
    with memcuda.connect() as s, s.create(f"c.{gpu_agent.mode}", (3, 4), "f32") as t:
        a = cupy.asarray(t)  # __cuda_array_interface__
        a[...] = 7
        b = t.cupy()  # DLPack
        assert float(b.sum()) == 84.0
        assert t.torch().data_ptr() == t.data_ptr == a.data.ptr


def test_legacy_redis_only_path(gpu_agent) -> None:
    if gpu_agent.mode != "legacy":
        with memcuda.connect() as s:
            s.create("v", (4,), "f32").release()
        with pytest.raises(memcuda.FailedPrecondition, match="socket"):
            memcuda.open_from_redis(gpu_agent.redis_url, "v", prefix=gpu_agent.prefix)
        return
    with memcuda.connect() as s:
        with s.create("lr", (16,), "i32") as t:
            import torch

            t.torch().copy_(torch.arange(16, dtype=torch.int32, device=t.torch().device))
            torch.cuda.synchronize()
        s.stat("lr")  # the record reaches Redis after create returns: wait for it
    c = Child(gpu_agent, f"""
        with memcuda.open_from_redis("{gpu_agent.redis_url}", "lr", prefix="{gpu_agent.prefix}") as t:
            say(int(t.torch().sum()))
    """)
    assert c.read() == "120"
    c.wait()
    assert refcount("lr") == 1


def test_other_visible_devices(gpu_agent) -> None:
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    with memcuda.connect() as s:
        uuid1 = [d for d in s.hello["devices"] if d["index"] == 1][0]["uuid"]
        t = s.create(f"g1.{gpu_agent.mode}", (8,), "f32", device=uuid1)
        assert t.torch().device.index == 1 and float(t.torch().sum()) == 0.0, "zero-filled on GPU 1"
        t.torch().fill_(4.0)
        torch.cuda.synchronize()
        assert t.info.device == 1 and t.info.device_uuid == uuid1
        c = Child(gpu_agent, f"""
            with memcuda.connect() as s, s.get("g1.{gpu_agent.mode}") as t:
                x = t.torch()
                say(x.device.index, float(x.sum()))
        """, env={"CUDA_VISIBLE_DEVICES": "1"})
        assert c.read() == "0 32.0", "GPU 1 must resolve to ordinal 0 under CUDA_VISIBLE_DEVICES=1"
        c.wait()
        t.release()


def test_publish_orders_readers_without_sync(gpu_agent) -> None:
    name = f"pub.{gpu_agent.mode}"
    a = Child(gpu_agent, f"""
        s = memcuda.connect()
        t = s.create("{name}", (1 << 20,), "f32")
        x = t.torch()
        queued = busy(1.0, x)              # ~1 s of GPU work before the write lands
        t0 = time.perf_counter(); x.fill_(5.0); took = time.perf_counter() - t0
        if torch.cuda.current_stream().query() or took > 0.5:
            say("sync-launch:", queued, f"then the write's launch took {{took * 1e3:.1f}} ms")  # nothing to order
            raise SystemExit(0)
        t.publish()                        # no synchronize: readers wait on the event
        say("published")
        sys.stdin.readline()
        torch.cuda.synchronize()
    """)
    first = a.read()
    if first.startswith("sync-launch"):
        a.wait()
        pytest.skip(f"{SYNC_LAUNCH} ({first})")
    assert first == "published"
    b = Child(gpu_agent, f"""
        with memcuda.connect() as s, s.get("{name}") as t:
            say(float(t.torch().min()))
    """)
    assert b.read() == "5.0", "the reader did not wait for the writer's published event"
    b.wait()
    a.send("done")
    a.wait()


def test_release_defers_reuse_until_gpu_work_is_done(gpu_agent) -> None:
    name = f"def.{gpu_agent.mode}"
    with memcuda.connect() as s:
        s.create(name, (1 << 20,), "f32").release()
        a = Child(gpu_agent, f"""
            s = memcuda.connect()
            t = s.get("{name}")
            x = t.torch()
            queued = busy(1.5, x)              # the write below lands ~1.5 s later
            t0 = time.perf_counter(); x.fill_(9.0); took = time.perf_counter() - t0
            if torch.cuda.current_stream().query() or took > 0.5:
                say("sync-launch:", queued, f"then the write's launch took {{took * 1e3:.1f}} ms")
                raise SystemExit(0)
            t.release()                        # no synchronize: an event goes with the release
            s.flush()                          # applied by the agent (still no synchronize)
            say("released")
            torch.cuda.synchronize()
            say("done")
        """)
        first = a.read()
        if first.startswith("sync-launch"):
            a.wait()
            pytest.skip(f"{SYNC_LAUNCH} ({first})")
        assert first == "released", first
        s.delete(name)  # refcount 0 now, but the block must wait for A's kernel
        stats = s.stats()
        assert stats["pending"] == 1, (stats, gpu_agent.log.read_text().splitlines()[-12:])
        with s.create(f"{name}.next", (1 << 20,), "f32") as t2:
            assert a.read() == "done"
            import torch

            torch.cuda.synchronize()
            assert float(t2.torch().abs().max()) == 0.0, "a new tensor was given memory a released kernel still wrote"
        deadline = time.time() + 5
        while s.stats()["pending"] != 0:
            assert time.time() < deadline, "the deferred block was never freed"
            time.sleep(0.01)
        a.wait()


def test_reused_block_is_zero(gpu_agent) -> None:
    """Freed memory is cleared on the device's queue when it is freed: the
    next tensor in the same block must read zero, written by another
    process's kernel or not."""
    import torch

    with memcuda.connect() as s:
        with s.create("z.a", (256, 1024), "bf16") as t:
            a = t.info
            t.torch().fill_(3.0)
            torch.cuda.synchronize()
        s.flush()
        s.delete("z.a")
        with s.create("z.b", (256, 1024), "bf16") as t:
            assert (t.info.segment_id, t.info.offset) == (a.segment_id, a.offset), "the freed block was not reused"
            assert int(torch.count_nonzero(t.torch())) == 0, "a reused block shows the previous tensor's data"
        s.delete("z.b")


def test_get_many_maps_every_segment(gpu_agent) -> None:
    """get_many over tensors in segments this process has not mapped (32 MiB
    each: a segment of their own) and in one shared small segment."""
    import torch

    big = [f"m.{gpu_agent.mode}.big{i}" for i in range(5)]
    small = [f"m.{gpu_agent.mode}.small{i}" for i in range(5)]
    c = Child(gpu_agent, f"""
        s = memcuda.connect()
        for i, name in enumerate({big!r}):
            s.create(name, (8 << 20,), "f32").torch().fill_(i)
        for i, name in enumerate({small!r}):
            s.create(name, (16,), "bf16").torch().fill_(-i)
        torch.cuda.synchronize()
        say("ok")
    """)
    assert c.read() == "ok"
    c.wait()
    with memcuda.connect() as s:
        ts = s.get_many(big + small)
        assert len({t.info.segment_id for t in ts[:5]}) == 5
        for i, t in enumerate(ts[:5]):
            assert float(t.torch().sum()) == float(i * (8 << 20))
        for i, t in enumerate(ts[5:]):
            x = t.torch()
            assert x.dtype == torch.bfloat16 and float(x.float().sum()) == float(-i * 16)
        for t in ts:
            t.release()
        for name in big + small:
            s.delete(name)


def test_vmm_mappings_take_their_ranges_from_the_arena(gpu_agent) -> None:
    """Cold gets map real segments on ranges carved from the C module's
    arena; closing the connection unmaps them and gives every range back,
    and the next connection's mappings reuse the same reservation, with
    the same contents as the pure-Python mapping path reads."""
    from memcuda import _cuda

    if gpu_agent.mode != "vmm" or _cuda.c_vmm_map is None:
        pytest.skip("the arena serves VMM mappings made by the C module")
    from memcuda import _speedups

    names = [f"arena.{i}" for i in range(4)]
    with memcuda.connect() as s:
        for i, name in enumerate(names):
            s.create(name, (8 << 20,), "f32").torch().fill_(i + 1)  # 32 MiB: a segment each
        import torch
        torch.cuda.synchronize()
        for name in names:
            s.get(name).release()  # the creator's own references go; the registry's stay
    sums = []
    for path in ("c", "python", "c"):
        saved = _cuda.c_vmm_map
        if path == "python":
            _cuda.c_vmm_map = None
        try:
            with memcuda.connect() as s:
                ts = [s.get(name) for name in names]
                sums.append([float(t.torch().sum()) for t in ts])
                during = _speedups.vmm_arena()
                for t in ts:
                    t.release()
        finally:
            _cuda.c_vmm_map = saved
        after = _speedups.vmm_arena()
        if path == "c":
            chunks, free = during
            assert chunks >= 1 and free <= chunks * (64 << 30) - 4 * (32 << 20)
            assert after == (chunks, chunks * (64 << 30)), "every range went back at close"
    assert sums[0] == sums[1] == sums[2] == [float((i + 1) * (8 << 20)) for i in range(4)]
    with memcuda.connect() as s:
        for name in names:
            s.delete(name)


def test_create_many_on_the_gpu(gpu_agent) -> None:
    """create_many puts zero-filled tensors on the GPU that another process
    opens with get_many and sees written."""
    import torch

    specs = [(f"cm.{gpu_agent.mode}.{i}", (64, 32 * (i + 1)), "bf16") for i in range(6)]
    specs.append((f"cm.{gpu_agent.mode}.big", (8 << 20,), "f32"))  # a segment of its own
    with memcuda.connect() as s:
        ts = s.create_many(specs, device=0)
        for i, t in enumerate(ts):
            x = t.torch()
            assert x.is_cuda and tuple(x.shape) == tuple(specs[i][1]) and int(torch.count_nonzero(x)) == 0
            x.fill_(i + 1)
        torch.cuda.synchronize()
        c = Child(gpu_agent, f"""
            s = memcuda.connect()
            ts = s.get_many({[n for n, _, _ in specs]!r})
            say([float(t.torch().float().mean()) for t in ts])
        """)
        assert c.read() == str([float(i + 1) for i in range(len(specs))])
        c.wait()
        for t in ts:
            t.release()
        for name, _, _ in specs:
            s.delete(name)


def test_memory_returns_after_trim_while_clients_stay_connected(gpu_agent) -> None:
    """A segment's memory goes back to the GPU when its tensor is deleted and
    the agent trims, even though the processes that used it are still
    connected: they unmapped it and closed its descriptor (forget)."""
    import torch

    def used() -> int:
        free, total = torch.cuda.mem_get_info(0)
        return total - free

    torch.cuda.init()
    name = f"trim.{gpu_agent.mode}"
    size = 2 << 30  # over the 1 GiB of idle mappings a Client keeps
    with memcuda.connect() as w, memcuda.connect() as r:
        w.trim()
        base = used()
        with w.create(name, (size // 4,), "f32") as t:
            t.torch().fill_(1.0)
            torch.cuda.synchronize()
        with r.get(name) as t:
            assert float(t.torch()[-1]) == 1.0
        assert used() >= base + size
        w.delete(name)
        r.flush()
        if gpu_agent.mode == "legacy":
            return  # legacy segments stay while the agent runs: any process may have opened the handle
        deadline = time.time() + 5
        while used() > base + (64 << 20):
            assert time.time() < deadline, f"{(used() - base) >> 20} MiB still allocated after delete and trim"
            w.trim()
            time.sleep(0.05)


def test_segments_pushed_ahead_are_mapped_on_the_gpu(gpu_agent) -> None:
    """watch_segments maps a writer's new GPU segments in a reader before its
    get: the get then uses that mapping and sees the writer's bytes."""
    import torch

    w = Child(gpu_agent, """
        s = memcuda.connect()
        say("ready")
        sys.stdin.readline()
        t = s.create("gw.a", (8 << 20,), "f32")
        x = t.torch(); x.fill_(3.25); torch.cuda.synchronize()
        say(t.info.segment_id)
        sys.stdin.readline()
    """)
    assert w.read() == "ready"
    with memcuda.connect() as r:
        r.max_idle_mappings, r.max_idle_bytes = 64, 1 << 40
        r.watch_segments()
        w.send("go")
        sid = w.read()
        deadline = time.monotonic() + 30
        while not (sid in r._segments and r._segments[sid].mapping is not None):
            assert time.monotonic() < deadline, "the writer's segment was never mapped ahead"
            time.sleep(0.01)
        mapping = r._segments[sid].mapping
        with r.get("gw.a") as t:
            assert r._segments[sid].mapping is mapping, "the get used the mapping made ahead"
            x = t.torch()
            assert x.is_cuda and float(x.min()) == 3.25 == float(x.max())
            torch.cuda.synchronize()
    w.send("done")
    w.wait()



def test_vmm_tensors_in_pieces_map_whole_segments(gpu_agent) -> None:
    """On vmm a 20 MiB tensor over two freed 12 MiB segments lies in two
    pieces (the first segment whole, the head of the second), which a
    client maps as the two segments side by side: it reads and writes as
    one tensor across the seam, in this process and in another. legacy
    handles open their allocation where the driver puts it, so there the
    tensor gets a segment of its own."""
    import torch

    mib, m = 1 << 20, gpu_agent.mode
    big = f"gp.{m}.big"
    with memcuda.connect() as s:
        for n in "abcd":
            s.create(f"gp.{m}.{n}", (12 * mib,), "u8").release()
        s.delete(f"gp.{m}.a")
        s.delete(f"gp.{m}.c")
        before = s.stats()["pools"][0]["segment_allocs"]
        t = s.create(big, (5 * mib,), "f32")
        made = s.stats()["pools"][0]["segment_allocs"] - before
        if m == "legacy":
            assert t.info.pieces == () and made == 1, (t.info, made)
        else:
            assert len(t.info.pieces) == 2 and made == 0, (t.info, made)
            first, second = t.info.pieces
            assert first.offset == 0 and first.size == first.segment_size == 12 * mib
            assert second.offset == 0 and second.size == 8 * mib and second.segment_size == 12 * mib
        x = t.torch()
        assert x.is_cuda and x.shape == (5 * mib,) and int(torch.count_nonzero(x)) == 0  # zero-filled, both pieces
        x.copy_(torch.arange(5 * mib, device=x.device, dtype=torch.float32))
        torch.cuda.synchronize()
        t.release()
    seam = 3 * mib  # f32 index of the first byte of the second piece
    r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(f"""
        with memcuda.connect() as s, s.get("{big}") as t:
            x = t.torch()
            assert len(t.info.pieces) == {2 if m == "vmm" else 0}
            want = torch.arange(5 << 20, device=x.device, dtype=torch.float32)
            assert torch.equal(x, want), "another process reads other values"
            x[{seam} - 1 : {seam} + 1] = -1.0  # one write over the seam
            torch.cuda.synchronize()
    """)], env=dict(os.environ, MEMCUDA_SOCKET=gpu_agent.socket, PYTHONPATH=PKG), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with memcuda.connect() as s:
        s.max_idle_mappings = 0
        for _ in range(2):  # mapped again after its mapping was dropped
            with s.get(big) as t:
                x = t.torch()
                assert float(x[seam - 2]) == seam - 2 and float(x[seam - 1]) == -1.0 and float(x[seam]) == -1.0
                assert float(x[seam + 1]) == seam + 1 and float(x[-1]) == 5 * mib - 1
        s.delete(big)
