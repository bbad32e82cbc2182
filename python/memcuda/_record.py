"""TensorInfo: a tensor's registry record, as the agent and Redis give it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ._pieces import Piece, parse_pieces

__all__ = ["TensorInfo"]


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
    # Where a tensor in pieces lies, in order (its first at offset in
    # segment_id); () for a tensor of one piece.
    pieces: tuple[Piece, ...] = ()

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> "TensorInfo":
        """The record of an agent's answer ("tensor" or an entry of
        "tensors"): JSON gave every field its type."""
        # A frozen dataclass's __init__ sets each field through
        # object.__setattr__: filling __dict__ at once is several times faster.
        info = object.__new__(cls)
        fields = info.__dict__
        fields.update(_DEFAULTS)
        fields.update(d)
        fields["shape"] = tuple(d.get("shape") or ())
        if "pieces" in d:
            fields["pieces"] = tuple(Piece(str(p["segment_id"]), int(p["segment_size"]), int(p["offset"]), int(p["size"]))
                                     for p in d["pieces"] or ())
        return info

    @classmethod
    def from_compact(cls, f: Sequence[str]) -> "TensorInfo":
        """The record of a compact record's 21 fields (api/v1/compact.go), in
        order. Raises ValueError for a number field that holds no number."""
        (name, uid, dtype, shape, device, device_uuid, nbytes, ipc_mode, ipc_handle, offset, segment_id,
         segment_size, owner_pid, refcount, state, agent, node, tenant, event, ctime, mtime) = f
        info = object.__new__(cls)
        info.__dict__.update(
            name=name, uid=uid, dtype=dtype, shape=tuple(map(int, shape.split(","))) if shape else (),
            device=int(device), device_uuid=device_uuid, bytes=int(nbytes), ipc_mode=ipc_mode, ipc_handle=ipc_handle,
            offset=int(offset), segment_id=segment_id, segment_size=int(segment_size), owner_pid=int(owner_pid),
            refcount=int(refcount), state=state, agent=agent, node=node, tenant=tenant, event=event,
            ctime=int(ctime), mtime=int(mtime), pieces=())
        return info

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> "TensorInfo":
        """The record of every field's value, as _speedups.decode_record
        gives them: the dict becomes the record's own (no copy)."""
        info = object.__new__(cls)
        object.__setattr__(info, "__dict__", fields)
        return info

    @classmethod
    def from_hash(cls, d: dict[str, Any]) -> "TensorInfo":
        """The record of a tensor's Redis hash, its shape decoded (the other
        values are strings)."""
        info = object.__new__(cls)
        g = d.get
        info.__dict__.update({
            "name": g("name", ""), "uid": g("uid", ""), "dtype": g("dtype", ""),
            "shape": tuple(map(int, g("shape") or ())), "device": int(g("device") or 0),
            "device_uuid": g("device_uuid", ""), "bytes": int(g("bytes") or 0), "ipc_mode": g("ipc_mode", ""),
            "ipc_handle": g("ipc_handle", ""), "offset": int(g("offset") or 0), "segment_id": g("segment_id", ""),
            "segment_size": int(g("segment_size") or 0), "owner_pid": int(g("owner_pid") or 0),
            "refcount": int(g("refcount") or 0), "state": g("state", ""), "agent": g("agent", ""),
            "node": g("node", ""), "tenant": g("tenant", ""), "ctime": int(g("ctime") or 0), "mtime": int(g("mtime") or 0),
            "event": g("event", ""), "pieces": parse_pieces(g("pieces") or ""),
        })
        return info


_INT_FIELDS = ("device", "bytes", "offset", "segment_size", "owner_pid", "refcount", "ctime", "mtime")
_DEFAULTS: dict[str, Any] = {
    f: (0 if f in _INT_FIELDS else () if f in ("shape", "pieces") else "") for f in TensorInfo.__dataclass_fields__
}
