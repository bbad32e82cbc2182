"""The client's own work for a create and a cold-shaped get, no socket and
no agent: each call answered by a recorded answer (gpu_bench's
_ReplayedSocket), the compact record decoded by the C decoder
(memcuda._speedups) and by the pure-Python one in alternating blocks of
one process, so both see the same machine. Needs an agent to record the
answers from ($MEMCUDA_SOCKET); any backend.

  python3 bench/client_work.py [--n 20000] [--block 500]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from memcuda import _wire  # noqa: E402

from gpu_bench import ReplayedCreates  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="timed creates per decoder")
    ap.add_argument("--block", type=int, default=500, help="creates per block (the decoders alternate)")
    args = ap.parse_args()
    if _wire.c_decode_record is None:
        raise SystemExit("memcuda._speedups is not built (make python-ext)")
    rc = ReplayedCreates("b.cw")
    held = []
    times: dict[str, list[float]] = {"c": [], "python": []}
    ratios = []
    decoders = {"c": _wire.c_decode_record, "python": None}
    try:
        while len(times["c"]) < args.n:
            med = {}
            for name, mod in decoders.items():
                _wire.c_decode_record = mod
                ts = []
                for _ in range(args.block):
                    t0 = time.perf_counter()
                    x = rc.create()
                    ts.append(time.perf_counter() - t0)
                    held.append(x)
                held.clear()
                ts = ts[args.block // 10:]
                times[name].extend(ts)
                med[name] = statistics.median(ts)
            ratios.append(med["c"] / med["python"])
    finally:
        _wire.c_decode_record = decoders["c"]
        rc.close()
    for name, ts in times.items():
        print(f"create, the client's work, {name} decoder: p50 {statistics.median(ts) * 1e6:.2f} us over {len(ts)}")
    print(f"c / python, median of block pairs: {statistics.median(ratios):.3f}x "
          f"(quartiles {statistics.quantiles(ratios, n=4)[0]:.3f}-{statistics.quantiles(ratios, n=4)[2]:.3f}, {len(ratios)} pairs)")


if __name__ == "__main__":
    main()
