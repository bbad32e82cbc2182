"""Tensors outlive the agent (host backend): a client holding a tensor across
a stop or a crash of its agent keeps its mapping, reconnects by itself and
takes its reference over; nothing it holds raises."""
from __future__ import annotations

import signal
import time

import numpy as np
import pytest

import memcuda
from conftest import Agent


def _refcount(c: memcuda.Client, name: str) -> int:
    return c.stat(name).refcount


def _wait_written(c: memcuda.Client, name: str, refcount: int) -> None:
    deadline = time.monotonic() + 5
    while True:
        try:
            if _refcount(c, name) == refcount:
                return
        except memcuda.NotFound:
            pass
        assert time.monotonic() < deadline, f"{name} never reached Redis with refcount {refcount}"
        time.sleep(0.005)


@pytest.mark.agent_args("--reattach-grace", "1s")
@pytest.mark.parametrize("how", ["stop", "kill"])
def test_reader_rides_through_a_restart(agent: Agent, how: str) -> None:
    c = memcuda.connect()
    t = c.create("ride", (1024,), "f32")
    a = t.numpy()
    a[:] = np.arange(1024, dtype=np.float32)
    uid = t.info.uid
    with c.create("other", (8,), "i32"):
        pass
    _wait_written(c, "ride", 2)

    if how == "stop":
        agent.stop()
    else:
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait()
    a *= 2  # the mapping needs no agent
    agent.restart()

    # The next call reconnects; the held tensor is still held and mapped.
    assert c.stat("other").name == "other"
    assert c.reconnects == 1
    assert np.array_equal(a, np.arange(1024, dtype=np.float32) * 2)
    with memcuda.connect() as d, d.get("ride") as t2:
        assert t2.info.uid == uid
        b = t2.numpy()
        assert np.array_equal(b, a)
        a[0] = -1
        assert b[0] == -1
        # registry + the reattached connection + this one
        assert _refcount(d, "ride") == 3
    t.release()
    c.flush()
    # d's last release and its close reach the agent on d's own
    # connection, in no order with c's calls: wait for them.
    _wait_written(c, "ride", 1)
    c.close()


def test_unsafe_call_in_flight_raises_disconnected(agent: Agent) -> None:
    c = memcuda.connect()
    c.create("gone", (4,), "f32").release()
    agent.stop()
    agent.restart()
    with pytest.raises(memcuda.Disconnected, match="may or may not have been applied"):
        c.delete("gone")
    # The client is connected again and works.
    assert c.stat("gone").name == "gone"
    c.close()


def test_no_reconnect_when_disabled(agent: Agent) -> None:
    c = memcuda.connect(reconnect=0)
    agent.stop()
    agent.restart()
    with pytest.raises(memcuda.Disconnected):
        c.stat("x")
    c.close()


@pytest.mark.agent_args("--reattach-grace", "1s")
def test_reattach_counts_every_open_reference(agent: Agent) -> None:
    c = memcuda.connect()
    ts = [c.create("many", (16,), "u8") for _ in range(3)]
    _wait_written(c, "many", 2)  # a create's record follows its answer (write-behind): a crash before it loses it
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait()
    agent.restart()
    ts[0].release()  # reconnects; the reattach counted 3, this drops one
    ts[1].release()
    c.flush()
    assert c.reconnects == 1
    assert _refcount(c, "many") == 2  # registry + this connection, for ts[2]
    ts[2].release()
    c.flush()
    assert _refcount(c, "many") == 1
    c.close()
