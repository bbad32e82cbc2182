"""GPU tensors across restarts of the agent (docs/architecture.md, "Survival"):
vmm memory is handed over in a planned restart and adopted back from the
clients that map it after a crash; legacy memory stays only with the
processes that opened it. Skipped without a CUDA GPU; run by
scripts/gpu-suite-run.sh on a GPU machine."""
from __future__ import annotations

import time

import pytest

import memcuda
from conftest import Agent

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu


def _written(c: memcuda.Client, name: str, refcount: int) -> None:
    # A create's record follows its answer (write-behind): a crash before it loses it.
    deadline = time.monotonic() + 5
    while True:
        try:
            if c.stat(name).refcount == refcount:
                return
        except memcuda.NotFound:
            pass
        assert time.monotonic() < deadline, f"{name} never reached Redis with refcount {refcount}"
        time.sleep(0.005)


def _orphaned_until_released(c: memcuda.Client, d: memcuda.Client, held: memcuda.SharedTensor) -> None:
    """held (c's) is an orphaned legacy tensor: d gets no new reference, and
    the record goes with c's release."""
    assert c.stat(held.name).state == "orphaned"
    with pytest.raises(memcuda.FailedPrecondition, match="outlived"):
        d.get(held.name)
    held.release()
    c.flush()
    with pytest.raises(memcuda.NotFound):
        d.stat(held.name)


def _only(agent: Agent, mode: str) -> None:
    if agent.mode != mode:
        pytest.skip(f"a {mode} case")


@pytest.mark.agent_args("--reattach-grace", "2s")
def test_planned_restart_hands_over(gpu_agent: Agent) -> None:
    c = memcuda.connect()
    with c.create("p", (1 << 20,), "f32") as t:
        t.torch().copy_(torch.arange(1 << 20, dtype=torch.float32, device="cuda"))
        torch.cuda.synchronize()
    held = c.create("h", (4096,), "f32")
    held.torch().fill_(7.0)
    torch.cuda.synchronize()
    _written(c, "p", 1)
    _written(c, "h", 2)
    old = gpu_agent.proc
    t0 = time.monotonic()
    gpu_agent.launch()
    gpu_agent.wait_ready()
    assert old.wait(30) == 0, "the old instance did not exit cleanly after handing over"
    print(f"hand-over on {gpu_agent.mode}: {time.monotonic() - t0:.3f} s from the successor's start to the predecessor's exit")
    assert held.torch().sum().item() == 7.0 * 4096  # the holder's mapping is untouched
    d = memcuda.connect()
    if gpu_agent.mode == "vmm":
        with d.get("p") as t:
            assert torch.equal(t.torch(), torch.arange(1 << 20, dtype=torch.float32, device="cuda"))
        with d.get("h") as t:
            assert t.torch().sum().item() == 7.0 * 4096
        assert c.stat("h").refcount == 2  # registry + the holder, reattached
    else:
        # Legacy memory cannot move: nobody held p, so it is gone; h stays
        # for its holder only.
        with pytest.raises(memcuda.NotFound):
            d.get("p")
        _orphaned_until_released(c, d, held)
    held.release()
    c.close()
    d.close()


@pytest.mark.agent_args("--reattach-grace", "2s")
def test_vmm_crash_with_a_reader_is_adopted_back(gpu_agent: Agent) -> None:
    _only(gpu_agent, "vmm")
    c = memcuda.connect()
    r = c.create("r", (1 << 20,), "f32")
    r.torch().copy_(torch.arange(1 << 20, dtype=torch.float32, device="cuda"))
    torch.cuda.synchronize()
    _written(c, "r", 2)
    gpu_agent.kill()
    r.torch().mul_(2)  # the memory lives on in this process's mapping
    torch.cuda.synchronize()
    gpu_agent.restart()
    assert c.stat("r").name == "r"  # reconnects and offers its descriptor
    assert c.reconnects == 1
    want = torch.arange(1 << 20, dtype=torch.float32, device="cuda") * 2
    with memcuda.connect() as d, d.get("r") as t:
        assert torch.equal(t.torch(), want)
        t.torch().add_(1)
        torch.cuda.synchronize()
    assert torch.equal(r.torch(), want + 1)
    r.release()
    c.close()


@pytest.mark.agent_args("--reattach-grace", "2s")
def test_vmm_crash_with_a_reader_of_a_tensor_in_pieces_is_adopted_back(gpu_agent: Agent) -> None:
    """A tensor in pieces lives in segments its reader maps only inside the
    tensor's own mapping: the reader offers them all, and the new agent
    adopts them as one group."""
    _only(gpu_agent, "vmm")
    mib = 1 << 20
    c = memcuda.connect()
    for n in "abcd":
        c.create(f"q.{n}", (12 * mib,), "u8").release()
    c.delete("q.a")
    c.delete("q.c")
    r = c.create("q.big", (5 * mib,), "f32")
    assert len(r.info.pieces) == 2, r.info
    want = torch.arange(5 * mib, dtype=torch.float32, device="cuda")
    r.torch().copy_(want)
    torch.cuda.synchronize()
    _written(c, "q.big", 2)
    gpu_agent.kill()
    gpu_agent.restart()
    assert c.stat("q.big").pieces == r.info.pieces  # reconnects and offers both segments
    assert c.reconnects == 1
    with memcuda.connect() as d, d.get("q.big") as t:
        assert torch.equal(t.torch(), want)
        t.torch()[3 * mib - 1:3 * mib + 1] = -1.0  # over the seam
        torch.cuda.synchronize()
    assert float(r.torch()[3 * mib - 1]) == -1.0 and float(r.torch()[3 * mib]) == -1.0
    r.release()
    c.close()


@pytest.mark.agent_args("--reattach-grace", "1s")
def test_vmm_crash_with_nobody_mapping_is_reported_lost(gpu_agent: Agent) -> None:
    _only(gpu_agent, "vmm")
    with memcuda.connect() as c:
        with c.create("n", (1024,), "f32") as t:
            t.torch().fill_(1.0)
        _written(c, "n", 1)
    gpu_agent.kill()
    gpu_agent.restart()
    deadline = time.monotonic() + 10
    with memcuda.connect() as d:
        while True:
            try:
                d.stat("n")
            except memcuda.NotFound:
                break
            assert time.monotonic() < deadline, "the record of memory nobody kept outlived the grace"
            time.sleep(0.1)
    log = gpu_agent.log.read_text()
    assert "tensor lost" in log and '"n"' in log


@pytest.mark.agent_args("--reattach-grace", "2s")
def test_legacy_crash_leaves_holders_their_memory(gpu_agent: Agent) -> None:
    _only(gpu_agent, "legacy")
    c = memcuda.connect()
    h = c.create("lh", (4096,), "f32")
    h.torch().fill_(3.0)
    torch.cuda.synchronize()
    _written(c, "lh", 2)
    gpu_agent.kill()
    gpu_agent.restart()
    assert h.torch().sum().item() == 3.0 * 4096  # still mapped in this process
    with memcuda.connect() as d:
        _orphaned_until_released(c, d, h)  # c reconnects and reattaches
    c.close()
