"""Tensors in pieces: a tensor whose bytes lie in parts of several segments
(the agent assembled it from freed memory instead of a new segment) is
mapped here as those parts side by side in one new address range."""
from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass
from typing import Any, Sequence

from ._errors import FailedPrecondition, MemcudaError

__all__ = ["HostPieces", "Piece", "map_pieces", "parse_pieces"]


@dataclass(frozen=True)
class Piece:
    """size bytes at offset of a segment: one part of a tensor in pieces."""

    segment_id: str
    segment_size: int
    offset: int
    size: int


def parse_pieces(text: str) -> tuple[Piece, ...]:
    """The pieces as the registry's hash holds them (api/v1 FormatPieces):
    segment_id:segment_size:offset:size joined by ','. Raises ValueError."""
    if not text:
        return ()
    out = []
    for part in text.split(","):
        f = part.split(":")
        if len(f) != 4 or not f[0]:
            raise ValueError(f"piece {part!r} is not segment_id:segment_size:offset:size")
        seg_size, off, size = int(f[1]), int(f[2]), int(f[3])
        if size <= 0 or off < 0 or off + size > seg_size:
            raise ValueError(f"piece {part!r} lies outside its segment or is empty")
        out.append(Piece(f[0], seg_size, off, size))
    return tuple(out)


_MAP_FIXED = 0x10  # Linux; neither is in the mmap module
_PROT_NONE = 0
_libc: Any = None


def _mmap_fn() -> Any:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc = libc
    return _libc


class HostPieces:
    """Parts of shared-memory segments mapped side by side: an anonymous
    reservation first, each part mapped over its place in it."""

    ordinal = -1  # no GPU: host memory

    def __init__(self, parts: Sequence[tuple[int, int, int]]) -> None:
        libc = _mmap_fn()
        page = mmap.PAGESIZE
        lens = [-(-n // page) * page for _, _, n in parts]
        self.size = sum(lens)
        base = libc.mmap(None, self.size, _PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if base is None or base == ctypes.c_void_p(-1).value:
            e = ctypes.get_errno()
            raise MemcudaError(f"reserving {self.size} bytes for a tensor in pieces: {os.strerror(e)}")
        self.ptr = int(base)
        self.closed = False
        at = self.ptr
        try:
            for (fd, off, _), n in zip(parts, lens):
                got = libc.mmap(at, n, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | _MAP_FIXED, fd, off)
                if got != at:
                    e = ctypes.get_errno()
                    raise MemcudaError(f"mapping a piece of {n} bytes at offset {off}: {os.strerror(e)}")
                at += n
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _mmap_fn().munmap(self.ptr, self.size)


def map_pieces(ipc_mode: str, parts: Sequence[tuple[int, Piece]], device_uuid: str = "") -> Any:
    """Maps a tensor's pieces, (descriptor, piece) each in order, into one
    range; the result has ptr (the tensor's first byte), size and close().
    Host memory maps the pieces' parts; a GPU maps allocations whole, so on
    vmm the agent cuts pieces that abut once their segments are mapped
    whole side by side (the first runs to its segment's end, the middle
    ones are whole segments, the last starts its segment), and that is
    checked here. Legacy tensors never lie in pieces: an IPC handle opens
    its allocation wherever the driver puts it."""
    if ipc_mode == "host":
        return HostPieces([(fd, p.offset, p.size) for fd, p in parts])
    if ipc_mode == "vmm":
        last = len(parts) - 1
        for i, (_, p) in enumerate(parts):
            if (i > 0 and p.offset != 0) or (i < last and p.offset + p.size != p.segment_size):
                raise FailedPrecondition(
                    f"piece {i} ({p.size} bytes at offset {p.offset} of segment {p.segment_id}, {p.segment_size} bytes) "
                    "does not abut its neighbours when segments are mapped whole")
        from . import _cuda

        return _cuda.import_pieces([(fd, p.segment_size) for fd, p in parts], parts[0][1].offset,
                                   _cuda.ordinal_of(device_uuid))
    raise FailedPrecondition(f"a tensor in pieces in {ipc_mode!r} memory: only host and vmm tensors lie in pieces")
