"""The agent's socket: a Unix stream connection that carries frames and the
descriptors (SCM_RIGHTS) that come with them."""
from __future__ import annotations

import array
import os
import socket
import struct
import time
from typing import Any, Callable, Optional

from . import _wire
from ._errors import Disconnected, Unavailable

__all__ = ["Connection"]

# Received descriptors are close-on-exec from the start (no fcntl per fd).
_CMSG_CLOEXEC: int = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_CMSG_SPACE = socket.CMSG_SPACE(4 * _wire.MAX_FDS)
_RESPONSE_HEAD = _wire.MAGIC + bytes([_wire.VERSION, _wire.KIND_RESPONSE])

# The frame reader in C (_speedups.read_frame), or None: module state, not
# a constant (tests and benchmarks compare both readers).
c_read_frame: "Optional[Callable[[int, bytearray, list[int], int], Optional[tuple[int, bytes]]]]" = \
    _wire.speedup("read_frame")
# The send and that reader in one C call (_speedups.call), or None.
c_call: "Optional[Callable[[int, bytes, bytearray, list[int], int], Optional[tuple[int, bytes] | int]]]" = \
    _wire.speedup("call")


def _send_failed(e: OSError) -> "Unavailable | Disconnected":
    """The client's error for a failed send of a request."""
    if isinstance(e, BlockingIOError):  # SO_SNDTIMEO ran out
        return Unavailable(f"the agent did not take the request in time: {e}")
    return Disconnected(f"send to agent: {e}")


class Connection:
    """One connection to the agent. Not thread-safe: the client serialises
    calls on it. Descriptors that arrive are kept in `fds`, in order, until
    the caller claims those its frame announced."""

    def __init__(self, path: str, timeout: float, spin_us: float) -> None:
        self.path = path
        self.spin_us = spin_us
        self.fds: list[int] = []
        self._buf = bytearray()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as e:
            sock.close()
            raise Disconnected(f"connect to the agent at {path}: {e}") from e
        # Blocking mode with kernel-side timeouts: a Python timeout socket
        # polls before every send and receive, one more system call each.
        sock.settimeout(None)
        tv = struct.pack("ll", int(timeout), int((timeout % 1) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        self.sock = sock

    def send(self, frame: bytes, fds: "list[int] | None" = None) -> None:
        try:
            if fds:
                n = self.sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
                if n < len(frame):
                    self.sock.sendall(frame[n:])
            else:
                self.sock.sendall(frame)
        except OSError as e:
            raise _send_failed(e) from e

    def call(self, frame: bytes) -> tuple[int, bytes]:
        """Sends a request frame (no descriptors) and reads the next
        response frame: send and read_frame, in one C call when the C
        module is there. A send or read_frame set on the instance (a test's
        or a benchmark's wrapper) is called instead, so it sees every frame."""
        if c_call is None or "send" in self.__dict__ or "read_frame" in self.__dict__:
            self.send(frame)
            return self.read_frame()
        got = self._in_c(frame)
        if type(got) is int:  # the send's errno
            raise _send_failed(OSError(got, os.strerror(got)))
        if got is not None:
            return got  # type: ignore[return-value]
        return self._read_python()  # not a valid response's header: its parser says why

    def read_frame(self) -> tuple[int, bytes]:
        """The next response frame: (descriptor count, body)."""
        if c_read_frame is not None:
            got = self._in_c(None)
            if got is not None:
                return got  # type: ignore[return-value]
            # Not a valid response's header: the reader below says why.
        return self._read_python()

    def _in_c(self, frame: Optional[bytes]) -> "Optional[tuple[int, bytes] | int]":
        # The C reader (after sending frame, unless None), its errors as the client's.
        try:
            if frame is None:
                assert c_read_frame is not None
                return c_read_frame(self.sock.fileno(), self._buf, self.fds, int(self.spin_us * 1000))
            assert c_call is not None
            return c_call(self.sock.fileno(), frame, self._buf, self.fds, int(self.spin_us * 1000))
        except EOFError:
            raise Disconnected("the agent closed the connection") from None
        except BlockingIOError as e:  # SO_RCVTIMEO ran out
            raise Unavailable(f"the agent did not answer in time: {e}") from e
        except OSError as e:
            raise Disconnected(f"read from agent: {e}") from e

    def _read_python(self) -> tuple[int, bytes]:
        buf = self._buf
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

    def close(self) -> None:
        """Closes the socket and every descriptor nobody claimed."""
        self.sock.close()
        for fd in self.fds:
            close_fd(fd)
        self.fds.clear()

    def _fill(self, n: int) -> None:
        # Reads until the buffer holds n bytes (a whole response is usually
        # one read), and collects passed descriptors.
        buf = self._buf
        while len(buf) < n:
            try:
                data, anc = self.recvmsg(max(65536, n - len(buf)))
            except BlockingIOError as e:  # SO_RCVTIMEO ran out
                raise Unavailable(f"the agent did not answer in time: {e}") from e
            except OSError as e:
                raise Disconnected(f"read from agent: {e}") from e
            for level, typ, payload in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
                    if not _CMSG_CLOEXEC:
                        for fd in fds:
                            os.set_inheritable(fd, False)
                    self.fds.extend(fds)
            if not data:
                raise Disconnected("the agent closed the connection")
            buf += data

    def recvmsg(self, size: int) -> tuple[bytes, list[Any]]:
        """One recvmsg. The agent answers within microseconds; on virtual
        machines waking a thread blocked in recvmsg costs tens of them, so
        it polls without blocking for spin_us first."""
        if self.spin_us > 0:
            deadline = time.perf_counter() + self.spin_us / 1e6
            while True:
                try:
                    data, anc, _f, _a = self.sock.recvmsg(size, _CMSG_SPACE, socket.MSG_DONTWAIT | _CMSG_CLOEXEC)
                    return data, anc
                except BlockingIOError:
                    if time.perf_counter() > deadline:
                        break
        data, anc, _f, _a = self.sock.recvmsg(size, _CMSG_SPACE, _CMSG_CLOEXEC)
        return data, anc


def close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
