"""Tensors in pieces on the host backend: the agent assembles a tensor from
freed memory, and clients map its parts side by side."""
from __future__ import annotations

import numpy as np
import pytest

import memcuda
from memcuda._pieces import Piece, parse_pieces
from memcuda._record import TensorInfo
from test_host import child

MIB = 1 << 20


def holes(s: memcuda.Client) -> None:
    """Four 12 MiB tensors, the first and third deleted: two 12 MiB holes
    that no 20 MiB tensor fits whole."""
    for n in "abcd":
        s.create(f"h.{n}", (12 * MIB,), "u8").release()
    s.delete("h.a")
    s.delete("h.c")


def test_a_tensor_in_pieces_is_one_array(agent) -> None:
    with memcuda.connect() as s:
        holes(s)
        before = s.stats()["pools"][0]["segment_allocs"]
        t = s.create("big", (5 * MIB,), "f32")
        assert len(t.info.pieces) == 2, t.info
        assert s.stats()["pools"][0]["segment_allocs"] == before  # no new segment: the holes
        assert sum(p.size for p in t.info.pieces) == t.info.bytes == 20 * MIB
        assert (t.info.segment_id, t.info.offset) == (t.info.pieces[0].segment_id, t.info.pieces[0].offset)
        a = t.numpy()
        assert a.shape == (5 * MIB,) and not a.any()  # zero-filled, both pieces
        a[:] = np.arange(5 * MIB, dtype=np.float32)
        first = t.info.pieces[0].size // 4
        t.release()
    # Another process sees one contiguous array, across the pieces' seam.
    r = child(f"""
        import memcuda, numpy as np
        with memcuda.connect() as s, s.get("big") as t:
            a = t.numpy()
            assert len(t.info.pieces) == 2
            assert np.array_equal(a, np.arange(5 << 20, dtype=np.float32))
            assert a[{first} - 1] == {first} - 1 and a[{first}] == {first}
            a[{first}] = -1
    """, agent)
    assert r.returncode == 0, r.stderr
    with memcuda.open_from_redis(agent.redis_url, "big", prefix=agent.prefix) as t:
        a = t.numpy()
        assert a[first] == -1 and a[first - 1] == first - 1 and a[-1] == 5 * MIB - 1
    # Mapped again after its mapping went idle and was dropped.
    with memcuda.connect() as s:
        s.max_idle_mappings = 0
        for _ in range(3):
            with s.get("big") as t:
                assert t.numpy()[first] == -1


def test_a_client_that_cannot_map_pieces_is_refused(agent) -> None:
    with memcuda.connect() as s:
        holes(s)
        s.create("big", (20 * MIB,), "u8").release()
        assert len(s.stat("big").pieces) == 2
    r = child("""
        import memcuda
        memcuda.Client._pieces = False  # as a client from before pieces
        with memcuda.connect() as s:
            try:
                s.get("big")
            except memcuda.FailedPrecondition as e:
                assert "pieces" in str(e), e
            else:
                raise SystemExit("a get of a tensor in pieces was answered")
            with s.create("own", (20 << 20,), "u8") as t:
                assert t.info.pieces == (), t.info.pieces  # its own creates come whole
                t.numpy()[:] = 3
    """, agent)
    assert r.returncode == 0, r.stderr
    with memcuda.connect() as s:
        assert s.stat("big").refcount == 1  # the refused get took no reference


def test_pieces_text_and_records() -> None:
    # The same text as api/v1/pieces_test.go's.
    text = "vmm.a1.5:20971520:4194304:8388608,vmm.a1.9:20971520:0:6291456"
    assert parse_pieces(text) == (Piece("vmm.a1.5", 20971520, 4194304, 8388608), Piece("vmm.a1.9", 20971520, 0, 6291456))
    assert parse_pieces("") == ()
    for bad in ["vmm.a1.5:20971520:4194304", ":2:0:2", "s:2:x:2", "s:2097152:0:4194304", "s:2:0:0"]:
        with pytest.raises(ValueError):
            parse_pieces(bad)
    info = TensorInfo.from_hash({"name": "x", "pieces": text, "offset": "4194304", "segment_id": "vmm.a1.5"})
    assert len(info.pieces) == 2 and info.pieces[1].segment_id == "vmm.a1.9"
    assert TensorInfo.from_wire({"name": "y"}).pieces == ()
    w = TensorInfo.from_wire({"name": "z", "pieces": [{"segment_id": "s", "segment_size": 4, "offset": 0, "size": 4}]})
    assert w.pieces == (Piece("s", 4, 0, 4),)
