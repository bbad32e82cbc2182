"""Segments mapped ahead of gets: a second connection that the agent tells
of its tenant's segments (the watch op), read by a thread of its own."""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Optional

from . import _wire
from ._errors import Disconnected, MemcudaError, Unimplemented, from_code
from ._transport import Connection, close_fd
from ._version import __version__

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["SegmentWatch"]

_log = logging.getLogger("memcuda")


class SegmentWatch:
    """Maps, in the background, each segment the agent has or makes for
    this client's namespace, so that the first get of a tensor in one costs
    what a warm get costs. Mapped segments count as idle mappings
    (Client.max_idle_mappings and max_idle_bytes bound them), and a segment
    the agent releases is unmapped here while no tensor uses it."""

    def __init__(self, client: "Client") -> None:
        self._client = weakref.ref(client)
        self._path, self._timeout = client.path, client._timeout
        self._stop = threading.Event()
        self._conn: Optional[Connection] = None
        self._conn_lock = threading.Lock()
        self._conn = self._open()  # raises here, in the caller, when the agent cannot watch
        self._thread = threading.Thread(target=self._run, name="memcuda-segment-watch", daemon=True)
        self._thread.start()

    def _open(self) -> Connection:
        conn = Connection(self._path, self._timeout, 0)
        try:
            conn.send(_wire.encode_request(1, "hello", client=f"memcuda-py {__version__} (watch)"))
            self._answer(conn)
            conn.send(_wire.encode_request(2, "watch"))
            self._answer(conn)
        except BaseException:
            conn.close()
            raise
        # News come when the agent makes segments, maybe hours apart: no
        # read timeout from here on.
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 0))
        return conn

    @staticmethod
    def _answer(conn: Connection) -> dict[str, Any]:
        nfd, body = conn.read_frame()
        d = _wire.decode_body(body)
        for fd in conn.fds[:nfd]:
            close_fd(fd)
        del conn.fds[:nfd]
        err = d.get("error")
        if err:
            if err.get("code") == "unimplemented":
                raise Unimplemented(f"this agent cannot push segments ahead of gets: {err.get('message', '')}")
            raise from_code(err.get("code", "internal"), err.get("message", ""))
        return d

    def close(self) -> None:
        """Stops the watch (the client's close does)."""
        self._stop.set()
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread's read
            except OSError:
                pass
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        if conn is not None:
            conn.close()

    def _run(self) -> None:
        delay = 0.01
        while not self._stop.is_set():
            conn = self._conn
            if conn is None:
                return
            try:
                while True:
                    nfd, body = conn.read_frame()
                    d = _wire.decode_body(body)
                    fds = conn.fds[:nfd]
                    del conn.fds[:nfd]
                    c = self._client()
                    if c is None or self._stop.is_set():
                        for fd in fds:
                            close_fd(fd)
                        return
                    c._take_news(d.get("pushed") or [], dict(zip(d.get("fds") or [], fds)), d.get("gone") or [])
                    del c
                    delay = 0.01
            except MemcudaError as e:
                if self._stop.is_set():
                    return
                if not isinstance(e, Disconnected):
                    _log.warning("memcuda: segment watch: %s", e)
            # The agent went away (a restart, a hand-over): watch its successor.
            while not self._stop.is_set():
                time.sleep(delay)
                delay = min(2 * delay, 1.0)
                try:
                    new = self._open()
                except MemcudaError:
                    continue
                with self._conn_lock:
                    old, self._conn = self._conn, (None if self._stop.is_set() else new)
                if old is not None:
                    old.close()
                if self._conn is None:
                    new.close()
                    return
                break
