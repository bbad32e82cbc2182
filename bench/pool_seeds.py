"""Pool policy over many traces, no GPU: replays each trace kind of
alloc_trace.py, at several seeds, through one or more pooltrace builds in
the sim backend (segments that own no memory; the same peaks and segment
counts as vmm), and prints one markdown row per build: peak reserved over
peak live / segments made on the suite's trace (seed 42), then the mean
(highest ratio) / mean segments over the other seeds.

  python3 bench/pool_seeds.py [--seeds 1-5] [--flags "-pieces 8 -whole-maps"] LABEL=POOLTRACE [LABEL=POOLTRACE ...]

A POOLTRACE may carry flags of its own after a comma: old=/tmp/pt-old,-slack,1.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

KINDS = ("mixed", "llm", "small", "holes")
SUITE_SEED = 42
_STATS = re.compile(r"segments made (\d+).*peak reserved (\d+), peak live (\d+)")


def seeds_of(spec: str) -> list[int]:
    """"1-5" or "1,3,7" as a list of seeds."""
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def trace(dir: str, kind: str, seed: int) -> str:
    """The trace file of kind and seed, generated once (as the GPU suite does)."""
    path = os.path.join(dir, f"{kind}-{seed}.txt")
    if not os.path.exists(path):
        gen = [sys.executable, os.path.join(os.path.dirname(__file__), "alloc_trace.py"), "gen", path,
               "--kind", kind, "--seed", str(seed)]
        if kind == "small":
            gen += ["--peak-gib", "2"]
        subprocess.run(gen, check=True)
    return path


def replay(binary: list[str], flags: list[str], path: str) -> tuple[float, int]:
    """Peak reserved over peak live and segments made of one replay."""
    r = subprocess.run([*binary, "-backend", "sim", *flags, path], capture_output=True, text=True)
    m = _STATS.search(r.stderr)
    if r.returncode != 0 or m is None:
        raise SystemExit(f"{' '.join(binary)} on {path} failed (rc {r.returncode}): {r.stderr.strip()}")
    return int(m[2]) / int(m[3]), int(m[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+", help="LABEL=POOLTRACE[,flag,...]")
    ap.add_argument("--seeds", default="1-5", help="seeds besides the suite's 42 (default 1-5)")
    ap.add_argument("--flags", default="-pieces 8 -whole-maps", help="pooltrace flags for every build")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "memcuda-pool-seeds"), help="where traces are kept")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    seeds = seeds_of(args.seeds)
    flags = args.flags.split()
    print("| build | " + " | ".join(f"`{k}`" for k in KINDS) + " |")
    print("| --- |" + " --- |" * len(KINDS))
    for build in args.builds:
        label, sep, spec = build.partition("=")
        if not sep or not spec:
            raise SystemExit(f"a build is LABEL=POOLTRACE, not {build!r}")
        binary = spec.split(",")
        cells = []
        for kind in KINDS:
            ratio, made = replay(binary, flags, trace(args.dir, kind, SUITE_SEED))
            runs = [replay(binary, flags, trace(args.dir, kind, s)) for s in seeds]
            mean = statistics.mean(r for r, _ in runs)
            top = max(r for r, _ in runs)
            cells.append(f"{ratio:.4f} / {made}; {mean:.3f} ({top:.3f}) / {statistics.mean(m for _, m in runs):.0f}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
