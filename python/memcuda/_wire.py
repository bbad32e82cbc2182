"""Version 1 of the agent socket's framing and messages (api/v1 in the Go module).

A frame is a 12-byte header (magic "MCU1", version 1, kind, descriptor
count, reserved 0, big-endian body length) and a compact JSON body. Request
bodies are written exactly as Go's encoding/json writes them, so both sides
produce the same bytes (api/v1/testdata/vectors.json pins them).
"""
from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, Sequence

from ._record import TensorInfo


def speedup(name: str) -> Any:
    """The function name of the optional C module (memcuda._speedups),
    where it was built (setup.py); None without it or with
    MEMCUDA_NO_SPEEDUPS=1 (the pure-Python paths give the same results)."""
    if os.environ.get("MEMCUDA_NO_SPEEDUPS") == "1":
        return None
    try:
        from . import _speedups
    except ImportError:
        return None
    return getattr(_speedups, name, None)


# Module state, not constants: tests and benchmarks compare both paths.
c_decode_record: "Optional[Callable[[bytes], tuple[int, dict[str, Any], str]]]" = speedup("decode_record")
c_encode_request: "Optional[Callable[..., Optional[bytes]]]" = speedup("encode_request")

__all__ = ["Answer", "FrameError", "Header", "decode_answer", "decode_body", "encode_request", "frame", "parse_header"]

MAGIC = b"MCU1"
VERSION = 1
HEADER = struct.Struct(">4sBBBBI")
HEADER_SIZE = HEADER.size
MAX_BODY = 1 << 20
MAX_FDS = 8
KIND_REQUEST = 1
KIND_RESPONSE = 2


class FrameError(ValueError):
    """A malformed frame."""


@dataclass(frozen=True)
class Header:
    kind: int
    num_fds: int
    body_len: int


def _go_json(obj: Any) -> bytes:
    # encoding/json: compact, UTF-8, and <, >, &, U+2028, U+2029 escaped.
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        s = s.replace(ch, esc)
    return s.encode("utf-8")


def frame(kind: int, body: bytes, num_fds: int = 0) -> bytes:
    if len(body) > MAX_BODY:
        raise FrameError(f"body of {len(body)} bytes exceeds {MAX_BODY}")
    if not 0 <= num_fds <= MAX_FDS:
        raise FrameError(f"{num_fds} descriptors, at most {MAX_FDS}")
    return HEADER.pack(MAGIC, VERSION, kind, num_fds, 0, len(body)) + body


def parse_header(b: bytes) -> Header:
    if len(b) < HEADER_SIZE:
        raise FrameError(f"header of {len(b)} bytes")
    magic, version, kind, nfd, reserved, n = HEADER.unpack(b[:HEADER_SIZE])
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r}")
    if version != VERSION:
        raise FrameError(f"protocol version {version}, this client speaks {VERSION}")
    if kind not in (KIND_REQUEST, KIND_RESPONSE):
        raise FrameError(f"unknown frame kind {kind}")
    if nfd > MAX_FDS:
        raise FrameError(f"{nfd} descriptors, at most {MAX_FDS}")
    if reserved != 0:
        raise FrameError(f"reserved byte is {reserved}")
    if n > MAX_BODY:
        raise FrameError(f"body of {n} bytes exceeds {MAX_BODY}")
    return Header(kind, nfd, n)


_PLAIN = re.compile(r"[A-Za-z0-9_.:/@+=-]*\Z")
_TAILS: dict[tuple[str, str], bytes] = {}


def _tail(op: str, name: str) -> Optional[bytes]:
    # Nothing to escape in these characters, so formatting gives
    # encoding/json's exact bytes; other names take the general path.
    if not (_PLAIN.match(op) and _PLAIN.match(name)):
        return None
    t = (f',"op":"{op}","name":"{name}"}}' if name else f',"op":"{op}"}}').encode()
    if len(_TAILS) >= 4096:
        _TAILS.clear()
    _TAILS[(op, name)] = t
    return t


def encode_request(
    id: int,
    op: str,
    name: str = "",
    dtype: str = "",
    shape: Optional[Sequence[int]] = None,
    device: str = "",
    client: str = "",
    event: str = "",
    segment: str = "",
    prefix: str = "",
    limit: int = 0,
    cursor: str = "",
) -> bytes:
    """A request frame, byte for byte what the Go encoder writes."""
    if c_encode_request is not None and not (client or prefix or limit or cursor):
        b = c_encode_request(id, op, name, dtype, shape, device, event, segment)
        if b is not None:
            return b
    if prefix or limit or cursor:
        return _encode_general(id, op, name, dtype, shape, device, client, event, segment, prefix, limit, cursor)
    if not (dtype or shape or device or client or event or segment):
        # The hot path (get, release, stat...): the bytes after the id are
        # the same every time for an op and name.
        tail = _TAILS.get((op, name))
        if tail is None:
            tail = _tail(op, name)
        if tail is not None:
            b = b'{"id":%d' % id + tail
            return HEADER.pack(MAGIC, VERSION, KIND_REQUEST, 0, 0, len(b)) + b
    if not client and _PLAIN.match(op + name + dtype + device + event + segment):
        # create and publish: the same rules as above (one match checks every
        # field: the pattern is a character class). The bytes after the name
        # repeat for a dtype, shape and device: formatted once.
        key = (op, dtype, tuple(shape) if shape else (), device, event, segment)
        parts = _SUFFIXES.get(key)
        if parts is None:
            parts = _suffix(key)
        head, rest = parts
        b = b'{"id":%d' % id + head + (b',"name":"%s"' % name.encode() if name else b"") + rest
        return HEADER.pack(MAGIC, VERSION, KIND_REQUEST, 0, 0, len(b)) + b
    return _encode_general(id, op, name, dtype, shape, device, client, event, segment)


_SuffixKey = tuple[str, str, tuple[int, ...], str, str, str]
_SUFFIXES: dict[_SuffixKey, tuple[bytes, bytes]] = {}


def _suffix(key: _SuffixKey) -> tuple[bytes, bytes]:
    # v1.Request's field order and omitempty: op, (name), dtype, shape,
    # device, event, segment.
    op, dtype, shape, device, event, segment = key
    rest = b""
    if dtype:
        rest += b',"dtype":"%s"' % dtype.encode()
    if shape:
        rest += b',"shape":[%s]' % ",".join([str(int(d)) for d in shape]).encode()
    if device:
        rest += b',"device":"%s"' % device.encode()
    if event:
        rest += b',"event":"%s"' % event.encode()
    if segment:
        rest += b',"segment":"%s"' % segment.encode()
    parts = (b',"op":"%s"' % op.encode(), rest + b"}")
    if len(_SUFFIXES) >= 1024:
        _SUFFIXES.clear()
    _SUFFIXES[key] = parts
    return parts


def _encode_general(id: int, op: str, name: str, dtype: str, shape: Optional[Sequence[int]], device: str, client: str,
                    event: str, segment: str = "", prefix: str = "", limit: int = 0, cursor: str = "") -> bytes:
    body: dict[str, Any] = {"id": int(id), "op": op}
    # Field order and omitempty rules of v1.Request.
    if name:
        body["name"] = name
    if dtype:
        body["dtype"] = dtype
    if shape:
        body["shape"] = [int(d) for d in shape]
    if device:
        body["device"] = device
    if client:
        body["client"] = client
    if event:
        body["event"] = event
    if segment:
        body["segment"] = segment
    if prefix:
        body["prefix"] = prefix
    if limit:
        body["limit"] = int(limit)
    if cursor:
        body["cursor"] = cursor
    return frame(KIND_REQUEST, _go_json(body))


def encode_reattach(id: int, holder: str, refs: "Sequence[tuple[str, int]]") -> bytes:
    """A reattach frame: the previous connection's holder and the references
    this client has open through it."""
    body = {"id": int(id), "op": "reattach", "holder": holder, "refs": [{"name": n, "count": int(c)} for n, c in refs]}
    return frame(KIND_REQUEST, _go_json(body))


def encode_offer(id: int, segments: Sequence[str]) -> bytes:
    """An offer frame: the ids of the segments whose descriptors go with it."""
    if len(segments) > MAX_FDS:
        raise FrameError(f"{len(segments)} descriptors, at most {MAX_FDS}")
    return frame(KIND_REQUEST, _go_json({"id": int(id), "op": "offer", "segments": list(segments)}), len(segments))


_OK_TAIL = b',"ok":true}'


class Answer(NamedTuple):
    """A decoded response: its id, its body, and the record of its "tensor"
    (None when it has none)."""

    id: Any
    body: dict[str, Any]
    record: Optional[TensorInfo]


# The answer cache. Warm gets of one tensor repeat the same answer but for
# its id: _ANSWERS maps the bytes after the id to the decoded body and its
# record, so a repeated answer is decoded once. Bodies from the cache are
# shared between calls and must not be changed; records are frozen.
_ANSWERS: dict[bytes, tuple[dict[str, Any], Optional[TensorInfo]]] = {}
_MAX_ANSWERS = 1024
_MAX_CACHED_BODY = 4096
_OK_BODY: dict[str, Any] = {"ok": True}


def decode_answer(body: bytes, cache: bool = True) -> Answer:
    """A response body, JSON or a compact record. cache=False for answers
    unlikely to repeat (a create's, or one that carries descriptors): they
    are decoded but not kept."""
    if body[:1] == b"R":
        return _decode_compact(body, cache)
    # A bare success ({"id":N,"ok":true}: releases, publishes) needs no parser.
    if body.endswith(_OK_TAIL) and body.startswith(b'{"id":') and body[6:-11].isdigit():
        return Answer(int(body[6:-11]), _OK_BODY, None)
    comma = body.find(b",", 6, 28) if cache else -1
    if comma > 6 and body.startswith(b'{"id":') and body[6:comma].isdigit() and b'"tensor":' in body:
        rest = body[comma:]
        hit = _ANSWERS.get(rest)
        if hit is None:
            d = decode_body(body)
            hit = (d, _record_of(d))
            _remember(rest, hit)
        return Answer(int(body[6:comma]), hit[0], hit[1])
    d = decode_body(body)
    return Answer(d.get("id"), d, _record_of(d))


# The compact record layout (api/v1/compact.go): "R", then the id, the
# record's fields in TensorInfo's wire order (shape as dimensions joined by
# ","), and the attached descriptors' segment ids joined by ",", separated
# by \x1f. One split and a few int() calls instead of a JSON parse: the
# answers of creates and first gets come to a process the wait left with
# cold caches, and the parse was most of what the client did then.
COMPACT_REQUEST = "compact-records"
# Says that this client maps tensors in pieces (api/v1 OpPieces).
PIECES_REQUEST = "pieces"
_COMPACT_FIELDS = 23


def _decode_compact(body: bytes, cache: bool) -> Answer:
    sep = body.find(b"\x1f", 1, 22)
    if sep < 0:
        raise FrameError("compact record without fields")
    rest = b""  # the cache's key: the bytes after the id
    if cache:
        rest = body[sep:]
        hit = _ANSWERS.get(rest)
        if hit is not None and body[1:sep].isdigit():
            return Answer(int(body[1:sep]), hit[0], hit[1])
    try:
        if c_decode_record is not None:
            rid, fields, fds = c_decode_record(body)
            info = TensorInfo.from_fields(fields)
        else:
            rid, info, fds = _decode_compact_fields(body)
    except UnicodeDecodeError as e:
        raise FrameError(f"compact record is not UTF-8: {e}") from None
    except ValueError as e:
        raise FrameError(f"compact record: {e}") from None
    d = {"ok": True, "fds": fds.split(",")} if fds else _OK_BODY
    if cache:
        _remember(rest, (d, info))
    return Answer(rid, d, info)


def _decode_compact_fields(body: bytes) -> tuple[int, TensorInfo, str]:
    """The pure-Python decoder: (id, record, the descriptors' segment ids
    joined by ","). Raises ValueError (UnicodeDecodeError among them) for a
    malformed body, as the C one does."""
    f = body.decode("utf-8").split("\x1f")
    if len(f) != _COMPACT_FIELDS:
        raise ValueError(f"{len(f)} fields, want {_COMPACT_FIELDS}")
    return int(f[0][1:]), TensorInfo.from_compact(f[1:22]), f[22]


def _remember(rest: bytes, hit: tuple[dict[str, Any], Optional[TensorInfo]]) -> None:
    """Keeps a decoded answer under the bytes after its id (see _ANSWERS)."""
    if len(rest) <= _MAX_CACHED_BODY:
        if len(_ANSWERS) >= _MAX_ANSWERS:
            _ANSWERS.clear()
        _ANSWERS[rest] = hit


def _record_of(d: dict[str, Any]) -> Optional[TensorInfo]:
    t = d.get("tensor")
    if not isinstance(t, dict):
        return None
    try:
        return TensorInfo.from_wire(t)
    except (KeyError, TypeError, ValueError) as e:
        raise FrameError(f"bad tensor record: {e!r}") from None


def decode_body(body: bytes) -> dict[str, Any]:
    """A response body as JSON, nothing cached."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FrameError(f"bad JSON body: {e}") from e
    if not isinstance(obj, dict):
        raise FrameError("body is not a JSON object")
    return obj
