"""The Python client against a real agent on the host backend (NumPy)."""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import numpy as np
import pytest

import memcuda
from conftest import _free_port, child_pythonpath


def child(code: str, agent, prefix_cmd: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MEMCUDA_SOCKET=agent.socket, PYTHONPATH=child_pythonpath())
    return subprocess.run([*(prefix_cmd or []), sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=60)


def test_two_processes_share_by_name(agent) -> None:
    w = child("""
        import memcuda, numpy as np
        s = memcuda.connect()
        t = s.create("py.weights", (64, 128), "float32")
        a = t.numpy()
        assert a.shape == (64, 128) and a.dtype == np.float32 and not a.any()  # zero-filled
        a[:] = np.arange(64 * 128, dtype=np.float32).reshape(64, 128)
        print(float(a.sum()))
    """, agent)
    assert w.returncode == 0, w.stderr
    r = child("""
        import memcuda, numpy as np
        with memcuda.connect() as s, s.get("py.weights") as t:
            a = t.numpy()
            assert np.array_equal(a.ravel(), np.arange(64 * 128, dtype=np.float32))
            a[0, 0] = -7
            print(float(a.sum()))
    """, agent)
    assert r.returncode == 0, r.stderr
    with memcuda.connect() as s, s.get("py.weights") as t:
        assert t.numpy()[0, 0] == -7
        assert t.info.refcount == 2
        assert t.info.ipc_mode == "host"


def test_errors_carry_codes(agent) -> None:
    with memcuda.connect() as s:
        s.create("e", (2, 3), "f32").release()
        with pytest.raises(memcuda.AlreadyExists):
            s.create("e", (3, 2), "f32")
        with pytest.raises(memcuda.NotFound):
            s.get("missing")
        for bad in [dict(name="a b", shape=(1,), dtype="f32"), dict(name="x", shape=(1,), dtype="f31"),
                    dict(name="x", shape=(-1,), dtype="f32"), dict(name="x", shape=(1 << 40, 1 << 40), dtype="f32"),
                    dict(name="x", shape=(1,) * 9, dtype="f32"), dict(name="../x", shape=(1,), dtype="f32")]:
            with pytest.raises(memcuda.InvalidArgument) as ei:
                s.create(**bad)
            assert ei.value.code == "invalid_argument"
        with pytest.raises(memcuda.FailedPrecondition):
            s._call("release", name="e")  # this connection holds no reference


def test_dtypes_and_views(agent) -> None:
    with memcuda.connect() as s:
        for dt, np_dt in [("f16", np.float16), ("float64", np.float64), ("int8", np.int8), ("i32", np.int32),
                          ("torch.int64", np.int64), ("uint8", np.uint8), ("bool", np.bool_), (np.float32, np.float32)]:
            name = f"dt.{np.dtype(np_dt).name}"
            with s.create(name, (3, 5), dt) as t:
                a = t.numpy()
                assert a.dtype == np_dt and a.shape == (3, 5)
        with s.create("dt.bf16", (4,), "bfloat16") as t:
            raw = t.numpy(view=np.uint16)
            assert raw.shape == (4,)
            try:
                import ml_dtypes  # noqa: F401
            except ImportError:
                with pytest.raises(TypeError, match="ml_dtypes"):
                    t.numpy()
        with s.create("dt.scalar", (), "f64") as t:
            assert t.numpy().shape == ()
        with s.create("dt.empty", (0, 7), "f32") as t:
            assert t.numpy().shape == (0, 7)


def test_list_stat_stats_delete(agent) -> None:
    with memcuda.connect() as s:
        s.create("a", (10,), "f32").release()
        s.create("b", (20,), "u8").release()
        names = [i.name for i in s.list()]
        assert names == ["a", "b"]
        info = s.stat("b")
        assert info.bytes == 20 and info.refcount == 1 and info.shape == (20,)
        st = s.stats()
        assert st["tensors"] == 2 and st["pools"][0]["allocated"] >= 512
        s.delete("a")
        with pytest.raises(memcuda.NotFound):
            s.stat("a")


def test_views_keep_the_reference(agent) -> None:
    with memcuda.connect() as s:
        s.create("keep", (8,), "f32").release()
        a = s.get("keep").numpy()  # the SharedTensor object is dropped at once
        gc.collect()
        assert s.stat("keep").refcount == 2, "a live NumPy view must keep its reference"
        del a
        gc.collect()
        s.list()  # the finalizer's release goes out with the next call
        assert s.stat("keep").refcount == 1


def test_release_is_pipelined_and_ordered(agent) -> None:
    with memcuda.connect() as s, memcuda.connect() as other:
        s.create("pipe", (8,), "f32").release()
        held = [s.get("pipe") for _ in range(200)]  # more than the replies kept in flight
        for t in held:
            t.release()
        assert s._unread > 0, "release must not wait for its reply"
        assert s.stat("pipe").refcount == 1, "the next call on the connection sees every release"
        t = s.get("pipe")
        t.release()
        s.flush()
        assert s._unread == 0
        assert other.stat("pipe").refcount == 1, "after flush() other connections see the release"


def test_get_many(agent) -> None:
    names = [f"many.{i}" for i in range(40)]  # more than one window of requests in flight
    with memcuda.connect() as w:
        for i, name in enumerate(names):
            with w.create(name, (4,), "i32") as t:
                t.numpy()[:] = i
    with memcuda.connect() as s, memcuda.connect() as other:
        ts = s.get_many(names)
        assert [t.name for t in ts] == names
        assert [int(t.numpy()[0]) for t in ts] == list(range(40))
        assert other.stat("many.7").refcount == 2
        for t in ts:
            t.release()
        s.flush()
        assert other.stat("many.7").refcount == 1
        assert s.get_many([]) == []
        # All or nothing: what was opened before the failure is released,
        # and the answers after it are read (the connection stays in step).
        for bad, err in [("many.missing", memcuda.NotFound), ("a b", memcuda.InvalidArgument)]:
            with pytest.raises(err):
                s.get_many(["many.1", bad, "many.2"])
            s.flush()
            assert other.stat("many.1").refcount == 1 and other.stat("many.2").refcount == 1
            with s.get("many.5") as t:
                assert int(t.numpy()[0]) == 5
        with pytest.raises(memcuda.InvalidArgument, match="sequence"):
            s.get_many("many.1")
        with pytest.raises(memcuda.InvalidArgument, match="int"):
            s.get_many(["many.1", 2])  # type: ignore[list-item]


def test_idle_mappings_are_bounded(agent) -> None:
    """A segment no tensor of this process uses stays mapped for the next get,
    within max_idle_mappings and max_idle_bytes; past them it is unmapped
    (its memory can then go back) and a later get maps it again."""
    with memcuda.connect() as w:
        for i in range(3):
            with w.create(f"idle.{i}", (1 << 20,), "u8") as t:
                t.numpy()[:] = i + 1
    with memcuda.connect() as s:
        s.max_idle_bytes = 1 << 40
        t = s.get("idle.0")
        sid = t.info.segment_id
        t.release()
        assert s._segments[sid].mapping is not None, "an idle segment within the bounds stays mapped"
        s.max_idle_bytes = 0
        t = s.get("idle.1")
        t.release()
        assert all(seg.mapping is None for seg in s._segments.values()), "over max_idle_bytes nothing idle stays mapped"
        with s.get("idle.2") as t:
            assert int(t.numpy()[0]) == 3, "a segment unmapped earlier maps again"
        s.max_idle_bytes, s.max_idle_mappings = 1 << 40, 0
        with s.get("idle.0") as t:
            assert int(t.numpy()[-1]) == 1
        assert all(seg.mapping is None for seg in s._segments.values()), "max_idle_mappings=0 unmaps at the last release"


def test_idle_mappings_count_bytes_as_segments_come_and_go() -> None:
    """The byte bound counts what is idle now: a segment taken back into use
    or added twice counts once, and the oldest go first past the bound."""
    from memcuda._segments import IdleMappings, Segment

    idle = IdleMappings(max_count=10, max_bytes=10)
    a, b, c, d = (Segment(n, -1, size=4) for n in "abcd")
    assert idle.add(a) == [] and idle.add(b) == []
    assert idle.take("a") is a and idle.take("a") is None
    assert idle.add(c) == [], "a taken segment no longer counts: 8 bytes idle"
    assert idle.add(c) == [], "added again, it counts once"
    assert idle.add(a) == [b], "12 bytes: the oldest goes"
    idle.clear()
    assert idle.add(d) == [] and idle.add(a) == [] and idle.add(b) == [d]
    idle.max_bytes = 0
    assert idle.add(c) == [a, b, c]


def test_unmapped_segments_descriptor_is_closed_and_sent_again(agent) -> None:
    """An open descriptor keeps a segment's memory: past the idle bounds the
    client closes it and sends forget; a later get brings it again."""
    with memcuda.connect() as w:
        w.create("fg.a", (16,), "i32").release()
    with memcuda.connect() as s:
        assert s._can_forget, "this agent announces forget"
        s.max_idle_mappings = 0
        t = s.get("fg.a")
        t.numpy()[:] = 7
        seg = s._segments[t.info.segment_id]
        fd = seg.fd
        assert fd >= 0 and seg.mapping is not None
        t.release()
        assert seg.mapping is None and seg.fd == -1, "unmapped at the last release, descriptor closed"
        with pytest.raises(OSError):
            os.fstat(fd)
        s.flush()
        assert not s.release_errors, s.release_errors
        with s.get("fg.a") as t:  # the agent sent the descriptor again
            assert seg.fd >= 0 and int(t.numpy()[3]) == 7
        # get_many over a forgotten segment: the first answer brings it.
        s.create("fg.b", (16,), "i32").release()
        s.flush()
        assert seg.fd == -1
        ts = s.get_many(["fg.a", "fg.b"])
        assert [int(x.numpy()[0]) for x in ts] == [7, 0]
        for x in ts:
            x.release()
        s.flush()
        assert not s.release_errors, s.release_errors


def test_threads_share_a_store_while_segments_come_and_go(agent) -> None:
    """Two threads get and release tensors of one segment on one Client with
    no idle mappings: every release unmaps the segment and forgets its
    descriptor while the other thread may be opening a tensor in it."""
    import threading

    with memcuda.connect() as w:
        for i in range(2):
            with w.create(f"thr.{i}", (8,), "i64") as t:
                t.numpy()[:] = i + 10
    errors: list[BaseException] = []
    with memcuda.connect() as s:
        s.max_idle_mappings = 0

        def loop(i: int) -> None:
            try:
                for _ in range(300):
                    with s.get(f"thr.{i}") as t:
                        assert int(t.numpy()[7]) == i + 10
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=loop, args=(i,)) for i in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        s.flush()
        assert not errors, errors
        assert not s.release_errors, s.release_errors


def test_failed_pipelined_release_is_reported(agent, caplog) -> None:
    with memcuda.connect() as s:
        s.create("pipe.err", (8,), "f32").release()
        s._release_async("pipe.err")  # this connection holds no reference on it
        with caplog.at_level("WARNING", logger="memcuda"):
            assert s.stat("pipe.err").refcount == 1  # the connection goes on
        assert [e.code for e in s.release_errors] == ["failed_precondition"]
        assert "release failed" in caplog.text


def test_received_descriptors_are_close_on_exec(agent) -> None:
    with memcuda.connect() as s, s.create("cloexec", (8,), "f32") as t:
        assert t._seg.fd >= 0
        assert not os.get_inheritable(t._seg.fd), "a child process must not inherit the segment's descriptor"


def test_kill9_releases(agent) -> None:
    with memcuda.connect() as s:
        s.create("k", (4,), "f32").release()
    env = dict(os.environ, MEMCUDA_SOCKET=agent.socket, PYTHONPATH=child_pythonpath())
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import memcuda, sys, time
        s = memcuda.connect()
        ts = [s.get("k") for _ in range(3)]
        print("ready", flush=True)
        time.sleep(600)
    """)], env=env, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    with memcuda.connect() as s:
        assert s.stat("k").refcount == 2
        p.send_signal(signal.SIGKILL)
        p.wait()
        deadline = time.time() + 2
        while s.stat("k").refcount != 1:
            assert time.time() < deadline, "refcount not back within 2 s of kill -9"
            time.sleep(0.01)


def test_redis_only_path(agent) -> None:
    with memcuda.connect() as s:
        with s.create("r", (16,), "i32") as t:
            t.numpy()[:] = np.arange(16)
        s.stat("r")  # the record reaches Redis after create returns: wait for it
    with memcuda.open_from_redis(agent.redis_url, "r", prefix=agent.prefix) as t:
        assert list(t.numpy()) == list(range(16))
        with memcuda.connect() as s:
            assert s.stat("r").refcount == 2  # the queue reference of this pid
    with memcuda.connect() as s:
        assert s.stat("r").refcount == 1
    t2 = memcuda.open_from_redis(agent.redis_url, "r", prefix=agent.prefix, reference=False)
    assert t2.numpy()[3] == 3
    t2.release()
    with pytest.raises(memcuda.NotFound):
        memcuda.open_from_redis(agent.redis_url, "nope", prefix=agent.prefix)


def test_socket_client_in_another_pid_namespace(agent, new_pid_namespace) -> None:
    with memcuda.connect() as s:
        with s.create("ns", (4,), "i32") as t:
            t.numpy()[:] = [1, 2, 3, 4]
        r = child("""
            import os, memcuda
            with memcuda.connect() as s, s.get("ns") as t:
                print(os.getpid(), s.hello["peer_pid"], t.numpy().sum())
        """, agent, prefix_cmd=new_pid_namespace)
        assert r.returncode == 0, r.stderr
        pid, peer, total = r.stdout.split()
        # The agent knows the child by its pid in the agent's namespace.
        assert pid == "1" and peer != "1" and total == "10", r.stdout
        deadline = time.time() + 2
        while s.stat("ns").refcount != 1:  # the child's release, applied after it exits
            assert time.time() < deadline, "the child's reference outlived it"
            time.sleep(0.01)


def test_redis_queue_refuses_a_pid_from_another_namespace(agent, new_pid_namespace) -> None:
    # Its pid (1 there) names another process here: the agent must refuse
    # it, not pin a reference on that process.
    with memcuda.connect() as s:
        s.create("nsq", (4,), "i32").release()
        s.stat("nsq")  # the record reaches Redis after create returns: wait for it
        r = child(f"""
            import memcuda
            try:
                memcuda.open_from_redis("{agent.redis_url}", "nsq", prefix="{agent.prefix}")
            except memcuda.FailedPrecondition as e:
                print("refused:", e)
        """, agent, prefix_cmd=new_pid_namespace)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("refused:") and "another process" in r.stdout, r.stdout
        assert s.stat("nsq").refcount == 1, "a refused get took a reference"


def test_agent_down_is_unavailable(tmp_path) -> None:
    with pytest.raises(memcuda.Unavailable):
        memcuda.connect(str(tmp_path / "no.sock"))


def test_store_refuses_use_after_fork(agent) -> None:
    s = memcuda.connect()
    pid = os.fork()
    if pid == 0:
        try:
            s.list()
            os._exit(1)
        except memcuda.FailedPrecondition:
            os._exit(0)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, "a forked child must not talk over its parent's connection"
    assert s.list() == []
    s.close()


def test_device_argument_forms() -> None:
    from memcuda._client import _device_arg

    assert _device_arg(None) == "" and _device_arg(1) == "1" and _device_arg("cuda:2") == "2"
    assert _device_arg("GPU-5a4b2e1c-0000-1111-2222-333344445555") == "GPU-5a4b2e1c-0000-1111-2222-333344445555"
    for bad in (True, 1.5, object()):
        with pytest.raises(memcuda.InvalidArgument):
            _device_arg(bad)


@pytest.mark.parametrize("kw, env, match", [
    ({"timeout": 0}, {}, "timeout must be above 0"),
    ({"timeout": float("nan")}, {}, "timeout must be above 0"),
    ({"timeout": "10"}, {}, "timeout must be a number"),
    ({"spin_us": -1}, {}, "spin_us must be at least 0"),
    ({"reconnect": True}, {}, "reconnect must be a number"),
    ({}, {"MEMCUDA_SPIN_US": "fast"}, r"\$MEMCUDA_SPIN_US='fast': spin_us must be a number"),
    ({}, {"MEMCUDA_RECONNECT_S": "-3"}, r"\$MEMCUDA_RECONNECT_S='-3': reconnect must be at least 0"),
    ({}, {"MEMCUDA_RECONNECT_S": "inf"}, "reconnect must be at least 0 and finite"),
    ({}, {"MEMCUDA_IDLE_MAPPINGS": "2.5"}, r"\$MEMCUDA_IDLE_MAPPINGS='2.5': max_idle_mappings must be a whole number"),
    ({}, {"MEMCUDA_IDLE_MAPPING_BYTES": "-1"}, "max_idle_bytes must be at least 0"),
])
def test_bad_client_settings_are_refused_by_name(tmp_path, monkeypatch, kw: dict[str, Any], env: dict[str, str], match: str) -> None:
    """A bad setting is refused before the client dials (the socket here
    does not exist: the setting's error comes first)."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(memcuda.InvalidArgument, match=match):
        memcuda.connect(str(tmp_path / "no.sock"), **kw)


def test_client_settings_from_the_environment(agent, monkeypatch) -> None:
    monkeypatch.setenv("MEMCUDA_IDLE_MAPPINGS", " 3 ")
    monkeypatch.setenv("MEMCUDA_IDLE_MAPPING_BYTES", "4096")
    monkeypatch.setenv("MEMCUDA_SPIN_US", "")  # empty: the default
    with memcuda.connect(reconnect=0) as s:
        assert (s.max_idle_mappings, s.max_idle_bytes) == (3, 4096)
        s.max_idle_mappings = 5
        assert s.max_idle_mappings == 5
        for bad in (-1, 1.5, "7", None):
            with pytest.raises(memcuda.InvalidArgument, match="max_idle_bytes"):
                s.max_idle_bytes = bad
        assert s.max_idle_bytes == 4096
        assert s.list() == []


@pytest.mark.agent_args("--registry-coalesce", "30s")
def test_readers_are_not_held_up_by_a_get_in_its_window(agent) -> None:
    """One process keeps a reference whose get is still in its coalescing
    window (the name's oldest registry turn); another gets and releases the
    same tensor a thousand times. Its pairs reach Redis neither way, and none
    waits for the keeper's window (with the bound counting them, the 257th
    pair waited for it, and past the operation timeout failed)."""
    with memcuda.connect() as owner:
        owner.create("w", (4,), "f32").release()
    with memcuda.connect() as keeper, memcuda.connect() as reader:
        held = keeper.get("w")
        slowest = 0.0
        for _ in range(1000):
            t0 = time.perf_counter()
            reader.get("w").release()
            slowest = max(slowest, time.perf_counter() - t0)
        assert slowest < 2.0, f"a pair waited {slowest:.1f}s for the keeper's window"
        held.release()  # cancels the keeper's get too: every turn of the name ends
        keeper.flush()  # its answer read: the release was handled
        assert reader.stat("w").refcount == 1  # the registry's own: no pair reached Redis


def test_unknown_device_is_refused(agent) -> None:
    with memcuda.connect() as s:
        for dev in (7, "GPU-00000000-0000-0000-0000-000000000000"):
            with pytest.raises(memcuda.InvalidArgument):
                s.create("d", (1,), "f32", device=dev)


def test_create_many(agent) -> None:
    specs = [(f"cm.{i}", (4, i + 1), "i32") for i in range(40)]  # more than one window in flight
    with memcuda.connect() as s, memcuda.connect() as other:
        ts = s.create_many(specs)
        assert [(t.name, t.shape, t.dtype) for t in ts] == [(n, tuple(sh), dt) for n, sh, dt in specs]
        assert all(int(t.numpy().sum()) == 0 for t in ts)  # zero-filled
        ts[7].numpy()[:] = 7
        for t in ts:
            t.release()
        s.flush()
        assert other.stat("cm.7").refcount == 1  # the registry's alone
        # Existing names with the same dtype and shape are opened, as create does.
        again = s.create_many([("cm.7", (4, 8), "i32"), ("cm.new", [2], "f32")])
        assert int(again[0].numpy()[0, 0]) == 7 and again[1].shape == (2,)
        for t in again:
            t.release()
        # One failure: every reference this call took is released, what it
        # created stays, and the connection stays in step.
        with pytest.raises(memcuda.AlreadyExists):
            s.create_many([("cm.made", (3,), "u8"), ("cm.7", (5,), "i32"), ("cm.after", (3,), "u8")])
        s.flush()
        assert other.stat("cm.made").refcount == 1 and other.stat("cm.after").refcount == 1
        assert other.stat("cm.7").refcount == 1
        with s.get("cm.7") as t:
            assert int(t.numpy()[0, 0]) == 7
        # The agent's checks (dtype, name) fail the same way.
        for bad in [("cm.dt", (2,), "f33"), ("cm bad", (2,), "f32")]:
            with pytest.raises(memcuda.InvalidArgument):
                s.create_many([("cm.ok", (2,), "f32"), bad])
            s.flush()
            assert other.stat("cm.ok").refcount == 1
        assert s.create_many([]) == []


@pytest.mark.parametrize("specs, match", [
    ("cm.x", "sequence"),
    ([("cm.x", (2,))], "name, shape, dtype"),
    ([(3, (2,), "f32")], "name, shape, dtype"),
    ([("cm.x", 2, "f32")], "sequence of integers"),
    ([("cm.x", (2.5,), "f32")], "not an integer"),
    ([("cm.x", (True,), "f32")], "bool"),
])
def test_create_many_refuses_bad_specs_before_sending_any(agent, specs: Any, match: str) -> None:
    with memcuda.connect() as s:
        arg = [("cm.first", (1,), "u8")] + specs if isinstance(specs, list) else specs
        with pytest.raises(memcuda.InvalidArgument, match=match):
            s.create_many(arg)
        assert all(t.name != "cm.first" for t in s.list()), "a spec was sent before the bad one was seen"


@pytest.mark.parametrize("shape", [(2.0,), "ab", 3, (1, None)])
def test_create_refuses_shapes_that_are_not_integers(agent, shape: Any) -> None:
    with memcuda.connect() as s, pytest.raises(memcuda.InvalidArgument):
        s.create("cs.x", shape, "f32")


def test_list_by_prefix_in_pages_and_holders(agent) -> None:
    with memcuda.connect() as c:
        made = [c.create(f"lp.{i:03d}", (1,), "u8") for i in range(25)]
        other = c.create("other.x", (1,), "u8")
        names = [i.name for i in c.iter_list("lp.", page=7)]
        assert names == [f"lp.{i:03d}" for i in range(25)], "pages in name order, nothing lost or repeated"
        assert [i.name for i in c.list("other.")] == ["other.x"]
        assert len(c.list()) == 26
        c.flush()
        h = c.holders("lp.000")
        assert h.get("registry") == 1 and sum(1 for k in h if k.startswith("conn:")) == 1, h
        with pytest.raises(memcuda.NotFound):
            c.holders("lp.missing")
        for t in made + [other]:
            t.release()


def test_answers_of_one_record_come_compact(agent) -> None:
    with memcuda.connect() as s:
        bodies: list[bytes] = []
        read = s._conn.read_frame

        def spy() -> tuple[int, bytes]:
            nfd, body = read()
            bodies.append(body)
            return nfd, body

        s._conn.read_frame = spy  # type: ignore[method-assign]
        t = s.create("cr.a", (3, 5), "i16")
        t.numpy()[:] = 7
        g = s.get("cr.a")
        info = s.stat("cr.a")
        names = [x.name for x in s.list("cr.")]
        assert [b[:1] for b in bodies] == [b"R", b"R", b"R", b"{"]
        assert names == ["cr.a"] and info.shape == (3, 5) and info.dtype == "i16" and info.bytes == 30
        assert g.info.uid == t.info.uid == info.uid and int(g.numpy().sum()) == 7 * 15
        with pytest.raises(memcuda.NotFound):
            s.get("cr.missing")  # errors stay JSON
        g.release()
        t.release()


def _fake_agent(path: str, answer: "Any") -> "list[str]":
    """A socket at path that speaks frames: answer(request) gives each
    answer's body (bytes). Returns the ops it was sent, as they come."""
    import json
    import socket
    import threading

    from memcuda import _wire

    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    seen: list[str] = []

    def serve() -> None:
        c, _ = srv.accept()
        buf = b""
        while True:
            while len(buf) < _wire.HEADER_SIZE or len(buf) < _wire.HEADER_SIZE + _wire.parse_header(buf[:12]).body_len:
                got = c.recv(65536)
                if not got:
                    srv.close()
                    return
                buf += got
            n = _wire.HEADER_SIZE + _wire.parse_header(buf[:12]).body_len
            req, buf = json.loads(buf[_wire.HEADER_SIZE:n]), buf[n:]
            seen.append(req["op"])
            c.sendall(_wire.frame(_wire.KIND_RESPONSE, answer(req)))

    threading.Thread(target=serve, daemon=True).start()
    return seen


_OLD_RECORD = {"name": "old.t", "uid": "u-1", "dtype": "f32", "shape": [2], "device": 0, "bytes": 8, "ipc_mode": "host",
               "ipc_handle": "/x", "offset": 0, "segment_id": "s", "segment_size": 4096, "owner_pid": 1, "refcount": 1,
               "state": "ready", "agent": "old", "node": "n", "ctime": 1, "mtime": 1}


def _old_agent_answer(req: dict[str, Any], stat: bytes = b"") -> bytes:
    import json

    ans: dict[str, Any] = {"id": req["id"], "ok": True}
    if req["op"] == "hello":
        ans["hello"] = {"version": 1, "agent": "old", "node": "n", "mode": "host", "features": ["forget"]}
    elif req["op"] == "stat":
        if stat:
            return stat
        ans["tensor"] = _OLD_RECORD
    else:
        ans = {"id": req["id"], "ok": False, "error": {"code": "unimplemented", "message": f"no op {req['op']}"}}
    return json.dumps(ans).encode()


def test_an_agent_without_compact_records(tmp_path) -> None:
    """A client newer than its agent: the agent answers the compact-records
    and pieces requests unimplemented, and the client goes on with JSON
    answers (and tensors of one piece, all such an agent makes)."""
    path = str(tmp_path / "old.sock")
    seen = _fake_agent(path, _old_agent_answer)
    c = memcuda.connect(path, reconnect=0)
    assert c.hello["agent"] == "old"
    for _ in range(2):
        assert c.stat("old.t").name == "old.t"
    assert seen == ["hello", "compact-records", "pieces", "stat", "stat"]
    c.close()


@pytest.mark.parametrize("body", [b"R7\x1fshort", b"{not json", b"R\x1f" * 22 + b"x"])
def test_a_malformed_answer_is_a_protocol_error(tmp_path, body: bytes) -> None:
    path = str(tmp_path / "bad.sock")
    _fake_agent(path, lambda req: _old_agent_answer(req, stat=body))
    c = memcuda.connect(path, reconnect=0)
    with pytest.raises(memcuda.ProtocolError, match="malformed answer"):
        c.stat("old.t")
    c.close()


def test_only_answers_without_descriptors_are_cached(agent) -> None:
    from memcuda import _wire

    with memcuda.connect() as s:
        s.create("cache.big", (3 << 20,), "u8").release()  # a segment of its own
        s.create("cache.small", (16,), "f32").release()
    _wire._ANSWERS.clear()
    with memcuda.connect() as c:
        first = c.get("cache.big")  # the segment's descriptor comes with this answer
        assert not _wire._ANSWERS, "an answer carrying a descriptor was cached"
        again = c.get("cache.big")  # held: answered without a descriptor
        assert len(_wire._ANSWERS) == 1, "the answer without a descriptor was not cached"
        again.release()
        first.release()
    with memcuda.connect() as s:
        s.delete("cache.big")
        s.delete("cache.small")


_SPIN_METRICS_PORT = _free_port()
_GATED_METRICS_PORT = _free_port()


def _spin_metrics(port: int) -> dict[str, float]:
    """The agent's --hot-spin metrics: caught and missed polls under "true"
    and "false", the rest by name."""
    import urllib.request
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    got = {}
    for line in body.splitlines():
        if line.startswith("memcuda_hot_spins_total{"):
            got[line.split("}")[0].split('"')[1]] = float(line.split()[-1])
        elif line.startswith(("memcuda_hot_spin", "memcuda_node_")):
            got[line.split()[0]] = float(line.split()[-1])
    return got


def _gets_answer_right(name: str) -> None:
    with memcuda.connect() as c:
        t = c.create(name, (256,), "float32")
        t.numpy()[:] = np.arange(256, dtype=np.float32)
        for i in range(200):
            with c.get(name) as g:
                assert g.numpy()[i % 256] == i % 256
        t.release()
        c.flush()


@pytest.mark.agent_args("--hot-spin", "20ms", "--hot-spinners", "1", "--hot-spin-max-pressure", "-1",
                        "--metrics-addr", f"127.0.0.1:{_SPIN_METRICS_PORT}")
def test_an_agent_that_polls_for_requests_answers_them(agent) -> None:
    """With --hot-spin a connection's next request is read by the polling
    thread (the agent's metric counts it), and every answer is right."""
    _gets_answer_right("spin.w")
    got = _spin_metrics(_SPIN_METRICS_PORT)
    assert got["true"] >= 100, got  # most of the 400 requests came within a 20 ms spin on a loaded machine too
    assert got["memcuda_hot_spin_on"] == 1 and got["memcuda_hot_spins_skipped_total"] == 0, got
    assert not any(k.startswith("memcuda_node_") for k in got), got  # -1: the node is not read


def _busy(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


@pytest.mark.agent_args("--hot-spin", "20ms", "--hot-spinners", "1", "--metrics-addr", f"127.0.0.1:{_GATED_METRICS_PORT}")
def test_an_agent_does_not_poll_while_the_nodes_cpus_are_busy(agent) -> None:
    """More running processes than the node has CPUs: tasks wait for CPUs,
    so the agent's gate keeps its polls off (each one it would have made is
    counted skipped), and every request is answered from its blocking
    read."""
    import multiprocessing as mp
    n = 2 * (os.cpu_count() or 1) + 1
    ctx = mp.get_context("fork")
    load = [ctx.Process(target=_busy, args=(time.time() + 60,)) for _ in range(n)]
    for p in load:
        p.start()
    try:
        time.sleep(0.5)  # samples of the loaded node
        _gets_answer_right("spin.gated")
        got = _spin_metrics(_GATED_METRICS_PORT)
    finally:
        for p in load:
            p.terminate()
        for p in load:
            p.join()
    assert got["memcuda_hot_spin_on"] == 0, got
    # A request read while the connection waits hot would have been polled
    # for; the rest wait parked (docs/architecture.md).
    assert got["memcuda_hot_spins_skipped_total"] >= 100 and got["true"] + got["false"] == 0, got
    if "memcuda_node_cpu_pressure" in got:  # the kernel's pressure stall information
        assert got["memcuda_node_cpu_pressure"] >= 0.3, got
    else:
        assert got["memcuda_node_idle_cpus"] < 1, got


def test_the_agent_refuses_a_negative_spin(bin_dir) -> None:
    for flag, value, want in (("--hot-spin", "-1ms", "--hot-spin must not be negative, --hot-spinners not under -1"),
                              ("--hot-spinners", "-2", "--hot-spin must not be negative, --hot-spinners not under -1"),
                              ("--hot-spin-max-pressure", "0", "--hot-spin-max-pressure must be over 0 and at most 1, or -1"),
                              ("--hot-spin-max-pressure", "1.5", "--hot-spin-max-pressure must be over 0 and at most 1, or -1"),
                              ("--hot-spin-idle-cpus", "-0.5", "--hot-spin-idle-cpus must not be negative")):
        r = subprocess.run([str(bin_dir / "memcuda-agent"), flag, value, "--socket", "/nonexistent/agent.sock"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and want in r.stderr, (flag, r.stderr)
