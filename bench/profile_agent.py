"""The agent's CPU profile while one client loops a call: creates (each
released and deleted after), or first gets of a tensor whose segment the
client maps (each released, the release's reply read, before the next).
Needs an agent started with --pprof on MEMCUDA_METRICS_URL's address.
Writes one profile per loop to --out (open with `go tool pprof`)."""
import argparse
import os
import sys
import threading
import time
import urllib.request
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import memcuda  # noqa: E402


def profile_while(url: str, seconds: float, path: str, loop: Callable[[threading.Event], int]) -> None:
    got: list[bytes] = []
    done = threading.Event()

    def fetch() -> None:
        with urllib.request.urlopen(f"{url}/debug/pprof/profile?seconds={seconds:g}", timeout=seconds + 30) as r:
            got.append(r.read())
        done.set()

    th = threading.Thread(target=fetch)
    th.start()
    t0 = time.perf_counter()
    n = loop(done)
    dt = time.perf_counter() - t0
    th.join()
    with open(path, "wb") as f:
        f.write(got[0])
    print(f"{os.path.basename(path)}: {n} calls, {dt / max(n, 1) * 1e6:.1f} us each", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=8)
    args = ap.parse_args()
    url = os.environ["MEMCUDA_METRICS_URL"].rsplit("/metrics", 1)[0]
    os.makedirs(args.out, exist_ok=True)
    s = memcuda.connect()

    def creates(done: threading.Event) -> int:
        n = 0
        while not done.is_set():
            name = f"prof.c.{n}"
            s.create(name, (256, 1024), "bf16").release()
            s.delete(name)
            n += 1
        return n

    s.create("prof.first", (256, 1024), "bf16").release()
    pin = s.create("prof.pin", (16,), "f32")  # same small segment: it stays mapped

    def first_gets(done: threading.Event) -> int:
        n = 0
        while not done.is_set():
            s.get("prof.first").release()
            s.flush()
            n += 1
        return n

    profile_while(url, args.seconds, os.path.join(args.out, "create.prof"), creates)
    profile_while(url, args.seconds, os.path.join(args.out, "first.prof"), first_gets)
    pin.release()
    s.close()


if __name__ == "__main__":
    main()
