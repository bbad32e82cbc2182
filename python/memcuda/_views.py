"""Zero-copy views of a mapped tensor: NumPy, PyTorch, CuPy and the array
protocols. Shared by SharedTensor (socket) and RedisTensor (Redis only)."""
from __future__ import annotations

import ctypes
from typing import Any, Optional

from . import _dlpack, _dtypes
from ._errors import FailedPrecondition
from ._record import TensorInfo

__all__ = ["TensorViews"]


class TensorViews:
    """The views of a tensor mapped in this process. Subclasses set info,
    _released, _seg_ptr (the segment's address here) and _ordinal (the
    CUDA ordinal of its GPU here, -1 for host tensors)."""

    info: TensorInfo
    _released: bool
    _seg_ptr: int
    _ordinal: int

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def shape(self) -> tuple[int, ...]:
        return self.info.shape

    @property
    def dtype(self) -> str:
        return self.info.dtype

    def _check(self) -> None:
        if self._released:
            raise FailedPrecondition(f"tensor {self.name!r} was released")

    @property
    def is_cuda(self) -> bool:
        return self.info.ipc_mode != "host"

    @property
    def device_index(self) -> int:
        """The CUDA ordinal of the tensor's GPU in this process (its UUID resolved
        under this process's CUDA_VISIBLE_DEVICES)."""
        if not self.is_cuda:
            raise TypeError("host tensor")
        return self._ordinal

    @property
    def data_ptr(self) -> int:
        """Address of the tensor's first byte in this process."""
        self._check()
        return self._seg_ptr + self.info.offset

    def _host_array(self) -> Any:
        """A NumPy array of the raw elements (unsigned ints for bf16/fp8) whose
        base keeps this reference alive."""
        import numpy as np

        self._check()
        if self.is_cuda:
            raise TypeError(f"tensor {self.name!r} lives on the GPU: use .torch() or .cupy()")
        typestr = _dtypes.TYPESTR.get(self.dtype) or {2: "<u2", 1: "|u1"}[_dtypes.ITEMSIZE[self.dtype]]
        return np.asarray(_HostArray(self, typestr))

    def numpy(self, view: Any = None) -> Any:
        """A NumPy array over the shared host memory (host backend only). It
        keeps the reference alive while it exists. `view` reinterprets the
        bytes as another dtype (flat)."""
        import numpy as np

        arr = self._host_array()
        if view is not None:
            return arr.reshape(-1).view(np.uint8).view(view)
        if self.dtype not in _dtypes.TYPESTR:
            return arr.view(_dtypes.numpy_dtype(self.dtype))
        return arr

    def torch(self) -> Any:
        """A torch.Tensor over the same memory (CPU for host, CUDA otherwise)."""
        import torch

        self._check()
        return torch.from_dlpack(self)

    def cupy(self) -> Any:
        import cupy

        self._check()
        if not self.is_cuda:
            raise TypeError(f"tensor {self.name!r} is a host tensor: use .numpy()")
        return cupy.from_dlpack(self)

    # -- the array protocols -------------------------------------------------

    @property
    def __array_interface__(self) -> dict[str, Any]:
        """NumPy's array interface, for host tensors of NumPy's own dtypes
        (np.asarray(t) is a zero-copy view that keeps t alive). bf16 and fp8
        have none: np.asarray then goes through __array__ (ml_dtypes)."""
        if self.is_cuda or self.dtype not in _dtypes.TYPESTR:
            raise AttributeError("__array_interface__: " + (
                f"tensor {self.name!r} lives on the GPU" if self.is_cuda else f"NumPy has no typestr for {self.dtype}"))
        return {"shape": self.shape, "typestr": _dtypes.TYPESTR[self.dtype], "data": (self.data_ptr, False), "version": 3}

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> Any:
        """np.asarray(t) / np.array(t): a zero-copy view of a host tensor
        unless a copy is asked for (copy=True) or needed (another dtype;
        copy=False then raises ValueError). GPU tensors raise TypeError:
        copy them with .torch().cpu() or np.from_dlpack(t, device="cpu", copy=True)."""
        import numpy as np

        if self.is_cuda:
            raise TypeError(f"tensor {self.name!r} lives on the GPU: NumPy cannot view it "
                            "(use .torch(), .cupy(), or np.from_dlpack(t, device='cpu', copy=True) for a host copy)")
        arr = self.numpy()
        if dtype is not None and np.dtype(dtype) != arr.dtype:
            if copy is False:
                raise ValueError(f"a {np.dtype(dtype)} array of the {self.dtype} tensor {self.name!r} needs a copy")
            return arr.astype(dtype)
        return arr.copy() if copy else arr

    def __dlpack_device__(self) -> tuple[int, int]:
        if self.is_cuda:
            return (_dlpack.KDL_CUDA, self.device_index)
        return (_dlpack.KDL_CPU, 0)

    def __dlpack__(self, *, stream: Any = None, max_version: Optional[tuple[int, int]] = None,
                   dl_device: Optional[tuple[int, int]] = None, copy: Optional[bool] = None) -> Any:
        """A DLPack capsule over the tensor (zero-copy unless copy=True or
        dl_device asks for the host), versioned when the consumer's
        max_version allows. For GPU tensors, `stream` is the consumer's: it
        is made to wait for the event the writer published, if any
        (-1: no ordering). The capsule keeps this reference alive."""
        self._check()
        here = self.__dlpack_device__()
        versioned = max_version is not None and tuple(max_version)[0] >= 1
        want = here if dl_device is None else (int(dl_device[0]), int(dl_device[1]))
        to_host = want != here
        if to_host and (want != (_dlpack.KDL_CPU, 0) or not self.is_cuda):
            raise BufferError(f"tensor {self.name!r} is on device {here}: it can be exported there, or copied to the host (1, 0), not to {want}")
        if to_host and copy is False:
            raise BufferError(f"tensor {self.name!r} is on the GPU: a host export needs copy=True")
        if not self.is_cuda:
            if copy:
                buf = ctypes.create_string_buffer(max(self.info.bytes, 1))
                ctypes.memmove(buf, self.data_ptr, self.info.bytes)
                return _dlpack.capsule(ctypes.addressof(buf), self.shape, self.dtype, here, buf, versioned, copied=True)
            return _dlpack.capsule(self.data_ptr, self.shape, self.dtype, here, self, versioned)
        from . import _cuda

        s = 1 if stream is None else int(stream)  # None: the legacy default stream (CU_STREAM_LEGACY)
        if s != -1 and self.info.event:
            _cuda.stream_wait(self.device_index, self.info.event, s)
        if s == -1:
            s = 1
        if to_host:
            hbuf = _cuda.host_copy(self.device_index, self.data_ptr, self.info.bytes, s)
            return _dlpack.capsule(ctypes.addressof(hbuf), self.shape, self.dtype, (_dlpack.KDL_CPU, 0), hbuf, versioned,
                                   copied=True)
        if copy:
            ordinal = self.device_index
            dptr = _cuda.device_copy(ordinal, self.data_ptr, self.info.bytes, s)
            return _dlpack.capsule(dptr, self.shape, self.dtype, here, None, versioned, copied=True,
                                   on_free=lambda: _cuda.free_device(ordinal, dptr))
        return _dlpack.capsule(self.data_ptr, self.shape, self.dtype, here, self, versioned)

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        """CUDA's array interface, for GPU tensors of the dtypes it has
        typestrs for (not bf16 or fp8: those go through DLPack)."""
        if not self.is_cuda:
            raise AttributeError(f"__cuda_array_interface__: tensor {self.name!r} is a host tensor")
        if self.dtype not in _dtypes.TYPESTR:
            raise AttributeError(f"__cuda_array_interface__ has no typestr for {self.dtype}: use DLPack (.torch(), torch.from_dlpack(t))")
        self._check()
        return {"shape": self.shape, "typestr": _dtypes.TYPESTR[self.dtype], "data": (self.data_ptr, False),
                "version": 3, "strides": None, "stream": None}


class _HostArray:
    """Hands NumPy the tensor's memory and keeps the tensor alive for as
    long as any array made from it."""

    def __init__(self, t: TensorViews, typestr: str) -> None:
        self.t = t
        self.__array_interface__ = {"shape": t.shape, "typestr": typestr, "data": (t.data_ptr, False), "version": 3}
