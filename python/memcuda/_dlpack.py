"""A minimal DLPack producer (ctypes): a capsule over GPU memory the caller
keeps alive. Needed because __cuda_array_interface__ has no bf16 or fp8."""
from __future__ import annotations

import ctypes
from typing import Any, Sequence

from . import _dtypes

__all__ = ["capsule"]


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


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DLManagedTensor._fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]

# Keeps each exported tensor's structures and owner alive until the consumer
# calls the deleter.
_live: dict[int, Any] = {}


@_DELETER  # type: ignore[untyped-decorator]
def _deleter(p: Any) -> None:
    _live.pop(ctypes.addressof(p.contents), None)


_PyCapsule_New = ctypes.pythonapi.PyCapsule_New
_PyCapsule_New.restype = ctypes.py_object
_PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]

_KDL_CUDA = 2


def capsule(ptr: int, shape: Sequence[int], dtype: str, device_id: int, owner: Any) -> Any:
    code, bits = _dtypes.DLPACK[dtype]
    ndim = len(shape)
    shape_arr = (ctypes.c_int64 * max(ndim, 1))(*shape)
    m = _DLManagedTensor()
    m.dl_tensor.data = ptr
    m.dl_tensor.device = _DLDevice(_KDL_CUDA, device_id)
    m.dl_tensor.ndim = ndim
    m.dl_tensor.dtype = _DLDataType(code, bits, 1)
    m.dl_tensor.shape = ctypes.cast(shape_arr, ctypes.POINTER(ctypes.c_int64))
    m.dl_tensor.strides = None  # compact, row-major
    m.dl_tensor.byte_offset = 0
    m.manager_ctx = None
    m.deleter = _deleter
    _live[ctypes.addressof(m)] = (m, shape_arr, owner)
    return _PyCapsule_New(ctypes.addressof(m), b"dltensor", None)
