"""The CUDA driver calls the client needs, through ctypes on libcuda.so.1
(no toolkit needed): import a VMM segment from a file descriptor, or open a
legacy CUipcMemHandle, in the device's primary context. A mapping's
calls run in C where the optional module was built (_speedups.vmm_map,
ipc_open)."""
from __future__ import annotations

import base64
import ctypes
import sys
import threading
from typing import Any, Callable, Optional, Sequence

from ._errors import FailedPrecondition, MemcudaError
from ._wire import speedup

__all__ = [
    "CudaError", "Mapping", "current_stream", "device_copy", "format_uuid", "free_device", "host_copy", "import_segment",
    "open_legacy", "ordinal_of", "process_event", "record", "record_always", "stream_wait",
]

CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 1
CU_MEM_LOCATION_TYPE_DEVICE = 1
CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 3
CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 1

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_ctx: dict[int, ctypes.c_void_p] = {}
_uuids: Optional[dict[str, int]] = None

# A VMM mapping's driver calls in C, on ranges from an arena reserved ahead
# (_speedups.vmm_map and vmm_unmap), or None: module state, not constants:
# tests and benchmarks compare both paths.
c_vmm_map: "Optional[Callable[[int, int, Sequence[tuple[int, int]]], tuple[int, int, str]]]" = speedup("vmm_map")
c_vmm_unmap: "Optional[Callable[[int, int, Sequence[int]], tuple[int, str]]]" = speedup("vmm_unmap")
# A legacy handle's open and close in C (_speedups.ipc_open and ipc_close), or None.
c_ipc_open: "Optional[Callable[[int, bytes], tuple[int, int, str]]]" = speedup("ipc_open")
c_ipc_close: "Optional[Callable[[int, int], tuple[int, str]]]" = speedup("ipc_close")


class CudaError(MemcudaError):
    code = "internal"


class _MemLocation(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class _MemAccessDesc(ctypes.Structure):
    _fields_ = [("location", _MemLocation), ("flags", ctypes.c_int)]


class _IpcMemHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * 64)]


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            raise FailedPrecondition(f"this tensor lives on a GPU but libcuda.so.1 cannot be loaded: {e}") from e
        _lib = lib
        _check("cuInit", _fn("cuInit")(0))
    return _lib


_fns: dict[str, Any] = {}


def _fn(name: str) -> Any:
    # Looked up once: a miss on the _v2 name is a failed dlsym and an
    # exception each time, a few microseconds per driver call.
    f = _fns.get(name)
    if f is not None:
        return f
    lib = _lib if _lib is not None else _load()
    for cand in (name + "_v2", name):
        f = getattr(lib, cand, None)
        if f is not None:
            _fns[name] = f
            return f
    raise CudaError(f"the driver has no {name}")


def _check(what: str, rc: int) -> None:
    if rc == 0:
        return
    lib = _lib
    msg = ctypes.c_char_p()
    name = ctypes.c_char_p()
    if lib is not None:
        lib.cuGetErrorName(rc, ctypes.byref(name))
        lib.cuGetErrorString(rc, ctypes.byref(msg))
    n = name.value.decode() if name.value else f"CUresult {rc}"
    m = msg.value.decode() if msg.value else ""
    raise CudaError(f"{what}: {n}: {m}")


def format_uuid(raw: bytes) -> str:
    h = raw.hex()
    return f"GPU-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def ordinal_of(uuid: str) -> int:
    """The CUDA ordinal, in this process, of the GPU with this UUID."""
    global _uuids
    known = _uuids  # filled once; read without the lock afterwards
    if known is not None and uuid in known:
        return known[uuid]
    with _lock:
        if _uuids is None:
            _load()
            n = ctypes.c_int()
            _check("cuDeviceGetCount", _fn("cuDeviceGetCount")(ctypes.byref(n)))
            found: dict[str, int] = {}
            for i in range(n.value):
                dev = ctypes.c_int()
                _check("cuDeviceGet", _fn("cuDeviceGet")(ctypes.byref(dev), i))
                raw = (ctypes.c_char * 16)()
                _check("cuDeviceGetUuid", _fn("cuDeviceGetUuid")(raw, dev))
                found[format_uuid(bytes(raw))] = i
            _uuids = found
    try:
        return _uuids[uuid.lower()] if uuid.lower() in _uuids else _uuids[uuid]
    except KeyError:
        raise FailedPrecondition(f"GPU {uuid} is not visible in this process (check CUDA_VISIBLE_DEVICES)") from None


def _primary(ordinal: int) -> ctypes.c_void_p:
    """The device's primary context, retained once per device."""
    ctx = _ctx.get(ordinal)  # set once per device, under the lock
    if ctx is not None:
        return ctx
    with _lock:
        ctx = _ctx.get(ordinal)
        if ctx is None:
            dev = ctypes.c_int()
            _check("cuDeviceGet", _fn("cuDeviceGet")(ctypes.byref(dev), ordinal))
            ctx = ctypes.c_void_p()
            _check("cuDevicePrimaryCtxRetain", _fn("cuDevicePrimaryCtxRetain")(ctypes.byref(ctx), dev))
            _ctx[ordinal] = ctx
    return ctx


class _Current:
    """Makes the device's primary context current for a block (the one the
    CUDA runtime, PyTorch and CuPy use)."""

    def __init__(self, ordinal: int) -> None:
        self.ordinal = ordinal

    def __enter__(self) -> None:
        self.pushed = False
        ctx = _primary(self.ordinal)
        cur = ctypes.c_void_p()
        _fn("cuCtxGetCurrent")(ctypes.byref(cur))
        if cur.value == ctx.value:
            return  # PyTorch or CuPy already made it current on this thread
        _check("cuCtxPushCurrent", _fn("cuCtxPushCurrent")(ctx))
        self.pushed = True

    def __exit__(self, *exc: Any) -> None:
        if self.pushed:
            popped = ctypes.c_void_p()
            _fn("cuCtxPopCurrent")(ctypes.byref(popped))


class Mapping:
    """A segment mapped into this process's address space. A tensor in
    pieces maps several vmm segments whole, one after another, from base
    (parts: their sizes); ptr is then the tensor's first byte."""

    def __init__(self, ptr: int, size: int, ordinal: int, legacy: bool, base: int = 0,
                 parts: Optional[Sequence[int]] = None, unmap: Optional[Callable[..., tuple[int, str]]] = None) -> None:
        self.ptr = ptr
        self.size = size
        self.ordinal = ordinal
        self.legacy = legacy
        self.base = base or ptr
        self.parts = list(parts) if parts else [size]
        self.closed = False
        # The C module's close (c_vmm_unmap, c_ipc_close) for a mapping it
        # made: a VMM range may be the arena's, which only it can take back.
        self._unmap = unmap

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._unmap is not None:
            ctx = _primary(self.ordinal).value or 0
            rc, what = self._unmap(ctx, self.ptr) if self.legacy else self._unmap(ctx, self.base, self.parts)
            _check(what, rc)
            return
        with _Current(self.ordinal):
            if self.legacy:
                _check("cuIpcCloseMemHandle", _fn("cuIpcCloseMemHandle")(ctypes.c_uint64(self.ptr)))
            else:
                _unmap_all(self.base, self.parts)
                _check("cuMemAddressFree", _fn("cuMemAddressFree")(ctypes.c_uint64(self.base), ctypes.c_size_t(self.size)))


def _unmap_all(base: int, sizes: Sequence[int]) -> None:
    at = base
    for n in sizes:
        _check("cuMemUnmap", _fn("cuMemUnmap")(ctypes.c_uint64(at), ctypes.c_size_t(n)))
        at += n


_SIZE0 = ctypes.c_size_t(0)
_SIZE1 = ctypes.c_size_t(1)
_ZERO = ctypes.c_uint64(0)
_access_descs: dict[int, _MemAccessDesc] = {}


def _access(ordinal: int) -> _MemAccessDesc:
    """Read-write access for the device: the same descriptor every time."""
    d = _access_descs.get(ordinal)
    if d is None:
        d = _access_descs[ordinal] = _MemAccessDesc(_MemLocation(CU_MEM_LOCATION_TYPE_DEVICE, ordinal),
                                                    CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
    return d


def _map_whole(fd: int, at: int, size: int, ordinal: int) -> None:
    """Maps the whole VMM allocation behind fd at address at (reserved by the
    caller, the device's context current) with read-write access; on failure
    nothing stays mapped there."""
    handle = ctypes.c_uint64()
    _check("cuMemImportFromShareableHandle", _fn("cuMemImportFromShareableHandle")(
        ctypes.byref(handle), ctypes.c_void_p(fd), CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR))
    addr, csize = ctypes.c_uint64(at), ctypes.c_size_t(size)
    try:
        _check("cuMemMap", _fn("cuMemMap")(addr, csize, _SIZE0, handle, _ZERO))
    finally:
        _fn("cuMemRelease")(handle)  # the mapping holds the physical memory
    rc = _fn("cuMemSetAccess")(addr, csize, ctypes.byref(_access(ordinal)), _SIZE1)
    if rc != 0:
        _fn("cuMemUnmap")(addr, csize)
        _check("cuMemSetAccess", rc)


def import_segment(fd: int, info: Any) -> Mapping:
    """Maps a segment the agent sent: a VMM fd, or (legacy) the IPC handle of
    the record."""
    ordinal = ordinal_of(info.device_uuid)
    if info.ipc_mode == "legacy":
        return open_legacy(info.ipc_handle, info.segment_size, ordinal)
    if info.ipc_mode != "vmm":
        raise FailedPrecondition(f"unknown ipc_mode {info.ipc_mode!r}")
    return import_pieces([(fd, int(info.segment_size))], 0, ordinal)


def import_pieces(segments: Sequence[tuple[int, int]], offset: int, ordinal: int) -> Mapping:
    """Maps whole VMM segments, (descriptor, size) each, one after another
    into one new range (cuMemMap maps an allocation whole, so a tensor in
    pieces is its segments side by side); the tensor starts offset bytes
    into the first. One segment is a plain segment's mapping."""
    total = sum(n for _, n in segments)
    vmm_map, vmm_unmap = c_vmm_map, c_vmm_unmap
    if vmm_map is not None and vmm_unmap is not None:
        at, rc, what = vmm_map(_primary(ordinal).value or 0, ordinal, segments)
        _check(what, rc)
        return Mapping(at + offset, total, ordinal, legacy=False, base=at, parts=[n for _, n in segments], unmap=vmm_unmap)
    base = ctypes.c_uint64()
    mapped: list[int] = []
    with _Current(ordinal):
        _check("cuMemAddressReserve", _fn("cuMemAddressReserve")(ctypes.byref(base), ctypes.c_size_t(total), _SIZE0, _ZERO, _ZERO))
        try:
            at = base.value
            for fd, n in segments:
                _map_whole(fd, at, n, ordinal)
                mapped.append(n)
                at += n
        except BaseException:
            try:
                _unmap_all(base.value, mapped)
            finally:
                _fn("cuMemAddressFree")(base, ctypes.c_size_t(total))
            raise
    return Mapping(base.value + offset, total, ordinal, legacy=False, base=base.value, parts=[n for _, n in segments])


def open_legacy(handle_b64: str, size: int, ordinal: int) -> Mapping:
    raw = base64.b64decode(handle_b64)
    if len(raw) != 64:
        raise FailedPrecondition(f"legacy ipc_handle decodes to {len(raw)} bytes, want 64")
    ipc_open, ipc_close = c_ipc_open, c_ipc_close
    if ipc_open is not None and ipc_close is not None:
        at, rc, what = ipc_open(_primary(ordinal).value or 0, raw)
        _check(what, rc)
        return Mapping(at, int(size), ordinal, legacy=True, unmap=ipc_close)
    h = _IpcMemHandle()
    ctypes.memmove(ctypes.byref(h), raw, 64)
    ptr = ctypes.c_uint64()
    with _Current(ordinal):
        _check("cuIpcOpenMemHandle", _fn("cuIpcOpenMemHandle")(ctypes.byref(ptr), h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS))
    return Mapping(ptr.value, int(size), ordinal, legacy=True)


CU_EVENT_DISABLE_TIMING = 2
CU_EVENT_INTERPROCESS = 4
_events: dict[tuple[int, int], tuple[ctypes.c_void_p, str]] = {}
_opened: dict[str, ctypes.c_void_p] = {}


class _IpcEventHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * 64)]


def current_stream(ordinal: int) -> int:
    """PyTorch's current stream on the device when PyTorch is in use, else the legacy default stream."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return int(torch.cuda.current_stream(ordinal).cuda_stream)
    return 0


def process_event(ordinal: int, stream: int) -> tuple[ctypes.c_void_p, str]:
    """This process's interprocess event for a stream of the device and its
    base64 handle. One per stream: re-recording an event forgets its earlier
    record, which is right only for later work on the same stream."""
    with _lock:
        hit = _events.get((ordinal, stream))
    if hit is not None:
        return hit
    with _Current(ordinal):
        ev = ctypes.c_void_p()
        _check("cuEventCreate", _fn("cuEventCreate")(ctypes.byref(ev), CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS))
        h = _IpcEventHandle()
        _check("cuIpcGetEventHandle", _fn("cuIpcGetEventHandle")(ctypes.byref(h), ev))
    out = (ev, base64.b64encode(bytes(h)).decode())
    with _lock:
        _events[(ordinal, stream)] = out
        # The driver refuses to open a handle in the process that made it:
        # a wait on this process's own published event uses the event itself.
        _opened[out[1]] = ev
    return out


CUDA_ERROR_NOT_READY = 600


def record(ordinal: int, stream: int) -> str:
    """Records this process's event for stream on it and returns the handle;
    '' when the stream has no unfinished work (nothing to wait for)."""
    with _Current(ordinal):
        rc = _fn("cuStreamQuery")(ctypes.c_void_p(stream))
        if rc == 0:
            return ""
        if rc != CUDA_ERROR_NOT_READY:
            _check("cuStreamQuery", rc)
    return record_always(ordinal, stream)


def stream_wait(ordinal: int, b64: str, stream: int) -> None:
    """Makes stream wait for another process's recorded event."""
    with _lock:
        ev = _opened.get(b64)
    with _Current(ordinal):
        if ev is None:
            raw = base64.b64decode(b64)
            h = _IpcEventHandle()
            ctypes.memmove(ctypes.byref(h), raw, 64)
            ev = ctypes.c_void_p()
            _check("cuIpcOpenEventHandle", _fn("cuIpcOpenEventHandle")(ctypes.byref(ev), h))
            with _lock:
                _opened[b64] = ev
        _check("cuStreamWaitEvent", _fn("cuStreamWaitEvent")(ctypes.c_void_p(stream), ev, 0))


def record_always(ordinal: int, stream: int) -> str:
    """Records this process's event for stream on it, idle or not."""
    ev, b64 = process_event(ordinal, stream)
    with _Current(ordinal):
        _check("cuEventRecord", _fn("cuEventRecord")(ev, ctypes.c_void_p(stream)))
    return b64


def device_copy(ordinal: int, src: int, nbytes: int, stream: int) -> int:
    """A new device allocation holding nbytes from src, copied on stream
    (queued, not waited for). Free it with free_device."""
    with _Current(ordinal):
        dst = ctypes.c_uint64()
        _check("cuMemAlloc", _fn("cuMemAlloc")(ctypes.byref(dst), ctypes.c_size_t(max(nbytes, 1))))
        rc = _fn("cuMemcpyAsync")(dst, ctypes.c_uint64(src), ctypes.c_size_t(nbytes), ctypes.c_void_p(stream))
        if rc != 0:
            _fn("cuMemFree")(dst)
            _check("cuMemcpyAsync", rc)
    return int(dst.value)


def free_device(ordinal: int, ptr: int) -> None:
    with _Current(ordinal):
        _check("cuMemFree", _fn("cuMemFree")(ctypes.c_uint64(ptr)))


def host_copy(ordinal: int, src: int, nbytes: int, stream: int) -> Any:
    """nbytes from src in a new host buffer, once stream's work so far is done."""
    buf = ctypes.create_string_buffer(max(nbytes, 1))
    with _Current(ordinal):
        _check("cuStreamSynchronize", _fn("cuStreamSynchronize")(ctypes.c_void_p(stream)))
        _check("cuMemcpyDtoH", _fn("cuMemcpyDtoH")(buf, ctypes.c_uint64(src), ctypes.c_size_t(nbytes)))
    return buf
