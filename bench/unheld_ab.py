"""Unheld get+release throughput (bench/gpu_bench.py's loop) at one
process count, on one shared name and on a name per process, against the
agent at $MEMCUDA_SOCKET: prints one JSON line of pairs per second. The
driver of scripts/ab-throughput.sh, which alternates two agent builds."""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_bench  # noqa: E402

import memcuda  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--procs", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    s = memcuda.connect()
    names = gpu_bench.tput_tensors(s, args.procs)
    one, _, one_load = gpu_bench._tput_run(args.procs, False, False, args.seconds)
    each, _, each_load = gpu_bench._tput_run(args.procs, False, True, args.seconds)
    for n in names:
        s.delete(n)
    s.close()
    print(json.dumps({"procs": args.procs, "one_name": round(one), "a_name_each": round(each),
                      "load": [one_load, each_load]}), flush=True)


if __name__ == "__main__":
    main()
