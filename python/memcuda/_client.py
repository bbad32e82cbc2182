"""The socket client: connect(), Store and SharedTensor."""
from __future__ import annotations

import array
import ctypes
import logging
import mmap
import operator
import struct
import os
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from . import _dtypes, _wire
from ._errors import FailedPrecondition, InvalidArgument, MemcudaError, ProtocolError, Unavailable, from_code

DEFAULT_SOCKET = "/run/memcuda/agent.sock"
__version__ = "0.1.0"


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's registry record."""

    name: str
    uid: str
    dtype: str
    shape: tuple[int, ...]
    device: int
    device_uuid: str
    bytes: int
    ipc_mode: str
    ipc_handle: str
    offset: int
    segment_id: str
    segment_size: int
    owner_pid: int
    refcount: int
    state: str
    agent: str
    node: str
    tenant: str
    ctime: int
    mtime: int
    event: str = ""  # base64 IPC event of the last publish

    @classmethod
    def from_wire(cls, d: dict[str, Any], cache: bool = False) -> "TensorInfo":
        # Warm gets return the same record again and again, and the decoder
        # hands back the same dict for it (_wire.decode_body): cache=True
        # keeps the record by that dict. Others (a create's, a stat's) are
        # not kept: memory that keeps growing costs fresh pages, which are
        # slow to fault in under some sandboxes.
        same = _INFO_BY_DICT.get(id(d))
        if same is not None and same[0] is d:
            return same[1]
        info = cls._parse(d)
        if cache:
            if len(_INFO_BY_DICT) > 4096:
                _INFO_BY_DICT.clear()
            _INFO_BY_DICT[id(d)] = (d, info)  # holding d keeps its id from being reused
        return info

    @classmethod
    def _parse(cls, d: dict[str, Any]) -> "TensorInfo":
        # A frozen dataclass's __init__ sets each field through
        # object.__setattr__: filling __dict__ at once is several times faster.
        info = object.__new__(cls)
        if d.keys() <= _INFO_FIELDS:
            # The agent's record as it comes: JSON gave every field its type.
            fields = dict(_INFO_DEFAULTS)
            fields.update(d)
            for k in _INT_FIELDS:
                if type(fields[k]) is not int:
                    break
            else:
                fields["shape"] = tuple(map(int, fields["shape"] or ()))
                info.__dict__.update(fields)
                return info
        g = d.get
        info.__dict__.update({
            "name": g("name", ""), "uid": g("uid", ""), "dtype": g("dtype", ""),
            "shape": tuple(map(int, g("shape") or ())), "device": int(g("device", 0)),
            "device_uuid": g("device_uuid", ""), "bytes": int(g("bytes", 0)), "ipc_mode": g("ipc_mode", ""),
            "ipc_handle": g("ipc_handle", ""), "offset": int(g("offset", 0)), "segment_id": g("segment_id", ""),
            "segment_size": int(g("segment_size", 0)), "owner_pid": int(g("owner_pid", 0)),
            "refcount": int(g("refcount", 0)), "state": g("state", ""), "agent": g("agent", ""),
            "node": g("node", ""), "tenant": g("tenant", ""), "ctime": int(g("ctime", 0)), "mtime": int(g("mtime", 0)),
            "event": g("event", ""),
        })
        return info


_INT_FIELDS = ("device", "bytes", "offset", "segment_size", "owner_pid", "refcount", "ctime", "mtime")
_INFO_DEFAULTS: dict[str, Any] = {
    f: (0 if f in _INT_FIELDS else () if f == "shape" else "") for f in TensorInfo.__dataclass_fields__
}
_INFO_FIELDS = frozenset(_INFO_DEFAULTS)
_INFO_BY_DICT: dict[int, tuple[dict[str, Any], TensorInfo]] = {}
# Received descriptors are close-on-exec from the start (no fcntl per fd).
_CMSG_CLOEXEC: int = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_WINDOW = 32  # get_many's and create_many's requests in flight: their answers must fit the socket buffers
_MAX_UNREAD = 64  # pipelined releases in flight: their replies must fit the socket buffers
_RESPONSE_HEAD = _wire.MAGIC + bytes([_wire.VERSION, _wire.KIND_RESPONSE])
_log = logging.getLogger("memcuda")


@dataclass
class _Segment:
    """A segment descriptor received from the agent and its mapping in this process."""

    id: str
    fd: int
    users: int = 0
    mapping: Any = None  # mmap.mmap (host) or _cuda.Mapping (vmm/legacy)
    ptr: int = 0  # base address of the mapping in this process
    size: int = 0  # bytes mapped


_stores: "weakref.WeakSet[Store]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for s in list(_stores):
        s._forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def socket_path(path: Optional[str] = None) -> str:
    return path or os.environ.get("MEMCUDA_SOCKET") or DEFAULT_SOCKET


def connect(path: Optional[str] = None, timeout: float = 10.0, spin_us: Optional[float] = None) -> "Store":
    """Connects to the node agent ($MEMCUDA_SOCKET, else /run/memcuda/agent.sock).
    spin_us: how long to poll for a reply before blocking (default 0, or
    $MEMCUDA_SPIN_US): on machines where waking a blocked thread is slow it
    trades client CPU for latency."""
    return Store(socket_path(path), timeout=timeout, spin_us=spin_us)


class Store:
    """A connection to the agent. Every tensor opened through it is one
    reference, held until released, until the Store closes, or until the
    process dies (the agent drops a closed connection's references)."""

    def __init__(self, path: str, timeout: float = 10.0, spin_us: Optional[float] = None) -> None:
        self.path = path
        self.spin_us = float(os.environ.get("MEMCUDA_SPIN_US", "0") if spin_us is None else spin_us)
        self._lock = threading.RLock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as e:
            self._sock.close()
            raise Unavailable(f"connect to the agent at {path}: {e}") from e
        # Blocking mode with kernel-side timeouts: a Python timeout socket
        # polls before every send and receive, one more system call each.
        self._sock.settimeout(None)
        tv = struct.pack("ll", int(timeout), int((timeout % 1) * 1e6))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        self._next_id = 0
        self._fds: list[int] = []
        self._rbuf = bytearray()
        self._idle: dict[str, _Segment] = {}  # mapped segments no tensor uses, oldest first
        self.max_idle_mappings = int(os.environ.get("MEMCUDA_IDLE_MAPPINGS", "8"))
        self.max_idle_bytes = int(os.environ.get("MEMCUDA_IDLE_MAPPING_BYTES", str(1 << 30)))
        self._segments: dict[str, _Segment] = {}
        self._pending_release: list[str] = []  # from finalizers: sent before the next call
        self._unmapped: list[_Segment] = []  # descriptors to close, and forget, at a safe point
        self._in_window = False  # get_many is reading answers: no forget may go out now
        self._unread = 0  # releases sent whose replies are still on the socket
        self.release_errors: list[MemcudaError] = []  # failures of pipelined releases, newest last (at most 64)
        self._closed = False
        self._forked = False
        # A child of fork() shares this socket with the parent: refuse to use it there.
        _stores.add(self)
        resp = self._call("hello", client=f"memcuda-py {__version__}")
        self.hello: dict[str, Any] = resp["hello"]
        # Agents that take forget send a segment's descriptor again after
        # it: only then may an unmapped segment's descriptor be closed.
        self._can_forget = "forget" in (self.hello.get("features") or ())

    # -- transport ---------------------------------------------------------

    def _fill(self, n: int) -> None:
        # Reads until the buffer holds n bytes (a whole response is usually
        # one read), and collects passed descriptors.
        buf = self._rbuf
        while len(buf) < n:
            try:
                data, anc = self._recvmsg(max(65536, n - len(buf)))
            except BlockingIOError as e:  # SO_RCVTIMEO ran out
                raise Unavailable(f"the agent did not answer in time: {e}") from e
            except OSError as e:
                raise Unavailable(f"read from agent: {e}") from e
            for level, typ, payload in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
                    if not _CMSG_CLOEXEC:
                        for fd in fds:
                            os.set_inheritable(fd, False)
                    self._fds.extend(fds)
            if not data:
                raise Unavailable("the agent closed the connection")
            buf += data

    def _read_frame(self) -> tuple[int, bytes]:
        """The next response frame: (descriptor count, body)."""
        buf = self._rbuf
        if len(buf) < _wire.HEADER_SIZE:
            self._fill(_wire.HEADER_SIZE)
        if buf[:6] == _RESPONSE_HEAD and buf[7] == 0:
            nfd, n = buf[6], int.from_bytes(buf[8:12], "big")
            if nfd > _wire.MAX_FDS or n > _wire.MAX_BODY:
                _wire.parse_header(bytes(buf[:_wire.HEADER_SIZE]))  # raises with the reason
        else:
            h = _wire.parse_header(bytes(buf[:_wire.HEADER_SIZE]))
            nfd, n = h.num_fds, h.body_len
        end = _wire.HEADER_SIZE + n
        if len(buf) < end:
            self._fill(end)
        body = bytes(buf[_wire.HEADER_SIZE:end])
        del buf[:end]
        return nfd, body

    def _recvmsg(self, size: int) -> tuple[bytes, list[Any]]:
        # The agent answers within microseconds; on virtual machines waking
        # a thread blocked in recvmsg costs tens of them. Poll without
        # blocking for spin_us first (docs/benchmarks.md has the numbers).
        cmsg = socket.CMSG_SPACE(4 * _wire.MAX_FDS)
        if self.spin_us > 0:
            deadline = time.perf_counter() + self.spin_us / 1e6
            while True:
                try:
                    data, anc, _f, _a = self._sock.recvmsg(size, cmsg, socket.MSG_DONTWAIT | _CMSG_CLOEXEC)
                    return data, anc
                except BlockingIOError:
                    if time.perf_counter() > deadline:
                        break
        data, anc, _f, _a = self._sock.recvmsg(size, cmsg, _CMSG_CLOEXEC)
        return data, anc

    def _begin(self) -> None:
        # Under the lock, before a request: the connection must be usable,
        # and releases queued by finalizers go out first.
        if self._closed:
            raise FailedPrecondition("store is closed")
        if self._forked:
            raise FailedPrecondition("a Store cannot be used across fork(); connect() again in the child")
        self._flush_pending()

    def _call(self, op: str, **kw: Any) -> dict[str, Any]:
        with self._lock:
            self._begin()
            return self._roundtrip(op, **kw)

    def _send(self, op: str, **kw: Any) -> int:
        self._next_id += 1
        try:
            self._sock.sendall(_wire.encode_request(self._next_id, op, **kw))
        except OSError as e:
            raise Unavailable(f"send to agent: {e}") from e
        return self._next_id

    def _roundtrip(self, op: str, **kw: Any) -> dict[str, Any]:
        rid = self._send(op, **kw)
        self._read_unread()
        return self._read_response(rid, cache=op == "get")

    def _read_response(self, rid: int, cache: bool = False) -> dict[str, Any]:
        nfd, body = self._read_frame()
        resp = _wire.decode_body(body, cache)
        if nfd or "fds" in resp:
            fd_ids = resp.get("fds") or []
            if len(fd_ids) != nfd or len(self._fds) < nfd:
                raise ProtocolError(f"response announces {nfd} descriptors, {len(self._fds)} arrived")
            for sid, fd in zip(fd_ids, self._fds[:nfd]):
                seg = self._segments.get(sid)
                if seg is None:
                    self._segments[sid] = _Segment(sid, fd)
                elif seg.fd < 0 and seg.mapping is None:
                    seg.fd = fd  # sent again after a forget
                else:
                    os.close(fd)
            del self._fds[:nfd]
        if rid and resp.get("id") not in (rid, 0):
            raise ProtocolError(f"response id {resp.get('id')} for request {rid}")
        err = resp.get("error")
        if err:
            raise from_code(err.get("code", "internal"), err.get("message", ""))
        return resp

    def _release_async(self, name: str, event: str = "") -> None:
        # A release's answer carries nothing the caller needs: send it now,
        # read its reply in front of the next call's (the agent answers a
        # connection in order). A get+release pair costs one round trip.
        self._pipelined("release", name=name, event=event)

    def _pipelined(self, op: str, **kw: Any) -> None:
        if self._unread >= _MAX_UNREAD:
            self._read_unread()
        self._send(op, **kw)
        self._unread += 1

    def _read_unread(self) -> None:
        while self._unread:
            self._unread -= 1
            try:
                self._read_response(0)
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
            _close_fd(seg.fd)
            seg.fd = -1
            self._pipelined("forget", segment=seg.id)

    # -- operations --------------------------------------------------------

    def create(self, name: str, shape: Sequence[int], dtype: Any = "f32", device: Any = None) -> "SharedTensor":
        """Creates a tensor (zero-filled), or opens the existing one when dtype
        and shape match. Raises AlreadyExists on a mismatch."""
        dt, dims, dev = _dtypes.canonical(dtype), _dims(shape), _device_arg(device)
        with self._lock:  # answer and mapping under one hold: no other thread may evict the segment between
            return self._open(self._call("create", name=name, dtype=dt, shape=dims, device=dev), cache=False)

    def get(self, name: str, wait: bool = True) -> "SharedTensor":
        """Opens an existing tensor by name. Raises NotFound. When a writer
        published an event (SharedTensor.publish), the current stream waits
        for it (wait=False leaves ordering to the caller)."""
        with self._lock:  # answer and mapping under one hold (see create)
            t = self._open(self._call("get", name=name), cache=True)
        if wait and t.info.event and t.is_cuda:
            t.wait()
        return t

    def get_many(self, names: Sequence[str], wait: bool = True) -> "list[SharedTensor]":
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

    def create_many(self, specs: "Sequence[tuple[str, Sequence[int], Any]]", device: Any = None) -> "list[SharedTensor]":
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

    def _many(self, op: str, reqs: "list[dict[str, Any]]") -> "list[SharedTensor]":
        # Sends a window of requests, then reads and opens their answers in
        # order; on a failure, what was opened is released and it is raised.
        out: list[SharedTensor] = []
        failed: Optional[BaseException] = None
        cache = op == "get"  # a create's answer never repeats
        with self._lock:
            self._begin()
            for start in range(0, len(reqs), _WINDOW):
                ids = [self._send(op, **kw) for kw in reqs[start:start + _WINDOW]]
                self._read_unread()
                self._in_window = True
                try:
                    self._open_answers(ids, out, cache)
                except BaseException as e:
                    failed = e
                    if isinstance(e, (ProtocolError, Unavailable)):
                        raise
                finally:
                    self._in_window = False
                if failed is not None:
                    break
        if failed is not None:
            for t in out:
                t.release()
            raise failed
        return out

    def _open_answers(self, ids: list[int], out: "list[SharedTensor]", cache: bool) -> None:
        # Reads the answers of a window of requests in order and opens them.
        # Every answer is read, even after a failure: the connection must
        # stay in step with the agent. Raises the first failure once all are read.
        failed: Optional[BaseException] = None
        for rid in ids:
            try:
                resp = self._read_response(rid, cache=cache)
            except (ProtocolError, Unavailable):
                raise
            except MemcudaError as e:
                failed = failed or e
                continue
            try:
                out.append(self._open(resp, cache=cache))
            except BaseException as e:  # _open queued the release of this one
                failed = failed or e
        if failed is not None:
            raise failed

    def delete(self, name: str) -> None:
        """Drops the registry's reference: no new gets; the memory goes when the last reference does."""
        self._call("delete", name=name)

    def stat(self, name: str) -> TensorInfo:
        return TensorInfo.from_wire(self._call("stat", name=name)["tensor"])

    def list(self) -> list[TensorInfo]:
        return [TensorInfo.from_wire(t) for t in self._call("list").get("tensors") or []]

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
                self._read_unread()

    def close(self) -> None:
        """Closes the connection: the agent drops every reference it held."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sock.close()
            self._idle.clear()
            for s in self._segments.values():
                _unmap(s)
                if s.fd >= 0:
                    _close_fd(s.fd)
            for fd in self._fds:
                _close_fd(fd)
            self._segments.clear()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- mappings ----------------------------------------------------------

    def _open(self, resp: dict[str, Any], cache: bool) -> "SharedTensor":
        info = TensorInfo.from_wire(resp["tensor"], cache)
        with self._lock:
            seg = self._segments.get(info.segment_id)
            if seg is None and info.ipc_mode == "legacy":
                # Legacy segments travel as the record's IPC handle, not as a descriptor.
                seg = self._segments[info.segment_id] = _Segment(info.segment_id, -1)
            try:
                if seg is None:
                    raise ProtocolError(f"no descriptor for segment {info.segment_id}")
                if seg.mapping is None:
                    seg.mapping, seg.ptr = _map(seg, info)
                    seg.size = int(info.segment_size)
                self._idle.pop(seg.id, None)
                seg.users += 1
            except BaseException:
                self._pending_release.append(info.name)
                raise
        return SharedTensor(self, info, seg)

    def _release(self, t: "SharedTensor", event: str = "") -> None:
        with self._lock:
            self._drop_user(t._seg)
            if not self._closed and not self._forked:
                self._release_async(t.info.name, event)
                if not self._in_window:
                    self._forget_unmapped()

    def _drop_user(self, seg: _Segment) -> None:
        # An unused segment stays mapped (up to max_idle_mappings segments
        # and max_idle_bytes bytes, least recently used out first): the next
        # get of a tensor in it is warm, and unmapping would wait for GPU
        # work still queued on it. The bounds matter because a mapping keeps
        # the segment's memory allocated even after the agent gives it back.
        seg.users -= 1
        if seg.users == 0:
            self._idle[seg.id] = seg
            while self._idle and (len(self._idle) > self.max_idle_mappings
                                  or sum(s.size for s in self._idle.values()) > self.max_idle_bytes):
                old = self._idle.pop(next(iter(self._idle)))
                _unmap(old)
                if self._can_forget and old.fd >= 0:
                    # Closed at the next safe point: answers already on
                    # their way may need it to map the segment again.
                    self._unmapped.append(old)


def _dims(shape: Any) -> list[int]:
    """A shape as a list of ints: a sequence of integers (torch.Size, NumPy
    ints included); anything else, floats and bools among them, is refused
    rather than rounded. Negative or huge dimensions are the agent's to refuse."""
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


def _map(seg: _Segment, info: TensorInfo) -> tuple[Any, int]:
    if info.ipc_mode == "host":
        m = mmap.mmap(seg.fd, info.segment_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        probe = ctypes.c_char.from_buffer(m)
        ptr = ctypes.addressof(probe)
        del probe  # release the buffer export so the mmap can close later
        return m, ptr
    from . import _cuda

    mapping = _cuda.import_segment(seg.fd, info)
    return mapping, int(mapping.ptr)


def _unmap(seg: _Segment) -> None:
    m, seg.mapping, seg.ptr = seg.mapping, None, 0
    if m is None:
        return
    try:
        m.close()
    except BufferError:
        pass  # something still exports the buffer: it closes when that dies


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class _Views:
    """Zero-copy views of a mapped tensor; shared by SharedTensor (socket) and
    RedisTensor (Redis-only path)."""

    info: TensorInfo
    _released: bool
    _seg_ptr: int
    _ordinal: int

    name = property(lambda self: self.info.name)
    shape = property(lambda self: self.info.shape)
    dtype = property(lambda self: self.info.dtype)

    def _check(self) -> None:
        if self._released:
            raise FailedPrecondition(f"tensor {self.name!r} was released")

    @property
    def is_cuda(self) -> bool:
        return self.info.ipc_mode != "host"

    @property
    def device_index(self) -> int:
        """The CUDA ordinal of the tensor's GPU in this process (its UUID resolved
        under this process's CUDA_VISIBLE_DEVICES)."""
        if not self.is_cuda:
            raise TypeError("host tensor")
        return self._ordinal

    @property
    def data_ptr(self) -> int:
        """Address of the tensor's first byte in this process."""
        self._check()
        return self._seg_ptr + self.info.offset

    def _host_array(self) -> Any:
        """A NumPy array of the raw elements (unsigned ints for bf16/fp8) whose
        base keeps this reference alive."""
        import numpy as np

        self._check()
        if self.is_cuda:
            raise TypeError(f"tensor {self.name!r} lives on the GPU: use .torch() or .cupy()")
        typestr = _dtypes.TYPESTR.get(self.dtype) or {2: "<u2", 1: "|u1"}[_dtypes.ITEMSIZE[self.dtype]]
        return np.asarray(_HostArray(self, typestr))

    def numpy(self, view: Any = None) -> Any:
        """A NumPy array over the shared host memory (host backend only). It
        keeps the reference alive while it exists. `view` reinterprets the
        bytes as another dtype (flat)."""
        import numpy as np

        arr = self._host_array()
        if view is not None:
            return arr.reshape(-1).view(np.uint8).view(view)
        if self.dtype not in _dtypes.TYPESTR:
            return arr.view(_dtypes.numpy_dtype(self.dtype))
        return arr

    def torch(self) -> Any:
        """A torch.Tensor over the same memory (CPU for host, CUDA otherwise)."""
        import torch

        self._check()
        if not self.is_cuda:
            t = torch.from_numpy(self._host_array())
            return t.view(_dtypes.torch_dtype(self.dtype)) if self.dtype not in _dtypes.TYPESTR else t
        return torch.from_dlpack(_DLPackExporter(self))

    def cupy(self) -> Any:
        import cupy

        self._check()
        if not self.is_cuda:
            raise TypeError(f"tensor {self.name!r} is a host tensor: use .numpy()")
        return cupy.from_dlpack(_DLPackExporter(self))

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        self._check()
        if not self.is_cuda:
            raise AttributeError("host tensor")
        if self.dtype not in _dtypes.TYPESTR:
            raise TypeError(f"{self.dtype} has no __cuda_array_interface__ typestr; use .torch() (DLPack)")
        return {"shape": self.shape, "typestr": _dtypes.TYPESTR[self.dtype], "data": (self.data_ptr, False),
                "version": 3, "strides": None, "stream": None}


class SharedTensor(_Views):
    """One reference on a named tensor. Views from .numpy(), .torch() and
    .cupy() are zero-copy; NumPy and host views keep the reference alive while
    they exist, and GPU views through DLPack do too. release() (or `with`)
    drops it at once: views must not be used after that."""

    def __init__(self, store: Store, info: TensorInfo, seg: _Segment) -> None:
        self.store = store
        self.info = info
        self._seg = seg
        self._seg_ptr = seg.ptr
        self._ordinal = getattr(seg.mapping, "ordinal", -1)
        self._released = False
        # Released by __del__ when forgotten (cheaper to set up than a
        # weakref.finalize, which a warm get would pay for every time).

    # -- lifetime --------------------------------------------------------

    def publish(self, stream: Optional[int] = None) -> None:
        """Records this process's IPC event on the stream (default: PyTorch's
        current stream) after the writes so far, and publishes it: later
        get()s make their stream wait for it, instead of a device sync."""
        self._check()
        if not self.is_cuda:
            raise TypeError("publish orders GPU work; this is a host tensor")
        from . import _cuda

        s = _cuda.current_stream(self.device_index) if stream is None else stream
        ev = _cuda.record(self.device_index, s)
        if not ev:  # the stream is idle: record anyway, readers still need an event to wait on
            ev = _cuda.record_always(self.device_index, s)
        self.store._call("publish", name=self.name, event=ev)

    def wait(self, stream: Optional[int] = None) -> None:
        """Makes the stream (default: PyTorch's current one) wait for the
        event the writer published, if any."""
        self._check()
        if self.info.event and self.is_cuda:
            from . import _cuda

            s = _cuda.current_stream(self.device_index) if stream is None else stream
            _cuda.stream_wait(self.device_index, self.info.event, s)

    def release(self, stream: Optional[int] = None) -> None:
        """Drops this reference. Views must not be used afterwards. For GPU
        tensors an event recorded on the stream (default: PyTorch's current
        stream) goes along, and the agent reuses the memory only after the
        work queued so far is done: no synchronize needed before release."""
        if self._released:
            return
        self._released = True
        event = ""
        if self.is_cuda:
            from . import _cuda

            s = _cuda.current_stream(self.device_index) if stream is None else stream
            event = _cuda.record(self.device_index, s)
        self.store._release(self, event)

    def __enter__(self) -> "SharedTensor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        if not getattr(self, "_released", True):
            self._released = True
            try:
                _finalize_release(self.store, self.info.name, self._seg)
            except Exception:
                pass  # interpreter shutdown: the connection's close drops the reference

    def __repr__(self) -> str:
        state = "released" if self._released else f"refcount~{self.info.refcount}"
        return f"SharedTensor({self.name!r}, {self.dtype}{list(self.shape)}, {self.info.ipc_mode}, {state})"


class _HostArray:
    """Hands NumPy the tensor's memory and keeps the SharedTensor alive for as
    long as any array made from it."""

    def __init__(self, t: _Views, typestr: str) -> None:
        self.t = t
        self.__array_interface__ = {"shape": t.shape, "typestr": typestr, "data": (t.data_ptr, False), "version": 3}


def _finalize_release(store: Store, name: str, seg: _Segment) -> None:
    # Runs from the garbage collector, possibly in the middle of another call
    # on the same connection: the release is queued for the next call.
    if store._closed:
        return
    store._drop_user(seg)
    store._pending_release.append(name)


class _DLPackExporter:
    """Exports a GPU tensor through DLPack (bf16 and fp8 included)."""

    def __init__(self, t: _Views) -> None:
        self.t = t

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, self.t.device_index)  # kDLCUDA

    def __dlpack__(self, stream: Any = None, **kw: Any) -> Any:
        from . import _dlpack

        # The memory is shared across processes: callers synchronise explicitly
        # (or through an IPC event), so no stream ordering is implied here.
        return _dlpack.capsule(self.t.data_ptr, self.t.shape, self.t.dtype, self.t.device_index, owner=self.t)

