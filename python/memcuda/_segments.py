"""Segments in this process: the descriptor the agent sent for each, its
mapping, and the bounded set of mappings kept while no tensor uses them."""
from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass
from typing import Any, Optional

from . import _cuda
from ._record import TensorInfo

__all__ = ["IdleMappings", "Segment", "map_segment", "unmap"]


@dataclass
class Segment:
    """A segment descriptor received from the agent and its mapping here."""

    id: str
    fd: int  # -1: none (legacy segments travel as IPC handles, or it was closed after a forget)
    users: int = 0
    mapping: Any = None  # mmap.mmap (host) or _cuda.Mapping (vmm/legacy)
    ptr: int = 0  # base address of the mapping in this process
    size: int = 0  # bytes mapped
    ordinal: int = -1  # CUDA ordinal of the segment's GPU here
    mode: str = ""  # ipc_mode of the tensors in it, once mapped
    # A tensor in pieces is mapped as its own "segment" (id "pieces:" and its
    # uid, no descriptor): parts are the ids of the segments it lies in, and
    # ptr is where its first byte is less the first piece's offset, so that a
    # view's ptr + offset is its first byte as for a tensor of one piece.
    parts: tuple[str, ...] = ()


def map_segment(seg: Segment, info: TensorInfo) -> None:
    """Maps seg, whose tensor info is, into this process."""
    if info.ipc_mode == "host":
        m = mmap.mmap(seg.fd, info.segment_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        probe = ctypes.c_char.from_buffer(m)
        seg.mapping, seg.ptr = m, ctypes.addressof(probe)
        del probe  # release the buffer export so the mmap can close later
    else:
        mapping = _cuda.import_segment(seg.fd, info)
        seg.mapping, seg.ptr, seg.ordinal = mapping, int(mapping.ptr), mapping.ordinal
    seg.size = int(info.segment_size)
    seg.mode = info.ipc_mode


def unmap(seg: Segment) -> None:
    m, seg.mapping, seg.ptr = seg.mapping, None, 0
    if m is None:
        return
    try:
        m.close()
    except BufferError:
        pass  # something still exports the buffer: it closes when that dies


class IdleMappings:
    """Mapped segments no tensor uses, least recently used first. They stay
    mapped within max_count segments and max_bytes bytes: the next get of a
    tensor in one is warm, and unmapping would wait for GPU work still
    queued on it. The bounds matter because a mapping keeps the segment's
    memory allocated even after the agent gives it back."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._segs: dict[str, Segment] = {}
        self._bytes = 0  # the sizes of _segs, kept as they come and go: a release must not cost a sum over them

    def add(self, seg: Segment) -> list[Segment]:
        """Keeps seg; returns the segments unmapped to stay within bounds."""
        self.take(seg.id)
        self._segs[seg.id] = seg
        self._bytes += seg.size
        out = []
        while self._segs and (len(self._segs) > self.max_count or self._bytes > self.max_bytes):
            old = self._segs.pop(next(iter(self._segs)))
            self._bytes -= old.size
            unmap(old)
            out.append(old)
        return out

    def take(self, seg_id: str) -> Optional[Segment]:
        """Removes a segment that is in use again."""
        seg = self._segs.pop(seg_id, None)
        if seg is not None:
            self._bytes -= seg.size
        return seg

    def clear(self) -> None:
        self._segs.clear()
        self._bytes = 0
