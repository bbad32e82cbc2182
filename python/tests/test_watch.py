"""Segments mapped ahead of gets (Client.watch_segments), on the host backend."""
from __future__ import annotations

import threading

import numpy as np

import memcuda
from conftest import eventually


def watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "memcuda-segment-watch"]


def test_segments_are_mapped_before_the_get(agent) -> None:
    with memcuda.connect() as w, memcuda.connect(watch_segments=True) as r:
        r.max_idle_mappings, r.max_idle_bytes = 64, 1 << 40
        # A segment made after the watch, for a tensor the reader has not asked for.
        t = w.create("wa.a", (16,), "i32")
        t.numpy()[:] = 5
        sid = t.info.segment_id
        eventually(lambda: sid in r._segments and r._segments[sid].mapping is not None, "the new segment is mapped")
        seg = r._segments[sid]
        mapping, n = seg.mapping, r.prefetched
        assert n >= 1
        with r.get("wa.a") as got:
            assert int(got.numpy()[3]) == 5
            assert seg.mapping is mapping and r.prefetched == n, "the get used the mapping made ahead"
        # A tensor in a segment of its own (over the small-segment sizes).
        big = w.create("wa.big", (16 << 20,), "f32")
        bid = big.info.segment_id
        assert bid != sid
        eventually(lambda: bid in r._segments and r._segments[bid].mapping is not None, "the big segment is mapped")
        big.numpy()[-1] = 2.5
        with r.get("wa.big") as got:
            assert float(got.numpy()[-1]) == 2.5
        r.flush()  # the reader's release is sent behind; the delete below must see it
        # Released by the agent: unmapped and dropped here.
        big.release()
        w.delete("wa.big")
        assert w.trim() > 0
        eventually(lambda: bid not in r._segments, "the released segment is dropped")
        t.release()
        r.flush()
        assert not r.release_errors, r.release_errors


def test_segments_there_at_the_watch_are_mapped(agent) -> None:
    with memcuda.connect() as w:
        ts = [w.create(f"wb.{i}", (8 << 20,), "u8") for i in range(3)]
        sids = {p.segment_id for t in ts for p in t.info.pieces} | {t.info.segment_id for t in ts}
        assert len(sids) >= 2
        with memcuda.connect() as r:
            r.max_idle_mappings, r.max_idle_bytes = 64, 1 << 40
            r.watch_segments()
            r.watch_segments()  # a second call changes nothing
            eventually(lambda: all(s in r._segments and r._segments[s].mapping is not None for s in sids), "all mapped")
            assert len(watch_threads()) == 1
        eventually(lambda: not watch_threads(), "the watch thread ends with its client")
        for t in ts:
            t.release()


def test_mappings_made_ahead_stay_within_the_idle_bounds(agent) -> None:
    with memcuda.connect() as w, memcuda.connect() as r:
        r.max_idle_mappings = 2
        r.watch_segments()
        ts = [w.create(f"wc.{i}", (32 << 20,), "u8") for i in range(5)]
        sids = {p.segment_id for t in ts for p in t.info.pieces} | {t.info.segment_id for t in ts}
        assert len(sids) >= 3
        eventually(lambda: r.prefetched >= len(sids), "every segment pushed")
        assert sum(1 for s in r._segments.values() if s.mapping is not None) <= 2
        for i, t in enumerate(ts):
            t.numpy()[0] = i + 1
        for i in range(5):  # evicted ones map again on their get
            with r.get(f"wc.{i}") as got:
                assert int(got.numpy()[0]) == i + 1
        for t in ts:
            t.release()
        r.flush()
        assert not r.release_errors, r.release_errors


def test_watch_rides_through_an_agent_restart(agent) -> None:
    with memcuda.connect(watch_segments=True) as r:
        r.max_idle_mappings, r.max_idle_bytes = 64, 1 << 40
        agent.restart()
        with memcuda.connect() as w:
            t = w.create("wd.a", (16,), "f32")
            sid = t.info.segment_id
            eventually(lambda: sid in r._segments and r._segments[sid].mapping is not None,
                       "a segment of the new agent instance is mapped", timeout=15)
            np.testing.assert_array_equal(r.get("wd.a").numpy(), np.zeros(16, np.float32))
            t.release()
