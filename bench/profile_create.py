"""Splits a create's time as the Python client sees it: sending, waiting for
the answer (socket + agent), and the client's own work on it. Prints p50s in
microseconds, with the agent's own mean from its metrics when
$MEMCUDA_METRICS_URL is set."""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import memcuda  # noqa: E402
from memcuda import _wire  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import agent_mean, agent_ops  # noqa: E402


def main(n: int = 1000) -> None:
    s = memcuda.connect()
    keep = s.create("pc.keep", (16,), "f32")  # brings the pool's segment and its descriptor
    parts: dict[str, list[float]] = {"send": [], "wait": [], "client": [], "total": []}
    before = agent_ops()
    for i in range(n + 20):
        name = f"pc.{i}"
        t0 = time.perf_counter()
        with s._lock:
            rid = s._send("create", name=name, dtype="bf16", shape=[256, 1024])
            t1 = time.perf_counter()
            nfd, body = s._read_frame()
            t2 = time.perf_counter()
            resp = _wire.decode_body(body, cache=False)  # as create() does
            assert resp.get("id") == rid and not resp.get("error") and nfd == 0, resp
            t = s._open(resp, cache=False)
        t3 = time.perf_counter()
        t.release()
        s.delete(name)
        if i >= 20:
            for k, v in (("send", t1 - t0), ("wait", t2 - t1), ("client", t3 - t2), ("total", t3 - t0)):
                parts[k].append(v)
    keep.release()
    s.delete("pc.keep")
    note = agent_mean(before, "create")
    print("create, p50 us: " + ", ".join(f"{k} {statistics.median(v) * 1e6:.1f}" for k, v in parts.items()) + (f"; {note}" if note else ""))


if __name__ == "__main__":
    main()
