"""Get+release pairs of one process on a tensor while another process
keeps a reference whose get is still in its coalescing window (the name's
oldest registry turn), against the agent at $MEMCUDA_SOCKET: the p50, the
slowest pair, and how many took over 100 ms. Start the agent with a long
window (--registry-coalesce 3s) to see the wait an agent that counted the
released pairs against its bound on scripts behind made the 257th pair do."""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import memcuda  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=600)
    args = ap.parse_args()
    with memcuda.connect() as owner:
        owner.create("b.stall", (4,), "f32").release()
    with memcuda.connect() as keeper, memcuda.connect() as reader:
        held = keeper.get("b.stall")
        took = []
        for _ in range(args.pairs):
            t0 = time.perf_counter()
            reader.get("b.stall").release()
            took.append(time.perf_counter() - t0)
        held.release()
        keeper.flush()
        reader.delete("b.stall")
    took.sort()
    print(f"{args.pairs} pairs behind a get in its window: p50 {took[len(took) // 2] * 1e6:.0f} us, "
          f"slowest {took[-1] * 1e3:.1f} ms, over 100 ms: {sum(t > 0.1 for t in took)}")


if __name__ == "__main__":
    main()
