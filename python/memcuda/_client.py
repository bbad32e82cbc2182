"""The socket client: connect() and Client."""
from __future__ import annotations

import logging
import operator
import os
import threading
import time
import weakref
from typing import Any, Iterator, Optional, Sequence

from . import _dtypes, _settings, _wire
from ._errors import Disconnected, FailedPrecondition, InvalidArgument, MemcudaError, ProtocolError, Unavailable, from_code
from ._record import TensorInfo
from ._pieces import map_pieces
from ._segments import IdleMappings, Segment, map_segment, unmap
from ._tensor import SharedTensor
from ._transport import Connection, close_fd
from ._version import __version__
from ._watch import SegmentWatch

__all__ = ["DEFAULT_SOCKET", "Client", "connect", "shared_client", "socket_path"]

DEFAULT_SOCKET = "/run/memcuda/agent.sock"
_WINDOW = 32  # get_many's and create_many's requests in flight: their answers must fit the socket buffers
_MAX_UNREAD = 64  # pipelined releases in flight: their replies must fit the socket buffers
_LIST_PAGE = 1000  # records per list answer (the agent's most)
# Ops a client sends again, once, after it reconnected: doing them twice is
# the same as once (a get's or create's extra reference is the connection's
# one in Redis; the reattach counts what this client holds).
_RETRY_SAFE = frozenset({"hello", "create", "get", "stat", "list", "holders", "stats", "gc", "trim", "publish"})
# Ops the reattach covers: the references they drop are not reattached.
_COVERED = frozenset({"release", "forget"})
_log = logging.getLogger("memcuda")
_PIECES = "pieces:"  # id prefix of a tensor in pieces mapped here (Segment.parts)

_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for c in list(_clients):
        c._forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def socket_path(path: Optional[str] = None) -> str:
    return path or os.environ.get("MEMCUDA_SOCKET") or DEFAULT_SOCKET


_shared: dict[tuple[int, str], "Client"] = {}
_shared_lock = threading.Lock()


def shared_client(path: Optional[str] = None) -> "Client":
    """This process's shared client of the agent at path ($MEMCUDA_SOCKET,
    else /run/memcuda/agent.sock): made on first use, made again in a child
    after fork(). Unpickled tensors are opened through it."""
    key = (os.getpid(), socket_path(path))
    with _shared_lock:
        c = _shared.get(key)
        if c is None or c._closed:
            c = _shared[key] = Client(key[1])
        return c


def connect(path: Optional[str] = None, timeout: float = 10.0, spin_us: Optional[float] = None,
            reconnect: Optional[float] = None, watch_segments: Optional[bool] = None) -> "Client":
    """Connects to the node agent ($MEMCUDA_SOCKET, else /run/memcuda/agent.sock).
    spin_us: how long to poll for a reply before blocking (default 0, or
    $MEMCUDA_SPIN_US): on machines where waking a blocked thread is slow it
    trades client CPU for latency. reconnect: how many seconds the client
    tries to reach the agent again when the connection breaks (default 30,
    or $MEMCUDA_RECONNECT_S; 0: never). watch_segments: map segments ahead
    of gets (Client.watch_segments; default off, or $MEMCUDA_WATCH_SEGMENTS=1)."""
    c = Client(socket_path(path), timeout=timeout, spin_us=spin_us, reconnect=reconnect)
    if os.environ.get("MEMCUDA_WATCH_SEGMENTS", "") == "1" if watch_segments is None else watch_segments:
        try:
            c.watch_segments()
        except BaseException:
            c.close()
            raise
    return c


class Client:
    """A connection to the agent. Every tensor opened through it is one
    reference, held until released, until the client closes, or until the
    process dies (the agent drops a closed connection's references).

    When the agent goes away (a restart, a crash, a hand-over to a new
    instance) the client reconnects by itself within `reconnect` seconds,
    takes its references over to the new connection and keeps its mappings:
    tensors held stay usable. A call in flight is sent again when doing it
    twice is harmless; otherwise it raises Disconnected."""

    _compact_records = True  # ask for compact records at hello (off: JSON answers, for A/B benchmarks)
    _pieces = True  # say at hello that this client maps tensors in pieces (off: an older client, for tests)

    def __init__(self, path: str, timeout: float = 10.0, spin_us: Optional[float] = None,
                 reconnect: Optional[float] = None) -> None:
        self.path = path
        timeout = _settings.seconds(timeout, "", 10.0, "timeout", positive=True)
        spin = _settings.seconds(spin_us, "MEMCUDA_SPIN_US", 0.0, "spin_us")
        self._timeout, self._spin = timeout, spin
        self._reconnect_s = _settings.seconds(reconnect, "MEMCUDA_RECONNECT_S", 30.0, "reconnect")
        self._idle = IdleMappings(_settings.count(None, "MEMCUDA_IDLE_MAPPINGS", 8, "max_idle_mappings"),
                                  _settings.count(None, "MEMCUDA_IDLE_MAPPING_BYTES", 1 << 30, "max_idle_bytes"))
        self._lock = threading.RLock()
        self._conn = Connection(path, timeout, spin)
        self._held: dict[str, int] = {}  # open references per tensor name: what a reattach takes over
        self._lost: set[str] = set()  # names a reattach could not take over: their releases are not sent
        self.reconnects = 0  # times this client reconnected to its agent
        self._next_id = 0
        self._segments: dict[str, Segment] = {}
        self._pending_release: list[str] = []  # from finalizers: sent before the next call
        self._unmapped: list[Segment] = []  # descriptors to close, and forget, at a safe point
        self._in_window = False  # _many is reading answers: no forget may go out now
        self._unread = 0  # releases sent whose replies are still on the socket
        self.release_errors: list[MemcudaError] = []  # failures of pipelined releases, newest last (at most 64)
        self._closed = False
        self._forked = False
        self._watch: Optional[SegmentWatch] = None
        self.prefetched = 0  # segments mapped ahead of a get (watch_segments)
        # A child of fork() shares this socket with the parent: refuse to use it there.
        _clients.add(self)
        with self._lock:
            self._greet(self._hello())

    def _hello(self) -> dict[str, Any]:
        """Says hello on a new connection and, in the same write, asks for
        compact records and says it maps tensors in pieces (an agent without
        them answers unimplemented: its answers stay JSON, its tensors one
        piece each). Under the lock."""
        self._next_id += 1
        ids = [self._next_id]
        frames = _wire.encode_request(self._next_id, "hello", client=f"memcuda-py {__version__}")
        for op, on in ((_wire.COMPACT_REQUEST, self._compact_records), (_wire.PIECES_REQUEST, self._pieces)):
            if on:
                self._next_id += 1
                ids.append(self._next_id)
                frames += _wire.encode_request(self._next_id, op)
        self._conn.send(frames)
        answers: list[Any] = []
        for rid in ids:
            try:
                answers.append(self._read_answer(rid))
            except (Disconnected, ProtocolError):
                raise
            except MemcudaError as e:
                answers.append(e)  # read on: the connection stays in step
        if isinstance(answers[0], MemcudaError):
            raise answers[0]
        return dict(answers[0].body["hello"])

    def _greet(self, hello: dict[str, Any]) -> None:
        self.hello: dict[str, Any] = hello
        # Agents that take forget send a segment's descriptor again after
        # it: only then may an unmapped segment's descriptor be closed.
        self._can_forget = "forget" in (hello.get("features") or ())

    @property
    def max_idle_mappings(self) -> int:
        """How many unused segments stay mapped ($MEMCUDA_IDLE_MAPPINGS, default 8)."""
        return self._idle.max_count

    @max_idle_mappings.setter
    def max_idle_mappings(self, n: int) -> None:
        self._idle.max_count = _settings.count(n, "", 0, "max_idle_mappings")

    @property
    def max_idle_bytes(self) -> int:
        """How many bytes of unused segments stay mapped ($MEMCUDA_IDLE_MAPPING_BYTES, default 1 GiB)."""
        return self._idle.max_bytes

    @max_idle_bytes.setter
    def max_idle_bytes(self, n: int) -> None:
        self._idle.max_bytes = _settings.count(n, "", 0, "max_idle_bytes")

    # -- requests and answers ----------------------------------------------

    def _begin(self) -> None:
        # Under the lock, before a request: the connection must be usable,
        # and releases queued by finalizers go out first.
        if self._closed:
            raise FailedPrecondition("client is closed")
        if self._forked:
            raise FailedPrecondition("a Client cannot be used across fork(); connect() again in the child")
        self._flush_pending()

    def _call(self, op: str, **kw: Any) -> dict[str, Any]:
        with self._lock:
            self._begin()
            return self._roundtrip(op, **kw).body

    def _send(self, op: str, **kw: Any) -> int:
        self._next_id += 1
        self._conn.send(_wire.encode_request(self._next_id, op, **kw))
        return self._next_id

    def _roundtrip(self, op: str, name: str = "", dtype: str = "", shape: Optional[list[int]] = None,
                   device: str = "", **kw: Any) -> _wire.Answer:
        # The request is sent here, not through _send, and creates and gets
        # pass their fields positionally: each layer of repacked keyword
        # arguments is work on the path of every create and get.
        cache = op == "get"
        try:
            self._next_id += 1
            frame = _wire.encode_request(self._next_id, op, name, dtype, shape, device, **kw)
            if self._unread:
                self._conn.send(frame)
                self._read_unread()
                return self._read_answer(self._next_id, cache)
            return self._answer(*self._conn.call(frame), self._next_id, cache)
        except Disconnected as e:
            self._reconnect(e, op)
            rid = self._send(op, name=name, dtype=dtype, shape=shape, device=device, **kw)
            return self._read_answer(rid, cache)

    # -- riding through a restart of the agent -------------------------------

    def _reconnect(self, cause: Disconnected, op: str) -> None:
        """Connects again after the connection broke (under the lock), takes
        the references over and says whether op may be sent again: it
        raises for an op that must not be."""
        if self._reconnect_s <= 0 or self._closed or self._forked:
            raise cause
        old_holder = self.hello.get("holder") or ""
        old_agent = self.hello.get("agent") or ""
        deadline = time.monotonic() + self._reconnect_s
        delay = 0.002
        self._conn.close()
        self._unread = 0
        self._unmapped.clear()  # the new connection never had their descriptors
        self._pending_release.clear()  # the reattach leaves them out
        while True:
            try:
                self._conn = Connection(self.path, self._timeout, self._spin)
                hello = self._hello()
                break
            except Disconnected as e:
                if time.monotonic() + delay > deadline:
                    raise Disconnected(f"the agent at {self.path} went away ({cause}) and did not come back within "
                                       f"{self._reconnect_s:g}s: {e}") from e
                time.sleep(delay)
                delay = min(2 * delay, 0.1)
        self._greet(hello)
        self.reconnects += 1
        _log.info("memcuda: reconnected to the agent at %s (instance %s, was %s)", self.path, hello.get("agent"), old_agent)
        features = hello.get("features") or ()
        if "offer" in features and hello.get("agent") != old_agent:
            # vmm memory of a crashed agent survives only in processes that
            # hold it: hand the new one our descriptors of what we map.
            # (a tensor in pieces maps its segments inside a mapping of its own).
            inside = {pid for sg in self._segments.values()
                      if sg.parts and sg.mode == "vmm" and sg.mapping is not None for pid in sg.parts}
            segs = [sg for sg in self._segments.values()
                    if sg.fd >= 0 and ((sg.mode == "vmm" and sg.mapping is not None) or sg.id in inside)]
            for i in range(0, len(segs), _wire.MAX_FDS):
                chunk = segs[i:i + _wire.MAX_FDS]
                self._next_id += 1
                self._conn.send(_wire.encode_offer(self._next_id, [sg.id for sg in chunk]), [sg.fd for sg in chunk])
                try:
                    self._read_answer(self._next_id)
                except MemcudaError as e:
                    if isinstance(e, (Disconnected, ProtocolError)):
                        raise
                    _log.warning("memcuda: the new agent did not adopt an offered segment: %s", e)
        refs = [(n, c) for n, c in self._held.items() if c > 0 and n not in self._lost]
        if refs and old_holder and "reattach" in features:
            self._next_id += 1
            self._conn.send(_wire.encode_reattach(self._next_id, old_holder, refs))
            lost = self._read_answer(self._next_id).body.get("lost") or []
            for n in lost:
                self._lost.add(n)
            if lost:
                _log.warning("memcuda: %d tensor(s) did not survive the agent's restart; their mappings here stay "
                             "until released: %s", len(lost), ", ".join(sorted(lost)[:10]))
        elif refs:
            self._lost.update(n for n, _ in refs)
            _log.warning("memcuda: the agent cannot take references back (no reattach); %d tensor(s) are no longer held", len(refs))
        if op in _COVERED:
            return
        if op not in _RETRY_SAFE:
            raise Disconnected(f"the agent went away while {op} was in flight; it may or may not have been applied "
                               f"(reconnected to instance {hello.get('agent')}): {cause}") from cause

    def _read_answer(self, rid: int, cache: bool = False) -> _wire.Answer:
        nfd, body = self._conn.read_frame()
        return self._answer(nfd, body, rid, cache)

    def _answer(self, nfd: int, body: bytes, rid: int, cache: bool) -> _wire.Answer:
        # A response frame read off the connection: its descriptors kept, its error raised.
        # An answer that carries descriptors is a segment's first to this
        # connection and never repeats: caching it would only crowd out (and
        # at the cache's bound clear) the answers that do.
        try:
            ans = _wire.decode_answer(body, cache and not nfd)
        except _wire.FrameError as e:
            raise ProtocolError(f"malformed answer from the agent: {e}") from e
        resp = ans.body
        if nfd or "fds" in resp:
            fd_ids = resp.get("fds") or []
            fds = self._conn.fds
            if len(fd_ids) != nfd or len(fds) < nfd:
                raise ProtocolError(f"response announces {nfd} descriptors, {len(fds)} arrived")
            for sid, fd in zip(fd_ids, fds[:nfd]):
                seg = self._segments.get(sid)
                if seg is None:
                    self._segments[sid] = Segment(sid, fd)
                elif seg.fd < 0 and seg.mapping is None:
                    seg.fd = fd  # sent again after a forget
                else:
                    os.close(fd)
            del fds[:nfd]
        if rid and ans.id not in (rid, 0):
            raise ProtocolError(f"response id {ans.id} for request {rid}")
        err = resp.get("error")
        if err:
            raise from_code(err.get("code", "internal"), err.get("message", ""))
        return ans

    def _release_async(self, name: str, event: str = "") -> None:
        # A release's answer carries nothing the caller needs: send it now,
        # read its reply in front of the next call's (the agent answers a
        # connection in order). A get+release pair costs one round trip.
        self._pipelined("release", name=name, event=event)

    def _pipelined(self, op: str, **kw: Any) -> None:
        try:
            if self._unread >= _MAX_UNREAD:
                self._read_unread()
            self._send(op, **kw)
            self._unread += 1
        except Disconnected as e:
            self._reconnect(e, op)  # the reattach leaves this reference out: nothing to resend

    def _read_unread(self) -> None:
        while self._unread:
            self._unread -= 1
            try:
                self._read_answer(0)
            except (ProtocolError, Unavailable):
                raise
            except MemcudaError as e:
                # The reference is gone from this process either way, and the
                # connection's lease covers what the agent could not drop.
                _log.warning("memcuda: release failed: %s", e)
                self.release_errors.append(e)
                del self.release_errors[:-64]

    def _flush_pending(self) -> None:
        while self._pending_release:
            self._release_async(self._pending_release.pop())
        self._forget_unmapped()

    def _forget_unmapped(self) -> None:
        # An open descriptor keeps its segment's memory allocated, even after
        # the agent gives the segment back: close the descriptors of
        # segments unmapped since, and tell the agent (it sends one again
        # when a later answer needs it). Pipelined like a release.
        while self._unmapped:
            seg = self._unmapped.pop()
            if seg.mapping is not None or seg.users or seg.fd < 0:
                continue  # mapped again meanwhile
            close_fd(seg.fd)
            seg.fd = -1
            self._pipelined("forget", segment=seg.id)

    # -- operations --------------------------------------------------------

    def create(self, name: str, shape: Sequence[int], dtype: Any = "f32", device: Any = None) -> SharedTensor:
        """Creates a tensor (zero-filled), or opens the existing one when dtype
        and shape match. Raises AlreadyExists on a mismatch."""
        dt, dims, dev = _dtypes.canonical(dtype), _dims(shape), _device_arg(device)
        with self._lock:  # answer and mapping under one hold: no other thread may evict the segment between
            self._begin()
            return self._open(self._roundtrip("create", name, dt, dims, dev))

    def get(self, name: str, wait: bool = True) -> SharedTensor:
        """Opens an existing tensor by name. Raises NotFound. When a writer
        published an event (SharedTensor.publish), the current stream waits
        for it (wait=False leaves ordering to the caller)."""
        with self._lock:  # answer and mapping under one hold (see create)
            self._begin()
            t = self._open(self._roundtrip("get", name))
        if wait and t.info.event and t.is_cuda:
            t.wait()
        return t

    def get_many(self, names: Sequence[str], wait: bool = True) -> list[SharedTensor]:
        """Opens several tensors in one go: the requests are sent together
        (up to 32 in flight) and each answer is mapped while the agent
        answers the next, so n tensors cost about one round trip plus their
        mappings. All or nothing: when one name fails, the tensors already
        opened are released and its error is raised."""
        if isinstance(names, (str, bytes)):
            raise InvalidArgument("get_many takes a sequence of names, not one name")
        names = list(names)
        for n in names:
            if not isinstance(n, str):
                raise InvalidArgument(f"tensor names are strings, not {type(n).__name__}")
        out = self._many("get", [{"name": n} for n in names])
        if wait:
            for t in out:
                if t.info.event and t.is_cuda:
                    t.wait()
        return out

    def create_many(self, specs: "Sequence[tuple[str, Sequence[int], Any]]", device: Any = None) -> list[SharedTensor]:
        """Creates (or opens, as create does) several tensors on one device
        in one go, each spec a (name, shape, dtype): sent together like
        get_many, for loading many weights. Malformed specs and shapes
        that are not integers are refused before anything is sent; names,
        dtypes and sizes are the agent's to check. When one fails, the
        references this call took are released and its error is raised;
        tensors it created stay, as they would after a loop of create calls."""
        if isinstance(specs, (str, bytes)):
            raise InvalidArgument("create_many takes a sequence of (name, shape, dtype)")
        dev = _device_arg(device)
        reqs: list[dict[str, Any]] = []
        for spec in specs:
            if not isinstance(spec, (tuple, list)) or len(spec) != 3 or not isinstance(spec[0], str):
                raise InvalidArgument(f"each spec is (name, shape, dtype), not {spec!r}")
            name, shape, dtype = spec
            reqs.append({"name": name, "dtype": _dtypes.canonical(dtype), "shape": _dims(shape), "device": dev})
        return self._many("create", reqs)

    def _many(self, op: str, reqs: "list[dict[str, Any]]") -> list[SharedTensor]:
        # Sends a window of requests, then reads and opens their answers in
        # order; on a failure, what was opened is released and it is raised.
        out: list[SharedTensor] = []
        failed: Optional[BaseException] = None
        cache = op == "get"  # a create's answer never repeats
        with self._lock:
            self._begin()
            for start in range(0, len(reqs), _WINDOW):
                window = reqs[start:start + _WINDOW]
                read = [0]  # answers of the window read so far
                for attempt in (0, 1):
                    self._in_window = True
                    try:
                        ids = [self._send(op, **kw) for kw in window]
                        self._read_unread()
                        self._open_answers(ids, out, cache, read)
                        break
                    except Disconnected as e:
                        self._in_window = False
                        if attempt:
                            raise
                        self._reconnect(e, op)  # gets and creates are safe to send again
                        window, read = window[read[0]:], [0]
                    except BaseException as e:
                        failed = e
                        if isinstance(e, (ProtocolError, Unavailable)):
                            raise
                        break
                    finally:
                        self._in_window = False
                if failed is not None:
                    break
        if failed is not None:
            for t in out:
                t.release()
            raise failed
        return out

    def _open_answers(self, ids: list[int], out: list[SharedTensor], cache: bool, read: list[int]) -> None:
        # Reads the answers of a window of requests in order and opens them,
        # counting them in read[0]. Every answer is read, even after a
        # failure: the connection must stay in step with the agent. Raises
        # the first failure once all are read.
        failed: Optional[BaseException] = None
        for rid in ids:
            try:
                ans = self._read_answer(rid, cache=cache)
            except (ProtocolError, Unavailable):
                raise
            except MemcudaError as e:
                read[0] += 1
                failed = failed or e
                continue
            read[0] += 1
            try:
                out.append(self._open(ans))
            except BaseException as e:  # _open queued the release of this one
                failed = failed or e
        if failed is not None:
            raise failed

    def delete(self, name: str) -> None:
        """Drops the registry's reference: no new gets; the memory goes when the last reference does."""
        self._call("delete", name=name)

    def stat(self, name: str) -> TensorInfo:
        with self._lock:
            self._begin()
            return _record(self._roundtrip("stat", name=name))

    def list(self, prefix: str = "") -> list[TensorInfo]:
        """The records of the agent's tensors whose names start with prefix,
        in name order (read in pages, so any number of tensors lists)."""
        return list(self.iter_list(prefix))

    def iter_list(self, prefix: str = "", page: int = _LIST_PAGE) -> Iterator[TensorInfo]:
        """list(), a page of `page` records at a time."""
        if not isinstance(prefix, str):
            raise InvalidArgument(f"prefix must be a string, not {type(prefix).__name__}")
        if "list-pages" not in (self.hello.get("features") or ()):
            # An older agent answers everything at once.
            for t in self._call("list").get("tensors") or []:
                if t.get("name", "").startswith(prefix):
                    yield TensorInfo.from_wire(t)
            return
        cursor = ""
        while True:
            resp = self._call("list", prefix=prefix, limit=page, cursor=cursor)
            for t in resp.get("tensors") or []:
                yield TensorInfo.from_wire(t)
            cursor = resp.get("next") or ""
            if not cursor:
                return

    def holders(self, name: str) -> dict[str, int]:
        """A tensor's reference holders and their counts: "registry" (until
        delete), "conn:<agent>:<n>" (socket connections), "pid:<pid>:<start>"
        (queue references), "pod:<namespace>/<name>/<uid>"."""
        return {k: int(v) for k, v in (self._call("holders", name=name).get("holders") or {}).items()}

    def stats(self) -> dict[str, Any]:
        return dict(self._call("stats")["stats"])

    def trim(self) -> int:
        """Gives the agent's unused segments back to the driver; returns the
        bytes released. Memory a process still maps stays allocated until it
        unmaps it."""
        return int(self._call("trim").get("trimmed") or 0)

    def gc(self) -> dict[str, Any]:
        return dict(self._call("gc")["gc"])

    def flush(self) -> None:
        """Waits until the agent has applied every release sent so far.
        release() returns once its request is sent (the agent applies a
        connection's requests in order, so this connection's next call sees
        it); flush() is for when another process must see it. Failures are
        logged and kept in release_errors."""
        with self._lock:
            if not self._closed and not self._forked:
                self._flush_pending()
                try:
                    self._read_unread()
                except Disconnected as e:
                    self._reconnect(e, "release")  # what was unread is covered by the reattach

    def close(self) -> None:
        """Closes the connection: the agent drops every reference it held."""
        watch, self._watch = self._watch, None
        if watch is not None and not self._forked:
            watch.close()  # before the lock: its thread may be waiting for it
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._idle.clear()
            for s in self._segments.values():
                unmap(s)
                if s.fd >= 0:
                    close_fd(s.fd)
            self._segments.clear()
            self._conn.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- segments ahead of gets ---------------------------------------------

    def watch_segments(self) -> None:
        """Maps, in a background thread, every segment the agent has or makes
        for this client's namespace, before any get needs it: the first get
        of a tensor in one then costs about what a warm get costs instead of
        a descriptor import. It opens a second connection to the agent (the
        watch). Mapped segments count as idle mappings: raise
        max_idle_mappings and max_idle_bytes to keep more of them, since a
        mapping keeps its segment's memory allocated until it is unmapped
        (a segment the agent releases is unmapped here at once while no
        tensor uses it). Raises Unimplemented when the agent cannot watch."""
        with self._lock:
            self._begin()
            if self._watch is not None:
                return
            self._watch = SegmentWatch(self)

    def _take_news(self, pushed: Sequence[dict[str, Any]], fds: dict[str, int], gone: Sequence[str]) -> None:
        """Maps what the watch pushed and unmaps what the agent released
        (from the watch's thread). Under the lock, so that no get maps the
        same segment meanwhile."""
        for p in pushed:
            sid = str(p.get("id", ""))
            fd = fds.pop(sid, -1)
            with self._lock:
                seg = self._segments.get(sid)
                if self._closed or self._forked or (seg is not None and seg.mapping is not None):
                    if fd >= 0:
                        close_fd(fd)
                    continue
                if seg is None:
                    seg = self._segments[sid] = Segment(sid, fd)
                elif seg.fd < 0:
                    seg.fd = fd
                elif fd >= 0:
                    close_fd(fd)
                info = TensorInfo.from_wire({
                    "segment_id": sid, "segment_size": int(p.get("size", 0)), "device": int(p.get("device", 0)),
                    "device_uuid": str(p.get("device_uuid", "")), "ipc_mode": str(p.get("ipc_mode", "")),
                    "ipc_handle": str(p.get("ipc_handle", "")),
                })
                try:
                    map_segment(seg, info)
                except MemcudaError as e:
                    _log.debug("memcuda: could not map pushed segment %s ahead: %s", sid, e)
                    continue  # its descriptor stays: a get maps it
                self.prefetched += 1
                self._keep_idle(seg)
        for fd in fds.values():
            close_fd(fd)
        for sid in gone:
            with self._lock:
                for sp in [x for x in self._segments.values() if sid in x.parts and not x.users]:
                    # An idle mapping of a tensor in pieces keeps the released segment's memory.
                    self._idle.take(sp.id)
                    unmap(sp)
                    del self._segments[sp.id]
                seg = self._segments.get(sid)
                if seg is None or seg.users or self._closed:
                    continue
                self._idle.take(sid)
                unmap(seg)
                del self._segments[sid]
                if seg.fd >= 0:
                    if self._can_forget:
                        self._unmapped.append(seg)  # closed and forgotten at the next call
                    else:
                        close_fd(seg.fd)
                        seg.fd = -1

    # -- mappings ----------------------------------------------------------

    def _open(self, ans: _wire.Answer) -> SharedTensor:
        info = _record(ans)
        with self._lock:
            if info.pieces:
                seg = self._segments.get(_PIECES + info.uid)
            else:
                seg = self._segments.get(info.segment_id)
                if seg is None and info.ipc_mode == "legacy":
                    # Legacy segments travel as the record's IPC handle, not as a descriptor.
                    seg = self._segments[info.segment_id] = Segment(info.segment_id, -1)
            try:
                if info.pieces and (seg is None or seg.mapping is None):
                    seg = self._map_pieces(info)
                elif seg is None:
                    raise ProtocolError(f"no descriptor for segment {info.segment_id}")
                elif seg.mapping is None:
                    map_segment(seg, info)
                self._idle.take(seg.id)
                seg.users += 1
            except BaseException:
                self._pending_release.append(info.name)
                raise
            self._held[info.name] = self._held.get(info.name, 0) + 1
        return SharedTensor(self, info, seg)

    def _map_pieces(self, info: TensorInfo) -> Segment:
        """Maps a tensor in pieces from the descriptors of its segments, as a
        segment of its own (see Segment.parts). Under the lock."""
        parts = []
        for p in info.pieces:
            part = self._segments.get(p.segment_id)
            if part is None or part.fd < 0:
                raise ProtocolError(f"no descriptor for segment {p.segment_id} of tensor {info.name!r}, which lies in pieces")
            parts.append((part.fd, p))
        m = map_pieces(info.ipc_mode, parts, info.device_uuid)
        seg = self._segments[_PIECES + info.uid] = Segment(
            _PIECES + info.uid, -1, mapping=m, ptr=m.ptr - info.offset, size=m.size, mode=info.ipc_mode,
            ordinal=m.ordinal, parts=tuple(p.segment_id for p in info.pieces))
        return seg

    def _release(self, t: SharedTensor, event: str = "") -> None:
        with self._lock:
            self._drop_user(t._seg)
            if self._unhold(t.info.name) and not self._closed and not self._forked:
                self._release_async(t.info.name, event)
                if not self._in_window:
                    self._forget_unmapped()

    def _unhold(self, name: str) -> bool:
        # One reference fewer; False when the agent no longer has it (lost in a restart).
        n = self._held.get(name, 0) - 1
        if n > 0:
            self._held[name] = n
        else:
            self._held.pop(name, None)
        if name in self._lost:
            if n <= 0:
                self._lost.discard(name)
            return False
        return True

    def _release_from_finalizer(self, name: str, seg: Segment) -> None:
        # Runs from the garbage collector, possibly in the middle of another
        # call on the same connection: the release is queued for the next call.
        if self._closed:
            return
        self._drop_user(seg)
        if self._unhold(name):
            self._pending_release.append(name)

    def _drop_user(self, seg: Segment) -> None:
        seg.users -= 1
        if seg.users == 0:
            self._keep_idle(seg)

    def _keep_idle(self, seg: Segment) -> None:
        # An unused mapped segment stays mapped within the idle bounds.
        for old in self._idle.add(seg):
            if old.parts:
                self._segments.pop(old.id, None)  # a tensor in pieces: mapped again, whole, if needed
            elif self._can_forget and old.fd >= 0:
                # Closed at the next safe point: answers already on
                # their way may need it to map the segment again.
                self._unmapped.append(old)


def _record(ans: _wire.Answer) -> TensorInfo:
    if ans.record is None:
        raise ProtocolError("the agent's answer has no tensor")
    return ans.record


def _dims(shape: Any) -> list[int]:
    """A shape as a list of ints: a sequence of integers (torch.Size, NumPy
    ints included); anything else, floats and bools among them, is refused
    rather than rounded. Negative or huge dimensions are the agent's to refuse."""
    if type(shape) in (tuple, list) and all(type(d) is int for d in shape):
        return list(shape)  # the usual shape, checked at once
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise InvalidArgument(f"shape must be a sequence of integers, not {shape!r}")
    dims = []
    for d in shape:
        if isinstance(d, bool):
            raise InvalidArgument(f"shape {shape!r} holds a bool")
        try:
            dims.append(operator.index(d))
        except TypeError:
            raise InvalidArgument(f"shape {shape!r} holds {d!r}, not an integer") from None
    return dims


def _device_arg(device: Any) -> str:
    """None (device 0), an ordinal, a GPU UUID, "cuda:N" or a torch.device."""
    if device is None:
        return ""
    if isinstance(device, bool):
        raise InvalidArgument(f"device must be an ordinal, a GPU UUID or a torch.device, not {device!r}")
    if isinstance(device, int):
        return str(device)
    if isinstance(device, str):
        return device[len("cuda:"):] if device.startswith("cuda:") else device
    if type(device).__name__ == "device" and hasattr(device, "type"):  # torch.device
        return str(device.index or 0)
    raise InvalidArgument(f"device must be an ordinal, a GPU UUID or a torch.device, not {device!r}")
