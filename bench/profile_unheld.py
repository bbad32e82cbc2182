"""Where 16 processes' unheld get+release pairs spend the machine: the
agent's CPU profile (needs an agent started with --pprof on
MEMCUDA_METRICS_URL's address) and the CPU seconds per pair of the agent,
Redis and the clients, for one shared name, a name each, and held pairs.
Writes the profiles to --out."""
import argparse
import os
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_bench  # noqa: E402
import memcuda  # noqa: E402


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def pid_of(name: str) -> int:
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/comm") as f:
                    if f.read().strip() == name:
                        return int(p)
            except OSError:
                pass
    raise SystemExit(f"no {name} process")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--procs", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()
    metrics = os.environ["MEMCUDA_METRICS_URL"].rsplit("/", 1)[0]
    agent, redis = pid_of("memcuda-agent"), pid_of("redis-server")
    s = memcuda.connect()
    for i in range(args.procs):
        s.create(f"b.tput.{i}", (1024,), "f32").release()
    s.create("b.tput", (1024,), "f32").release()
    for label, held, distinct in (("unheld-one", False, False), ("unheld-each", False, True), ("held-one", True, False)):
        prof: dict[str, bytes] = {}

        def grab() -> None:
            time.sleep(3.5)  # _tput_run starts its loops 3 s in
            secs = max(1, int(args.seconds) - 2)
            prof["cpu"] = urllib.request.urlopen(f"{metrics}/debug/pprof/profile?seconds={secs}", timeout=60).read()

        th = threading.Thread(target=grab)
        th.start()
        a0, r0, t0 = cpu_seconds(agent), cpu_seconds(redis), os.times()
        rate, p50, _ = gpu_bench._tput_run(args.procs, held, distinct, args.seconds)
        a1, r1, t1 = cpu_seconds(agent), cpu_seconds(redis), os.times()
        th.join()
        pairs = rate * args.seconds
        kids = (t1.children_user + t1.children_system) - (t0.children_user + t0.children_system)
        print(f"{label}: {rate:,.0f} pairs/s, p50 pair {p50:.1f} us; CPU us per pair: agent {(a1 - a0) / pairs * 1e6:.1f}, "
              f"redis {(r1 - r0) / pairs * 1e6:.1f}, clients {kids / pairs * 1e6:.1f} (clients' figure includes start-up)")
        with open(os.path.join(args.out, f"agent-{label}.pprof"), "wb") as f:
            f.write(prof["cpu"])
    for i in range(args.procs):
        s.delete(f"b.tput.{i}")
    s.delete("b.tput")


if __name__ == "__main__":
    main()
