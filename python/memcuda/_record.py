"""TensorInfo: a tensor's registry record, as the agent and Redis give it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> "TensorInfo":
        """The record of an answer's "tensor" object, or of a Redis hash
        whose shape was decoded (values may then be strings)."""
        # A frozen dataclass's __init__ sets each field through
        # object.__setattr__: filling __dict__ at once is several times faster.
        info = object.__new__(cls)
        if d.keys() <= _FIELDS:
            # The agent's record as it comes: JSON gave every field its type.
            fields = dict(_DEFAULTS)
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
_DEFAULTS: dict[str, Any] = {
    f: (0 if f in _INT_FIELDS else () if f == "shape" else "") for f in TensorInfo.__dataclass_fields__
}
_FIELDS = frozenset(_DEFAULTS)
