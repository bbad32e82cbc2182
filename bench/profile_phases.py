"""Splits a create, a cold get and a first get after watch_segments into
phases, from marks set around the client's socket calls: request sent,
answer read, answer decoded, mapping done, call returned (p50 us each). The
same loops with a pause before each call show how much of a call is work
the agent left running from the call before. Run against an agent
(MEMCUDA_SOCKET); prints one line per measure."""
import functools
import os
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import memcuda  # noqa: E402
from memcuda import _cuda, _wire  # noqa: E402
from gpu_bench import watching_client  # noqa: E402


def p50(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] * 1e6 if xs else float("nan")


class Marks:
    """Wraps the client's send, read, decode and import with time marks."""

    def __init__(self, c: Any) -> None:
        self.t: dict[str, list[float]] = {}
        conn = c._conn
        self._undo: list[Callable[[], None]] = []
        self._wrap(conn, "send", "sent", after=True)
        self._wrap(conn, "read_frame", "read", after=True)
        self._wrap(_wire, "decode_answer", "decoded", after=True)
        self._wrap(_cuda, "import_segment", "import0", after=False)
        self._wrap(_cuda, "import_segment", "imported", after=True)

    def _wrap(self, obj: Any, attr: str, key: str, after: bool) -> None:
        f = getattr(obj, attr)
        marks = self.t.setdefault(key, [])

        def w(*a: Any, **kw: Any) -> Any:
            if not after:
                marks.append(time.perf_counter())
            try:
                return f(*a, **kw)
            finally:
                if after:
                    marks.append(time.perf_counter())

        setattr(obj, attr, w)
        self._undo.append(lambda: setattr(obj, attr, f))

    def undo(self) -> None:
        for u in reversed(self._undo):
            u()

    def clear(self) -> None:
        for v in self.t.values():
            v.clear()

    def last(self, key: str) -> float:
        v = self.t.get(key) or [float("nan")]
        return v[-1]


def phased(label: str, c: Any, calls: list[Callable[[], Any]], pause: float = 0.0, after: Callable[[Any], None] = lambda r: None) -> None:
    m = Marks(c)
    cols: dict[str, list[float]] = {k: [] for k in ("total", "to_sent", "sent_to_read", "read_to_decoded", "decoded_to_import", "import", "after")}
    try:
        for fn in calls:
            if pause:
                time.sleep(pause)
            m.clear()
            t0 = time.perf_counter()
            r = fn()
            t1 = time.perf_counter()
            sent, read, dec = m.last("sent"), m.last("read"), m.last("decoded")
            cols["total"].append(t1 - t0)
            cols["to_sent"].append(sent - t0)
            cols["sent_to_read"].append(read - sent)
            cols["read_to_decoded"].append(dec - read)
            if m.t["imported"]:
                cols["decoded_to_import"].append(m.t["import0"][-1] - dec)
                cols["import"].append(m.t["imported"][-1] - m.t["import0"][-1])
                cols["after"].append(t1 - m.t["imported"][-1])
            else:
                cols["after"].append(t1 - dec)
            after(r)  # its own marks come after this call's
    finally:
        m.undo()
    print(f"{label}: " + ", ".join(f"{k} {p50(v):.1f}" for k, v in cols.items() if v), flush=True)


def main() -> None:
    n = int(os.environ.get("N", "1000"))
    s = memcuda.connect()
    mode = s.hello.get("mode")
    print(f"mode {mode}", flush=True)
    for _ in range(50):
        s.create("w.c", (256, 1024), "bf16").release()
        s.delete("w.c")

    def creates(tag: str, k: int) -> list[Callable[[], Any]]:
        return [functools.partial(s.create, f"{tag}.{j}", (256, 1024), "bf16") for j in range(k)]

    def release_delete(t: Any) -> None:
        t.release()
        s.delete(t.name)

    phased("create back-to-back", s, creates("a", n), after=release_delete)
    phased("create, 1 ms pause before", s, creates("b", n // 2), pause=0.001, after=release_delete)
    phased("create back-to-back again", s, creates("c", n), after=release_delete)
    held: list[Any] = []
    phased("create, kept (no release, delete)", s, creates("d", n // 2), after=held.append)
    for t in held:
        t.release()
        s.delete(t.name)

    # Cold gets: 32 MiB tensors, a segment each, on fresh connections.
    k = 48
    for i in range(3 * k):
        s.create(f"cold{i}", (8 << 20,), "f32").release()
    s.list()
    time.sleep(0.2)
    for part, pause in ((0, 0.0), (1, 0.001)):
        c = memcuda.connect()
        keep: list[Any] = []
        phased(f"cold get, pause {pause * 1e3:g} ms", c,
               [functools.partial(c.get, f"cold{i}") for i in range(part * k, (part + 1) * k)], pause=pause, after=keep.append)
        for t in keep:
            t.release()
        c.close()
    names = [f"cold{i}" for i in range(2 * k, 3 * k)]
    c = watching_client(names)
    keep = []
    phased("first get, pushed ahead", c, [functools.partial(c.get, nm) for nm in names], after=keep.append)
    for t in keep:
        t.release()
    c.flush()
    keep = []
    phased("first get again (released between, mapped)", c, [functools.partial(c.get, nm) for nm in names], after=keep.append)
    phased("warm get (held)", c, [functools.partial(c.get, nm) for nm in names], after=lambda t: t.release())
    for t in keep:
        t.release()
    c.close()
    for i in range(3 * k):
        s.delete(f"cold{i}")
    compact_against_json(s, n)
    s.close()


def compact_against_json(s: Any, n: int) -> None:
    """The same calls on two connections of this process, alternating call
    by call: one reading JSON answers, one compact records (p50 us each)."""
    memcuda.Client._compact_records = False
    cj = memcuda.connect()
    memcuda.Client._compact_records = True
    cc = memcuda.connect()
    out: dict[str, tuple[list[float], list[float]]] = {}

    def timed(key: str, which: int, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        r = fn()
        out.setdefault(key, ([], []))[which].append(time.perf_counter() - t0)
        return r

    for j in range(n):
        for which, c in enumerate((cj, cc)):
            name = f"ab.c.{which}.{j}"
            t = timed("create", which, functools.partial(c.create, name, (256, 1024), "bf16"))
            t.release()
            c.delete(name)
    k = 48
    for i in range(2 * k):
        s.create(f"ab.cold{i}", (8 << 20,), "f32").release()
    s.list()
    time.sleep(0.2)
    held: list[Any] = []
    for i in range(k):
        for which, c in enumerate((cj, cc)):
            held.append(timed("cold get", which, functools.partial(c.get, f"ab.cold{2 * i + which}")))
    for t in held:
        t.release()
    cj.flush()
    cc.flush()
    for _ in range(3):
        for i in range(k):
            for which, c in enumerate((cj, cc)):
                timed("first get, segment mapped", which, functools.partial(c.get, f"ab.cold{2 * i + which}")).release()
                c.flush()
    for key, (tj, tc) in out.items():
        print(f"interleaved {key}: JSON {p50(tj):.1f}, compact {p50(tc):.1f} ({p50(tc) / p50(tj):.2f}x)", flush=True)
    cj.close()
    cc.close()
    for i in range(2 * k):
        s.delete(f"ab.cold{i}")


if __name__ == "__main__":
    main()
