"""A DLPack producer (ctypes): capsules over memory the caller keeps alive,
in the versioned form (DLPack 1.x, "dltensor_versioned") for consumers that
ask for it and the unversioned one for older consumers. bf16 and fp8 travel
here, which __cuda_array_interface__ and NumPy's protocols cannot carry."""
from __future__ import annotations

import ctypes
from typing import Any, Callable, Optional, Sequence

from . import _dtypes

__all__ = ["KDL_CPU", "KDL_CUDA", "VERSION", "capsule"]

KDL_CPU = 1
KDL_CUDA = 2
VERSION = (1, 1)  # the DLPack version this producer writes
_FLAG_IS_COPIED = 1 << 1


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int), ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    pass


class _DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLManagedTensorVersioned(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DELETER_VERSIONED = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensorVersioned))
_DLManagedTensor._fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]
_DLManagedTensorVersioned._fields_ = [
    ("version", _DLPackVersion), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER_VERSIONED),
    ("flags", ctypes.c_uint64), ("dl_tensor", _DLTensor),
]

# Each exported tensor's structures, owner and release hook, by the address
# of its managed struct, until the consumer calls the deleter (or the
# capsule dies unconsumed).
_live: dict[int, tuple[Any, Any, Any, Optional[Callable[[], None]]]] = {}


def _forget(addr: int) -> None:
    entry = _live.pop(addr, None)
    if entry is not None and entry[3] is not None:
        entry[3]()


@_DELETER  # type: ignore[untyped-decorator]
def _deleter(p: Any) -> None:
    _forget(ctypes.addressof(p.contents))


@_DELETER_VERSIONED  # type: ignore[untyped-decorator]
def _deleter_versioned(p: Any) -> None:
    _forget(ctypes.addressof(p.contents))


_PyCapsule_New = ctypes.pythonapi.PyCapsule_New
_PyCapsule_New.restype = ctypes.py_object
_PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
# The destructor gets the dying capsule as a raw pointer: as a py_object
# ctypes would take a new reference to an object being freed.
_PyCapsule_IsValid = ctypes.pythonapi.PyCapsule_IsValid
_PyCapsule_IsValid.restype = ctypes.c_int
_PyCapsule_IsValid.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_PyCapsule_GetPointer = ctypes.pythonapi.PyCapsule_GetPointer
_PyCapsule_GetPointer.restype = ctypes.c_void_p
_PyCapsule_GetPointer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]

_NAME = b"dltensor"
_NAME_VERSIONED = b"dltensor_versioned"
_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _destroy(cap: Any, name: bytes) -> None:
    # A capsule nobody consumed still owns its tensor (a consumer renames it
    # to used_...): free it as the consumer would have.
    if _PyCapsule_IsValid(cap, name):
        addr = _PyCapsule_GetPointer(cap, name)
        if addr:
            _forget(int(addr))


_destroy_unversioned = _DESTRUCTOR(lambda cap: _destroy(cap, _NAME))
_destroy_versioned = _DESTRUCTOR(lambda cap: _destroy(cap, _NAME_VERSIONED))


def capsule(ptr: int, shape: Sequence[int], dtype: str, device: tuple[int, int], owner: Any,
            versioned: bool, copied: bool = False, on_free: Optional[Callable[[], None]] = None) -> Any:
    """A DLPack capsule over ptr (compact, row-major). owner stays alive
    until the consumer is done; on_free runs then (it frees a copy)."""
    code, bits = _dtypes.DLPACK[dtype]
    ndim = len(shape)
    shape_arr = (ctypes.c_int64 * max(ndim, 1))(*shape)
    m: Any = _DLManagedTensorVersioned() if versioned else _DLManagedTensor()
    t = m.dl_tensor
    t.data = ptr
    t.device = _DLDevice(*device)
    t.ndim = ndim
    t.dtype = _DLDataType(code, bits, 1)
    t.shape = ctypes.cast(shape_arr, ctypes.POINTER(ctypes.c_int64))
    t.strides = None  # compact, row-major
    t.byte_offset = 0
    m.manager_ctx = None
    if versioned:
        m.version = _DLPackVersion(*VERSION)
        m.flags = _FLAG_IS_COPIED if copied else 0
        m.deleter = _deleter_versioned
    else:
        m.deleter = _deleter
    _live[ctypes.addressof(m)] = (m, shape_arr, owner, on_free)
    if versioned:
        return _PyCapsule_New(ctypes.addressof(m), _NAME_VERSIONED, ctypes.cast(_destroy_versioned, ctypes.c_void_p))
    return _PyCapsule_New(ctypes.addressof(m), _NAME, ctypes.cast(_destroy_unversioned, ctypes.c_void_p))
