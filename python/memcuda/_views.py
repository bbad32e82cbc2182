"""Zero-copy views of a mapped tensor: NumPy, PyTorch, CuPy and the array
protocols. Shared by SharedTensor (socket) and RedisTensor (Redis only)."""
from __future__ import annotations

from typing import Any

from . import _dtypes
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
        if not self.is_cuda:
            t = torch.from_numpy(self._host_array())
            return t.view(_dtypes.torch_dtype(self.dtype)) if self.dtype not in _dtypes.TYPESTR else t
        return torch.from_dlpack(_DLPackExporter(self))

    def cupy(self) -> Any:
        import cupy

        self._check()
        if not self.is_cuda:
            raise TypeError(f"tensor {self.name!r} is a host tensor: use .numpy()")
        return cupy.from_dlpack(_DLPackExporter(self))

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        self._check()
        if not self.is_cuda:
            raise AttributeError("host tensor")
        if self.dtype not in _dtypes.TYPESTR:
            raise TypeError(f"{self.dtype} has no __cuda_array_interface__ typestr; use .torch() (DLPack)")
        return {"shape": self.shape, "typestr": _dtypes.TYPESTR[self.dtype], "data": (self.data_ptr, False),
                "version": 3, "strides": None, "stream": None}


class _HostArray:
    """Hands NumPy the tensor's memory and keeps the tensor alive for as
    long as any array made from it."""

    def __init__(self, t: TensorViews, typestr: str) -> None:
        self.t = t
        self.__array_interface__ = {"shape": t.shape, "typestr": typestr, "data": (t.data_ptr, False), "version": 3}


class _DLPackExporter:
    """Exports a GPU tensor through DLPack (bf16 and fp8 included)."""

    def __init__(self, t: TensorViews) -> None:
        self.t = t

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, self.t.device_index)  # kDLCUDA

    def __dlpack__(self, stream: Any = None, **kw: Any) -> Any:
        from . import _dlpack

        # The memory is shared across processes: callers synchronise explicitly
        # (or through an IPC event), so no stream ordering is implied here.
        return _dlpack.capsule(self.t.data_ptr, self.t.shape, self.t.dtype, self.t.device_index, owner=self.t)
