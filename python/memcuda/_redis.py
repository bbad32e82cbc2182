"""The Redis-only path: read a tensor's record (and take a reference
through the command queue) with nothing but Redis, then open its memory by
the record's ipc_handle. It speaks Redis through redis-py (`pip install
'memcuda[redis]'`), so every URL redis-py takes works: redis://, rediss://
(TLS), unix://, with a user and password."""
from __future__ import annotations

import ctypes
import json
import mmap
import os
import uuid
from typing import Any, Optional

from ._errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable, from_code
from ._pieces import HostPieces
from ._record import TensorInfo
from ._views import TensorViews

__all__ = ["RedisTensor", "open_from_redis", "redis_client"]


def redis_client(url: str, timeout: float = 10.0) -> Any:
    """A redis-py client for url, answering strings."""
    try:
        import redis
    except ImportError:
        raise FailedPrecondition("the Redis-only path needs redis-py: pip install 'memcuda[redis]'") from None
    try:
        # The BLPOP for a reply waits up to `timeout` itself: the socket must wait longer.
        return redis.Redis.from_url(url, socket_timeout=timeout + 5, socket_connect_timeout=timeout, decode_responses=True)
    except ValueError as e:
        raise InvalidArgument(f"Redis URL {url!r}: {e}") from e


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.ConnectionError, redis.TimeoutError, OSError)


class RedisTensor(TensorViews):
    """A tensor opened from its Redis record alone. With a reference (the
    default) it holds one taken through the command queue for this pid, and
    drops it on release(); GC drops it if the process dies."""

    def __init__(self, conn: Any, url: str, prefix: str, info: TensorInfo, referenced: bool, timeout: float) -> None:
        self.info = info
        self._conn = conn
        self._url = url
        self._prefix = prefix
        self._referenced = referenced
        self._timeout = timeout
        self._released = False
        self._mapping: Any = None
        self._seg_ptr = 0
        self._ordinal = -1
        if info.pieces and info.ipc_mode == "host":
            # Each piece's segment is the shared-memory object of its id.
            fds: dict[str, int] = {}
            try:
                for p in info.pieces:
                    if p.segment_id not in fds:
                        if not p.segment_id or "/" in p.segment_id:
                            raise InvalidArgument(f"bad host segment id {p.segment_id!r}")
                        fds[p.segment_id] = os.open(os.path.join("/dev/shm", p.segment_id), os.O_RDWR)
                self._mapping = HostPieces([(fds[p.segment_id], p.offset, p.size) for p in info.pieces])
            finally:
                for fd in fds.values():
                    os.close(fd)
            self._seg_ptr = self._mapping.ptr - info.offset  # data_ptr adds the first piece's offset
        elif info.pieces:
            raise FailedPrecondition(f"tensor {info.name!r} lies in pieces of {info.ipc_mode} memory: open it over the agent socket (memcuda.connect())")
        elif info.ipc_mode == "host":
            name = info.ipc_handle.lstrip("/")
            if not name or "/" in name:
                raise InvalidArgument(f"bad host ipc_handle {info.ipc_handle!r}")
            fd = os.open(os.path.join("/dev/shm", name), os.O_RDWR)
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
        try:
            if self._referenced:
                _queue_call(self._conn, self._prefix, {"op": "release", "name": self.info.name, **_own_pid()}, self._timeout)
        finally:
            self._conn.close()
            m, self._mapping = self._mapping, None
            if m is not None:
                try:
                    m.close()
                except BufferError:
                    pass  # NumPy views hold this object; the mapping goes with them

    def __reduce__(self) -> tuple[Any, tuple[str, str, str, bool, float]]:
        """Pickles by name: unpickling opens the tensor from Redis again
        (the URL, with any password in it, travels in the pickle)."""
        self._check()
        return (open_from_redis, (self._url, self.info.name, self._prefix, self._referenced, self._timeout))

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


def _queue_call(conn: Any, prefix: str, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
    rid = uuid.uuid4().hex
    cmd = dict(cmd, id=rid, reply_to=f"{prefix}reply:{rid}")
    try:
        conn.rpush(f"{prefix}cmd", json.dumps(cmd, separators=(",", ":")))
        res = conn.blpop([cmd["reply_to"]], timeout=max(1, int(timeout)))
    except _redis_errors() as e:
        raise Unavailable(f"Redis: {e}") from e
    if res is None:
        raise Unavailable(f"no reply from the agent within {timeout}s (is it running with prefix {prefix!r}?)")
    reply: dict[str, Any] = json.loads(res[1])
    err = reply.get("error")
    if err:
        raise from_code(err.get("code", "internal"), err.get("message", ""))
    return reply


def open_from_redis(url: str, name: str, prefix: str = "tensor:", reference: bool = True, timeout: float = 10.0,
                    client: Optional[Any] = None) -> RedisTensor:
    """Opens a tensor with Redis alone (the original design's flow). With reference=True
    a `get` command for this pid goes through the agent's queue, so the
    memory cannot be freed while it is open; with False the record is only
    read (the caller must make sure the tensor outlives its use). client: a
    redis-py client to use instead of one made from url (it is closed with
    the tensor)."""
    conn = client if client is not None else redis_client(url, timeout)
    try:
        if reference:
            reply = _queue_call(conn, prefix, {"op": "get", "name": name, **_own_pid()}, timeout)
            info = TensorInfo.from_wire(reply["tensor"])
        else:
            try:
                d = conn.hgetall(f"{prefix}meta:{name}")
            except _redis_errors() as e:
                raise Unavailable(f"Redis: {e}") from e
            if not d:
                raise NotFound(f"tensor {name!r} has no record under {prefix!r}")
            d["shape"] = json.loads(d.get("shape") or "[]")
            info = TensorInfo.from_hash(d)
        return RedisTensor(conn, url, prefix, info, reference, timeout)
    except BaseException:
        conn.close()
        raise
