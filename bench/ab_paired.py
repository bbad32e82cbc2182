"""Paired A/B of two agents on one machine: one process alternates the same
call between agent A ($AB_SOCKET_A) and agent B ($AB_SOCKET_B) in short
blocks of calls back to back, the blocks alternating A B, B A, so that both
see the same machine state. Differences of a few microseconds that separate
runs hide under their spread (the CPU's state moves p50s by more than that
between runs) show between neighbouring blocks. Back to back, because a
call after an idle agent costs more (docs/benchmarks.md, create after a
pause). Prints a Markdown table; --out writes a summary as JSON.

Calls: create (bf16 256x1024 from a warm pool: create, then release and
delete outside the timing), get-warm (the connection holds the tensor) and
get-unheld (get and release, no reference held between), get-first (the
get of get-unheld alone, its release untimed). --gap-us puts an
untimed pause before every call, the client spinning (not sleeping) so that
only the agent goes idle: the calls of a process that works between them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import memcuda  # noqa: E402
from gpu_bench import pct  # noqa: E402


class Create:
    """create timed; release and delete after it, untimed."""

    def __init__(self, c: Any, tag: str) -> None:
        self.c, self.tag, self.i = c, tag, 0

    def __call__(self) -> float:
        self.i += 1
        name = f"ab.{self.tag}.{self.i}"
        t0 = time.perf_counter()
        t = self.c.create(name, (256, 1024), "bf16")
        dt = time.perf_counter() - t0
        t.release()
        self.c.delete(name)
        return dt


class GetWarm:
    """get of a tensor the connection holds, then its release (timed)."""

    def __init__(self, c: Any, tag: str) -> None:
        self.c, self.name = c, f"ab.{tag}.held"
        self.held = c.create(self.name, (256, 1024), "bf16")

    def __call__(self) -> float:
        t0 = time.perf_counter()
        self.c.get(self.name, wait=False).release()
        return time.perf_counter() - t0


class GetUnheld:
    """get and release of a tensor no reference of this connection holds."""

    def __init__(self, c: Any, tag: str) -> None:
        self.c, self.name = c, f"ab.{tag}.unheld"
        c.create(self.name, (256, 1024), "bf16").release()
        c.flush()

    def __call__(self) -> float:
        t0 = time.perf_counter()
        self.c.get(self.name, wait=False).release()
        self.c.flush()
        return time.perf_counter() - t0


class GetFirst(GetUnheld):
    """get of a tensor no reference of this connection holds (timed: the
    connection's first reference), then its release (untimed)."""

    def __call__(self) -> float:
        t0 = time.perf_counter()
        t = self.c.get(self.name, wait=False)
        dt = time.perf_counter() - t0
        t.release()
        self.c.flush()
        return dt


CALLS: dict[str, Callable[[Any, str], Callable[[], float]]] = {
    "create": Create, "get-warm": GetWarm, "get-unheld": GetUnheld, "get-first": GetFirst}


def spin(seconds: float) -> None:
    """Waits without giving up the CPU."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def paired(a: Callable[[], float], b: Callable[[], float], n: int, block: int, warm: int,
           gap: float = 0.0) -> tuple[list[float], list[float], list[float]]:
    """n calls on each agent, in blocks of `block` calls back to back (the
    first `warm` of each block untimed: they wake the agent), the blocks
    alternating A B, B A, ... With a gap, each call follows a pause of that
    many seconds. Returns both agents' times and, per pair of blocks, the
    difference of their medians (B - A)."""
    ta: list[float] = []
    tb: list[float] = []
    diffs: list[float] = []

    def call(f: Callable[[], float]) -> float:
        if gap:
            spin(gap)
        return f()

    def run(f: Callable[[], float]) -> list[float]:
        for _ in range(warm):
            call(f)
        return [call(f) for _ in range(block)]

    for i in range((n + block - 1) // block):
        if i % 2:
            xb = run(b)
            xa = run(a)
        else:
            xa = run(a)
            xb = run(b)
        ta.extend(xa)
        tb.extend(xb)
        diffs.append(pct(xb, 50) - pct(xa, 50))
    return ta, tb, diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="timed calls per agent and call")
    ap.add_argument("--block", type=int, default=20, help="calls back to back on one agent before the other's turn")
    ap.add_argument("--warm", type=int, default=3, help="untimed calls at the start of each block")
    ap.add_argument("--only", default=",".join(CALLS), help="calls to measure, comma-separated")
    ap.add_argument("--gap-us", type=float, default=0.0, help="an untimed pause before each call, the client spinning")
    ap.add_argument("--label", default="", help="a word for the table's heading (the backend)")
    ap.add_argument("--out", default="", help="JSON file for the summary")
    args = ap.parse_args()
    ca = memcuda.connect(os.environ["AB_SOCKET_A"])
    cb = memcuda.connect(os.environ["AB_SOCKET_B"])
    out: dict[str, Any] = {}
    if args.gap_us:
        print(f"each call after a pause of {args.gap_us:g} us, the client spinning")
    print(f"| {args.label} call | A p50 us | B p50 us | B/A | median over block pairs of B-A, us | block pairs B faster |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.only.split(","):
        make = CALLS[name]
        ta, tb, diff = paired(make(ca, "a"), make(cb, "b"), args.n, args.block, args.warm, args.gap_us / 1e6)
        faster = sum(1 for d in diff if d < 0) / len(diff)
        out[name] = {"a_p50": pct(ta, 50), "b_p50": pct(tb, 50), "a_p99": pct(ta, 99), "b_p99": pct(tb, 99),
                     "block_diff_p50": pct(diff, 50), "b_faster": faster, "blocks": len(diff), "block": args.block}
        print(f"| {name} | {pct(ta, 50) * 1e6:.1f} | {pct(tb, 50) * 1e6:.1f} | {pct(tb, 50) / pct(ta, 50):.3f} | "
              f"{pct(diff, 50) * 1e6:+.1f} | {faster:.0%} |")
    ca.close()
    cb.close()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
