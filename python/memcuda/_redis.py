"""The Redis-only path: read a tensor's record (and take a reference
through the command queue) with nothing but Redis, then open its memory by
the record's ipc_handle. A small RESP2 client keeps the package free of
dependencies."""
from __future__ import annotations

import json
import mmap
import os
import socket
import ctypes
import uuid
from typing import Any, Optional
from urllib.parse import unquote, urlparse

from ._record import TensorInfo
from ._views import TensorViews
from ._errors import FailedPrecondition, InvalidArgument, NotFound, ProtocolError, Unavailable, from_code

__all__ = ["RedisConnection", "RedisTensor", "open_from_redis"]


class RedisConnection:
    """A blocking RESP2 connection (redis://[user:password@]host:port/db)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        u = urlparse(url)
        if u.scheme not in ("redis", "unix"):
            raise InvalidArgument(f"unsupported Redis URL scheme {u.scheme!r} (redis:// or unix://)")
        try:
            if u.scheme == "unix":
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(timeout)
                self._sock.connect(u.path)
            else:
                self._sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=timeout)
        except OSError as e:
            raise Unavailable(f"connect to Redis at {url}: {e}") from e
        self._buf = b""
        if u.password:
            args = [unquote(u.username), unquote(u.password)] if u.username else [unquote(u.password)]
            self.call("AUTH", *args)
        db = (u.path or "/0").strip("/") if u.scheme == "redis" else ""
        if db and db != "0":
            self.call("SELECT", db)

    def close(self) -> None:
        self._sock.close()

    def call(self, *args: Any) -> Any:
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        try:
            self._sock.sendall(b"".join(out))
            return self._read()
        except OSError as e:
            raise Unavailable(f"Redis: {e}") from e

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise Unavailable("Redis closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self._buf) < n + 2:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise Unavailable("Redis closed the connection")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n + 2:]
        return data

    def _read(self) -> Any:
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise ProtocolError(f"Redis: {rest.decode()}")
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise ProtocolError(f"unexpected Redis reply {line[:20]!r}")


def _info_from_hash(flat: list[str]) -> TensorInfo:
    d: dict[str, Any] = dict(zip(flat[::2], flat[1::2]))
    d["shape"] = json.loads(d.get("shape") or "[]")
    return TensorInfo.from_wire(d)


class RedisTensor(TensorViews):
    """A tensor opened from its Redis record alone. With a reference (the
    default) it holds one taken through the command queue for this pid, and
    drops it on release(); GC drops it if the process dies."""

    def __init__(self, conn: RedisConnection, prefix: str, info: TensorInfo, referenced: bool, timeout: float) -> None:
        self.info = info
        self._conn = conn
        self._prefix = prefix
        self._referenced = referenced
        self._timeout = timeout
        self._released = False
        self._mapping: Any = None
        self._seg_ptr = 0
        self._ordinal = -1
        if info.ipc_mode == "host":
            path = os.path.join("/dev/shm", info.ipc_handle.lstrip("/"))
            if "/" in info.ipc_handle.lstrip("/"):
                raise InvalidArgument(f"bad host ipc_handle {info.ipc_handle!r}")
            fd = os.open(path, os.O_RDWR)
            try:
                self._mapping = mmap.mmap(fd, info.segment_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
            probe = ctypes.c_char.from_buffer(self._mapping)
            self._seg_ptr = ctypes.addressof(probe)
            del probe
        elif info.ipc_mode == "legacy":
            from . import _cuda

            self._ordinal = _cuda.ordinal_of(info.device_uuid)
            self._mapping = _cuda.open_legacy(info.ipc_handle, info.segment_size, self._ordinal)
            self._seg_ptr = self._mapping.ptr
        else:
            raise FailedPrecondition(f"tensor {info.name!r} is {info.ipc_mode}: its memory is shared over the agent socket only (memcuda.connect())")

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._referenced:
            _queue_call(self._conn, self._prefix, {"op": "release", "name": self.info.name, **_own_pid()}, self._timeout)
        self._conn.close()
        m, self._mapping = self._mapping, None
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass  # NumPy views hold this object; the mapping goes with them

    def __enter__(self) -> "RedisTensor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _own_pid() -> dict[str, int]:
    """This process's pid and start time (clock ticks since boot, field 22
    of /proc/self/stat): with it the agent refuses the pid when it names
    another process in its PID namespace, as a pid from a container's
    namespace does, instead of pinning a reference on that process."""
    pid = os.getpid()
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        start = int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return {"pid": pid}
    return {"pid": pid, "pid_start": start}


def _queue_call(conn: RedisConnection, prefix: str, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
    rid = uuid.uuid4().hex
    cmd = dict(cmd, id=rid, reply_to=f"{prefix}reply:{rid}")
    conn.call("RPUSH", f"{prefix}cmd", json.dumps(cmd, separators=(",", ":")))
    res = conn.call("BLPOP", cmd["reply_to"], max(1, int(timeout)))
    if res is None:
        raise Unavailable(f"no reply from the agent within {timeout}s (is it running with prefix {prefix!r}?)")
    reply: dict[str, Any] = json.loads(res[1])
    err = reply.get("error")
    if err:
        raise from_code(err.get("code", "internal"), err.get("message", ""))
    return reply


def open_from_redis(url: str, name: str, prefix: str = "tensor:", reference: bool = True, timeout: float = 10.0) -> RedisTensor:
    """Opens a tensor with Redis alone (the original design's flow). With reference=True
    a `get` command for this pid goes through the agent's queue, so the
    memory cannot be freed while it is open; with False the record is only
    read (the caller must make sure the tensor outlives its use)."""
    conn = RedisConnection(url, timeout=timeout)
    try:
        if reference:
            reply = _queue_call(conn, prefix, {"op": "get", "name": name, **_own_pid()}, timeout)
            info = TensorInfo.from_wire(reply["tensor"])
        else:
            flat = conn.call("HGETALL", f"{prefix}meta:{name}")
            if not flat:
                raise NotFound(f"tensor {name!r} has no record under {prefix!r}")
            info = _info_from_hash(flat)
        return RedisTensor(conn, prefix, info, reference, timeout)
    except BaseException:
        conn.close()
        raise
