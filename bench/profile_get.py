"""Profiles the Python client's warm get (cProfile), to see where the time
goes between the client and the agent's raw round trip."""
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import memcuda  # noqa: E402

s = memcuda.connect()
s.create("p.get", (1024,), "f32").release()
hold = s.get("p.get")
ts = []
for _ in range(500):
    ts.append(s.get("p.get"))
t0 = time.perf_counter()
pr = cProfile.Profile()
pr.enable()
for _ in range(3000):
    ts.append(s.get("p.get"))
pr.disable()
print(f"{(time.perf_counter() - t0) / 3000 * 1e6:.1f} us per get under the profiler")
pstats.Stats(pr).sort_stats("tottime").print_stats(14)
