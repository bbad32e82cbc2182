"""The Python encoder must produce the shared test vectors byte for byte."""
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import c_or_python, python_path
from memcuda import _wire

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "api/v1/testdata/vectors.json").read_text())


# Runs a test once with each request encoder there is.
encoder = c_or_python(_wire, "c_encode_request", "encoder")


@pytest.mark.parametrize("vec", [v for v in VECTORS if v["kind"] == "request"], ids=lambda v: v["name"])
def test_request_vectors_encode_byte_for_byte(vec: dict, encoder: str) -> None:
    m = vec["message"]
    got = _wire.encode_request(m["id"], m["op"], name=m.get("name", ""), dtype=m.get("dtype", ""),
                               shape=m.get("shape"), device=m.get("device", ""), client=m.get("client", ""),
                               event=m.get("event", ""), segment=m.get("segment", ""), prefix=m.get("prefix", ""),
                               limit=m.get("limit", 0), cursor=m.get("cursor", ""))
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


@pytest.mark.parametrize("op,name", [("get", "model.w1"), ("release", "a/b:c@d+e=f-g_h"), ("list", ""), ("get", "a b"),
                                     ("get", "<x>&"), ("get", "ünï"), ("stat", "x" * 200)])
def test_hot_path_encoding_matches_the_general_one(op: str, name: str) -> None:
    body: dict[str, object] = {"id": 99, "op": op}
    if name:
        body["name"] = name
    want = _wire.frame(_wire.KIND_REQUEST, _wire._go_json(body))
    for _ in range(2):  # the second call takes the cached tail
        assert _wire.encode_request(99, op, name=name) == want


@pytest.mark.parametrize("body", [b'{"id":7,"ok":true}', b'{"id":0,"ok":true}', b'{"id":18446744073709551615,"ok":true}',
                                  b'{"id":7,"ok":true,"x":1}', b'{"id":-1,"ok":true}', b'{"id":1e3,"ok":true}'])
def test_bare_success_decodes_like_json(body: bytes) -> None:
    import json

    ans = _wire.decode_answer(body)
    assert {**ans.body, "id": ans.id} == json.loads(body) and ans.record is None


@pytest.mark.parametrize("kw", [
    dict(op="create", name="w", dtype="bf16", shape=[256, 1024], device="0"),
    dict(op="create", name="w", dtype="f32", shape=[], device=""),
    dict(op="create", name="w.x", dtype="f32", shape=[0, 7], device="GPU-8f1c2d3e-aaaa-bbbb-cccc-0123456789ab"),
    dict(op="create", name="w x", dtype="f32", shape=[1]),
    dict(op="create", name="w", dtype="f<32>", shape=[1]),
    dict(op="create", name="w", dtype="f32", shape=[-1, 3]),
    dict(op="publish", name="w", event="AAAA+/8=" * 8),
    dict(op="release", name="w", event="AAAA+/8="),
    dict(op="hello", client="memcuda-py 0.1.0"),
])
def test_fast_encodings_match_the_general_one(kw: dict) -> None:
    assert _wire.encode_request(12345, **kw) == _wire._encode_general(
        12345, kw["op"], kw.get("name", ""), kw.get("dtype", ""), kw.get("shape"), kw.get("device", ""), kw.get("client", ""),
        kw.get("event", ""))


def test_repeated_answers_decode_like_json_and_share_their_record() -> None:
    from memcuda import TensorInfo

    rec = b'"ok":true,"tensor":{"name":"w","uid":"i-1","shape":[2,3]},"fds":["seg1"]}'
    records = []
    for rid in (1, 2, 987654321, 2):
        body = b'{"id":%d,' % rid + rec
        ans = _wire.decode_answer(body)
        want = json.loads(body)
        assert ans.id == rid and {**ans.body, "id": ans.id} == want
        assert ans.record == TensorInfo.from_wire(want["tensor"])
        records.append(ans.record)
    assert all(r is records[0] for r in records), "a repeated answer's record is decoded once"
    fresh = _wire.decode_answer(b'{"id":3,' + rec, cache=False)
    assert fresh.record == records[0] and fresh.record is not records[0], "cache=False keeps nothing"
    other = b'{"id":5,"ok":true,"tensor":{"name":"x"}}'
    assert _wire.decode_answer(other).body == json.loads(other)
    with pytest.raises(_wire.FrameError):
        _wire.decode_answer(b'{"id":5,"ok":true,"tensor":{"name":')


def test_tensor_info_from_the_wire_is_a_normal_frozen_record() -> None:
    import dataclasses

    from memcuda import TensorInfo

    d = {"name": "w", "uid": "i-1", "dtype": "bf16", "shape": [256, 1024], "device": 1, "bytes": 524288, "ipc_mode": "vmm",
         "offset": 512, "segment_id": "s", "segment_size": 2097152, "owner_pid": 7, "refcount": 2, "state": "ready",
         "agent": "i", "node": "n", "ctime": 5, "mtime": 6, "event": "ev"}
    info = TensorInfo.from_wire(d)
    same = TensorInfo(**{f.name: getattr(info, f.name) for f in dataclasses.fields(TensorInfo)})
    assert info == same and hash(info) == hash(same)
    assert info.shape == (256, 1024) and info.device_uuid == "" and info.tenant == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "x"  # type: ignore[misc]


def test_the_c_module_is_built_where_required() -> None:
    """make test builds memcuda._speedups and sets MEMCUDA_REQUIRE_SPEEDUPS:
    a broken build fails here instead of leaving only the Python paths."""
    if os.environ.get("MEMCUDA_REQUIRE_SPEEDUPS") != "1":
        pytest.skip("MEMCUDA_REQUIRE_SPEEDUPS is not set")
    from memcuda import _transport

    assert _wire.c_decode_record is not None, "memcuda._speedups did not import: run make python-ext"
    assert _wire.c_encode_request is not None and _transport.c_read_frame is not None


def _encode_with(impl: str, kw: dict) -> Any:
    """The frame of kw through one encoder, or the exception it raised."""
    with python_path(_wire, "c_encode_request", impl == "python"):
        try:
            return _wire.encode_request(**kw)
        except Exception as e:  # noqa: BLE001 - compared, not swallowed
            return type(e)


@pytest.mark.skipif(_wire.c_encode_request is None, reason="memcuda._speedups is not built")
def test_the_encoders_agree_on_random_requests() -> None:
    """The C encoder writes the Python one's bytes for every request it
    takes, and takes every request of plain strings and int dimensions."""
    rng = random.Random(18)
    plain = "abcXYZ019_.:/@+=-"
    odd = plain + '"\\\n<>&é\u2028 \x00'

    def text(alphabet: str) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 0, 1, 5, 40])))

    taken = 0
    for i in range(3000):
        alphabet = plain if i % 2 else odd
        kw: dict[str, Any] = {"id": rng.choice([0, 1, 7, 1 << 40, (1 << 64) - 1]), "op": rng.choice(["get", "create", "publish", text(alphabet)]),
                              "name": text(alphabet), "dtype": text(alphabet), "device": text(alphabet),
                              "event": text(alphabet), "segment": text(alphabet)}
        kw["shape"] = rng.choice([None, [], [rng.randint(-5, 1 << 40) for _ in range(rng.randint(1, 4))], (3, 4), [True], [1.5]])
        got = _encode_with("c", kw)
        assert got == _encode_with("python", kw), kw
        strings = [kw[k] for k in ("op", "name", "dtype", "device", "event", "segment")]
        if all(re.fullmatch(r"[A-Za-z0-9_.:/@+=-]*", t) for t in strings) and all(type(d) is int for d in kw["shape"] or ()):
            assert _wire.c_encode_request(kw["id"], kw["op"], kw["name"], kw["dtype"], kw["shape"], kw["device"],
                                          kw["event"], kw["segment"]) is not None, kw
            taken += 1
    assert taken > 1000


# Runs a test once with each compact record decoder there is.
decoder = c_or_python(_wire, "c_decode_record", "decoder")


COMPACT = json.loads((Path(__file__).resolve().parents[2] / "api/v1/testdata/compact.json").read_text())


@pytest.mark.parametrize("vec", COMPACT, ids=lambda v: v["name"])
@pytest.mark.parametrize("cache", [False, True])
def test_compact_vectors_decode_to_the_json_record(vec: dict, cache: bool, decoder: str) -> None:
    frame = bytes.fromhex(vec["frame_hex"])
    h = _wire.parse_header(frame)
    body = frame[_wire.HEADER_SIZE:]
    want = vec["message"]
    assert h.num_fds == len(want.get("fds") or [])
    for _ in range(2):  # the second is a cache hit when cache is on
        ans = _wire.decode_answer(body, cache)
        assert ans.id == want["id"]
        assert ans.record == _wire.decode_answer(json.dumps(want).encode(), False).record
        assert (ans.body.get("fds") or []) == (want.get("fds") or []) and not ans.body.get("error")


def _compact_fields() -> list[str]:
    return bytes.fromhex(COMPACT[0]["frame_hex"])[_wire.HEADER_SIZE + 1:].decode().split("\x1f")


@pytest.mark.parametrize("edit", [
    lambda f: f[:22],  # a field short
    lambda f: f + [""],  # one too many
    lambda f: [f[0]] + f[1:4] + ["2,,3"] + f[5:],  # a bad shape
    lambda f: f[:7] + ["12a"] + f[8:],  # a bad number
    lambda f: ["x"] + f[1:],  # a bad id
])
def test_bad_compact_records_are_frame_errors(edit, decoder: str) -> None:
    body = b"R" + "\x1f".join(edit(_compact_fields())).encode()
    with pytest.raises(_wire.FrameError):
        _wire.decode_answer(body, False)


def test_compact_record_that_is_not_utf8(decoder: str) -> None:
    f = _compact_fields()
    body = b"R" + "\x1f".join(f[:1]).encode() + b"\x1f\xff" + ("\x1f" + "\x1f".join(f[2:])).encode()
    with pytest.raises(_wire.FrameError, match="UTF-8"):
        _wire.decode_answer(body, False)


def _decode_with(impl: str, body: bytes) -> Any:
    """The answer (id, body, record) of body through one decoder, or the
    FrameError it raised."""
    with python_path(_wire, "c_decode_record", impl == "python"):
        try:
            ans = _wire.decode_answer(body, False)
            return ans.id, ans.body, ans.record
        except _wire.FrameError as e:
            return FrameErrorSeen(str(e))


class FrameErrorSeen(str):
    """A FrameError's message; any two compare equal (the decoders word some
    of them differently)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FrameErrorSeen)

    def __hash__(self) -> int:
        return 0


def _random_record(rng: random.Random) -> list[str]:
    text = "abcxyz019.-_:/ é😀"

    def word() -> str:
        return "".join(rng.choice(text) for _ in range(rng.randrange(0, 12)))

    def number() -> str:
        if rng.random() < 0.2:  # what int() reads besides plain digits, and the lengths around 18 digits
            return rng.choice(["007", "+5", "1_000", "-0", "0" * 17 + "1", "9" * 18, "9" * 19, "1" + "0" * 18])
        return str(rng.choice([0, 1, -1, 2**31, 2**63 - 1, 2**64 + 7, rng.randrange(10**15)]))

    shape = ",".join(str(rng.randrange(0, 5000)) for _ in range(rng.randrange(0, 5)))
    kinds = "sssxnsnssnsnnnsssssnn"  # the record's 21 fields: s string, n number, x shape
    assert len(kinds) == 21
    fields = [word() if k == "s" else number() if k == "n" else shape for k in kinds]
    fds = ",".join(word() for _ in range(rng.randrange(0, 3)))
    return [f"R{rng.randrange(1 << 40)}"] + fields + [fds]


@pytest.mark.skipif(_wire.c_decode_record is None, reason="memcuda._speedups is not built")
def test_the_decoders_agree_on_records_and_on_damage() -> None:
    """The C decoder gives what the Python one gives: the same record for
    random valid records, and a FrameError for the same damaged ones
    (ASCII edits: int() also reads non-ASCII digits, which the C decoder
    refuses)."""
    rng = random.Random(18)
    for i in range(3000):
        body = "\x1f".join(_random_record(rng)).encode()
        if i % 2:
            b = bytearray(body)
            for _ in range(rng.randrange(1, 4)):
                at = rng.randrange(len(b) + 1)
                choice = rng.random()
                if choice < 0.4 and b:
                    del b[min(at, len(b) - 1)]
                elif choice < 0.8:
                    b[at:at] = bytes([rng.choice(b"\x1f,0123456789-+_ aZ\x00\xff")])
                else:
                    b[at:at] = b"\x1f"
            body = bytes(b)
        got_c, got_py = _decode_with("c", body), _decode_with("python", body)
        assert got_c == got_py, body


@pytest.mark.skipif(_wire.c_decode_record is None, reason="memcuda._speedups is not built")
def test_the_c_decoder_gives_each_record_its_own_fields() -> None:
    """The C decoder reuses the string of a field whose bytes repeat those
    of its last answer: records made of a few records' fields, mixed, so
    that each field now repeats and now changes, decode as Python's do."""
    rng = random.Random(5)
    pool = [_random_record(rng) for _ in range(4)]
    for _ in range(2000):
        fields = [rng.choice(pool)[j] for j in range(len(pool[0]))]
        body = "\x1f".join(fields).encode()
        assert _decode_with("c", body) == _decode_with("python", body), body
