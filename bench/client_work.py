"""The client's own work for a create, no agent: each call answered by a
recorded answer written ahead into a socket pair (gpu_bench's
ReplayedCreates), with the C module (memcuda._speedups: the request
encoder, the frame reader with its send-and-read, and the compact record
decoder) and in pure Python, in alternating blocks of one process, so
both see the same machine; then with the C module, each of its three
parts alone turned off, and with the send and the read as two calls; then
a warm get (the connection holds the tensor; get and release through the
agent) with the C module and in pure Python, alternating the same way.
Needs an agent to record the answers from ($MEMCUDA_SOCKET); any backend.

  python3 bench/client_work.py [--n 20000] [--block 500]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import memcuda  # noqa: E402
from memcuda import _transport, _wire  # noqa: E402

from gpu_bench import ReplayedCreates  # noqa: E402


# The C module's (decoder, reader, encoder), None for Python's; the reader
# is the pair (read_frame, call).
Parts = Tuple[Any, Any, Any]


def use(parts: Parts) -> None:
    _wire.c_decode_record, reader, _wire.c_encode_request = parts
    _transport.c_read_frame, _transport.c_call = reader or (None, None)


def in_use() -> Parts:
    return _wire.c_decode_record, (_transport.c_read_frame, _transport.c_call), _wire.c_encode_request


def ab(what: str, call: "Callable[[], tuple[Any, float]]", variants: "dict[str, Parts]", n: int, block: int) -> None:
    """call() (what it returns: its result, its seconds) under each variant
    in alternating blocks until each has n; prints their p50 and the
    median of each variant's block ratio to the first's."""
    held = []
    times: dict[str, list[float]] = {v: [] for v in variants}
    ratios: dict[str, list[float]] = {v: [] for v in list(variants)[1:]}
    saved = in_use()
    try:
        while min(len(ts) for ts in times.values()) < n:
            med = {}
            for name, parts in variants.items():
                use(parts)
                ts = []
                for _ in range(block):
                    x, dt = call()
                    ts.append(dt)
                    held.append(x)
                held.clear()
                ts = ts[block // 10:]
                times[name].extend(ts)
                med[name] = statistics.median(ts)
            first = med[next(iter(variants))]
            for name in ratios:
                ratios[name].append(first / med[name])
    finally:
        use(saved)
    for name, ts in times.items():
        print(f"{what}, {name}: p50 {statistics.median(ts) * 1e6:.2f} us over {len(ts)}")
    base = next(iter(variants))
    for name, rs in ratios.items():
        q = statistics.quantiles(rs, n=4)
        print(f"{base} / {name}, median of block pairs: {statistics.median(rs):.3f}x "
              f"(quartiles {q[0]:.3f}-{q[2]:.3f}, {len(rs)} pairs)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="timed creates per variant")
    ap.add_argument("--block", type=int, default=500, help="creates per block (the variants alternate)")
    args = ap.parse_args()
    decode, read, encode = in_use()
    if decode is None or None in read or encode is None:
        raise SystemExit("memcuda._speedups is not built (make python-ext)")
    rc = ReplayedCreates("b.cw")
    c_only, python = (decode, read, encode), (None, None, None)
    work = "create, the client's work"
    try:
        ab(work, rc.create, {"c module": c_only, "python": python}, args.n, args.block)
        ab(work, rc.create, {"c module": c_only, "python decoder": (None, read, encode),
                             "python reader": (decode, None, encode), "python encoder": (decode, read, None),
                             "send, then read": (decode, (read[0], None), encode)},
           args.n // 2, args.block)
    finally:
        rc.close()
    s = memcuda.connect()
    s.create("b.cw.warm", (1024,), "f32").release()
    hold = s.get("b.cw.warm")

    def warm_get() -> "tuple[Any, float]":
        t0 = time.perf_counter()
        t = s.get("b.cw.warm")
        dt = time.perf_counter() - t0
        t.release()
        return None, dt

    try:
        ab("get, warm, through the agent", warm_get, {"c module": c_only, "python": python}, args.n // 2, args.block)
    finally:
        hold.release()
        s.delete("b.cw.warm")
        s.close()


if __name__ == "__main__":
    main()
