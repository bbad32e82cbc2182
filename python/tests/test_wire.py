"""The Python encoder must produce the shared test vectors byte for byte."""
import json
from pathlib import Path

import pytest

from memcuda import _wire

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "api/v1/testdata/vectors.json").read_text())


@pytest.mark.parametrize("vec", [v for v in VECTORS if v["kind"] == "request"], ids=lambda v: v["name"])
def test_request_vectors_encode_byte_for_byte(vec: dict) -> None:
    m = vec["message"]
    got = _wire.encode_request(m["id"], m["op"], name=m.get("name", ""), dtype=m.get("dtype", ""),
                               shape=m.get("shape"), device=m.get("device", ""), client=m.get("client", ""),
                               event=m.get("event", ""))
    assert got.hex() == vec["frame_hex"]


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v["name"])
def test_vectors_decode(vec: dict) -> None:
    frame = bytes.fromhex(vec["frame_hex"])
    h = _wire.parse_header(frame)
    assert h.kind == (_wire.KIND_REQUEST if vec["kind"] == "request" else _wire.KIND_RESPONSE)
    assert h.num_fds == vec["num_fds"]
    assert h.body_len == len(frame) - _wire.HEADER_SIZE
    assert _wire.decode_body(frame[_wire.HEADER_SIZE:]) == vec["message"]


@pytest.mark.parametrize("mutate", [
    lambda b: b"XCU1" + b[4:],
    lambda b: b[:4] + b"\x09" + b[5:],
    lambda b: b[:5] + b"\x07" + b[6:],
    lambda b: b[:6] + b"\x09" + b[7:],
    lambda b: b[:7] + b"\x01" + b[8:],
    lambda b: b[:8] + b"\xff\xff\xff\xff" + b[12:],
    lambda b: b[:5],
])
def test_bad_headers(mutate) -> None:
    good = _wire.encode_request(1, "list")
    with pytest.raises(_wire.FrameError):
        _wire.parse_header(mutate(good))


def test_go_escaping() -> None:
    body = _wire.encode_request(1, "hello", client="a<b>&c\u2028é")[_wire.HEADER_SIZE:]
    assert body == '{"id":1,"op":"hello","client":"a\\u003cb\\u003e\\u0026c\\u2028é"}'.encode()
