"""The agent's socket as the client reads it (memcuda._transport), with each
frame reader there is (the C one of memcuda._speedups and Python's): frames
that come in pieces, several to a read, with descriptors, too large for one
read, malformed, cut off, or late. The peer is a plain Unix socket the test
writes to, byte by byte where it matters."""
from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import threading
import time
from typing import Iterator

import pytest

from conftest import c_or_python
from memcuda import _transport, _wire
from memcuda._errors import Disconnected, Unavailable

# Runs a test once with each frame reader there is.
reader = c_or_python(_transport, "c_read_frame", "reader")


class Peer:
    """The agent's end of one connection: a listening socket the client's
    Connection dials, and the accepted socket the test writes frames to."""

    def __init__(self, timeout: float = 5.0, spin_us: float = 0) -> None:
        self.dir = tempfile.mkdtemp()
        path = os.path.join(self.dir, "agent.sock")
        self.ln = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ln.bind(path)
        self.ln.listen(1)
        self.conn = _transport.Connection(path, timeout, spin_us)
        self.sock, _ = self.ln.accept()

    def close(self) -> None:
        self.conn.close()
        self.sock.close()
        self.ln.close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.close()


def response(body: bytes, nfd: int = 0) -> bytes:
    return _wire.frame(_wire.KIND_RESPONSE, body, nfd)


def test_a_frame_in_pieces_with_its_descriptors(peer: Peer, reader: str) -> None:
    r, w = os.pipe()
    try:
        f = response(b'{"id":1,"ok":true,"fds":["s1","s2"]}', 2)
        # The descriptors ride on a middle piece, as a stream may cut them.
        peer.sock.sendall(f[:5])
        socket.send_fds(peer.sock, [f[5:20]], [r, w])
        threading.Timer(0.05, lambda: peer.sock.sendall(f[20:])).start()
        assert peer.conn.read_frame() == (2, f[_wire.HEADER_SIZE:])
        assert len(peer.conn.fds) == 2
        for fd in peer.conn.fds:
            assert os.fstat(fd).st_ino in (os.fstat(r).st_ino, os.fstat(w).st_ino)
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, "a received descriptor leaks into exec"
    finally:
        os.close(r)
        os.close(w)


def test_several_frames_in_one_read_come_out_in_order(peer: Peer, reader: str) -> None:
    bodies = [b'{"id":%d,"ok":true}' % i for i in range(5)]
    peer.sock.sendall(b"".join(response(b) for b in bodies))
    time.sleep(0.05)  # all of it in the socket before the first read
    assert [peer.conn.read_frame() for _ in bodies] == [(0, b) for b in bodies]


def test_a_frame_larger_than_one_read(peer: Peer, reader: str) -> None:
    body = b'{"id":1,"x":"' + b"y" * (300 << 10) + b'"}'
    t = threading.Thread(target=peer.sock.sendall, args=(response(body),))
    t.start()
    assert peer.conn.read_frame() == (0, body)
    t.join()


@pytest.mark.parametrize("header, reason", [
    (b"XCU1\x01\x02\x00\x00\x00\x00\x00\x02", "bad magic"),
    (b"MCU1\x09\x02\x00\x00\x00\x00\x00\x02", "protocol version 9"),
    (b"MCU1\x01\x01\x00\x00\x00\x00\x00\x02", None),  # a request where a response belongs: read as a frame
    (b"MCU1\x01\x02\x09\x00\x00\x00\x00\x02", "9 descriptors"),
    (b"MCU1\x01\x02\x00\x01\x00\x00\x00\x02", "reserved byte"),
    (b"MCU1\x01\x02\x00\x00\x7f\x00\x00\x00", "exceeds"),
])
def test_a_malformed_header_names_what_is_wrong(peer: Peer, reader: str, header: bytes, reason: "str | None") -> None:
    peer.sock.sendall(header + b"{}")
    if reason is None:
        assert peer.conn.read_frame() == (0, b"{}")
        return
    with pytest.raises(_wire.FrameError, match=reason):
        peer.conn.read_frame()


def test_the_agent_closing_mid_frame_is_a_disconnect(peer: Peer, reader: str) -> None:
    peer.sock.sendall(response(b'{"id":1,"ok":true}')[:15])
    peer.sock.close()
    with pytest.raises(Disconnected, match="closed the connection"):
        peer.conn.read_frame()


def test_no_answer_within_the_timeout_is_unavailable(reader: str) -> None:
    p = Peer(timeout=0.2)
    try:
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match="did not answer in time"):
            p.conn.read_frame()
        assert 0.15 < time.monotonic() - t0 < 3
    finally:
        p.close()


def test_polling_for_the_answer_then_blocking(reader: str) -> None:
    """With spin_us the reader polls first; an answer that comes after the
    polling ends is still read (the blocking read takes over)."""
    p = Peer(spin_us=2000)
    try:
        p.sock.sendall(response(b'{"id":1,"ok":true}'))
        assert p.conn.read_frame() == (0, b'{"id":1,"ok":true}')
        threading.Timer(0.1, lambda: p.sock.sendall(response(b'{"id":2,"ok":true}'))).start()
        assert p.conn.read_frame() == (0, b'{"id":2,"ok":true}')
    finally:
        p.close()


def test_a_closed_connection_is_not_read(peer: Peer, reader: str) -> None:
    peer.conn.sock.close()
    with pytest.raises(Disconnected):
        peer.conn.read_frame()


# Runs a test once with each way a request and its answer go (the C
# module's send-and-read, and Python's send then read).
caller = c_or_python(_transport, "c_call", "caller")


def test_a_call_sends_its_frame_and_reads_the_answer(peer: Peer, caller: str) -> None:
    r, w = os.pipe()
    try:
        req = _wire.encode_request(7, "get", "a.b")
        body = b'{"id":7,"ok":true,"fds":["s1"]}'
        peer.sock.sendmsg([response(body, 1)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, r.to_bytes(4, "little"))])
        assert peer.conn.call(req) == (1, body)
        assert peer.sock.recv(1 << 16) == req
        assert len(peer.conn.fds) == 1 and fcntl.fcntl(peer.conn.fds[0], fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        os.close(r)
        os.close(w)


def test_a_call_to_a_closed_agent_is_a_disconnect(peer: Peer, caller: str) -> None:
    peer.sock.close()
    with pytest.raises(Disconnected, match="send to agent|closed the connection"):
        peer.conn.call(_wire.encode_request(1, "get", "a.b"))


def test_a_request_the_agent_does_not_take_is_unavailable(caller: str) -> None:
    """A request larger than the socket's buffers that the agent never
    reads: the send's timeout runs out."""
    p = Peer(timeout=0.2)
    try:
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match="did not take the request in time"):
            p.conn.call(bytes(8 << 20))  # the bytes of a frame (never parsed: nobody reads them)
        assert 0.15 < time.monotonic() - t0 < 3
    finally:
        p.close()


def test_a_call_goes_through_a_reader_set_on_the_connection(peer: Peer, caller: str) -> None:
    """Tests and benchmarks wrap send and read_frame on a connection: a call
    then goes through them, so they see every frame."""
    seen: list[str] = []
    send, read = peer.conn.send, peer.conn.read_frame

    def spy_send(frame: bytes, fds: "list[int] | None" = None) -> None:
        seen.append("send")
        send(frame, fds)

    def spy_read() -> tuple[int, bytes]:
        seen.append("read")
        return read()

    peer.conn.send = spy_send  # type: ignore[method-assign]
    peer.conn.read_frame = spy_read  # type: ignore[method-assign]
    peer.sock.sendall(response(b'{"id":1,"ok":true}'))
    assert peer.conn.call(_wire.encode_request(1, "get", "a.b")) == (0, b'{"id":1,"ok":true}')
    assert seen == ["send", "read"]


def test_a_call_answered_with_a_malformed_header_names_what_is_wrong(peer: Peer, caller: str) -> None:
    peer.sock.sendall(b"MCU1\x02\x02\x00\x00\x00\x00\x00\x02{}")
    with pytest.raises(_wire.FrameError, match="version"):
        peer.conn.call(_wire.encode_request(1, "get", "a.b"))
