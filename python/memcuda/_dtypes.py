"""Element types: the agent's canonical names and their framework twins."""
from __future__ import annotations

from typing import Any

__all__ = ["DLPACK", "ITEMSIZE", "TYPESTR", "canonical", "numpy_dtype", "torch_dtype"]

ITEMSIZE: dict[str, int] = {
    "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "i8": 1, "i16": 2, "i32": 4, "i64": 8,
    "u8": 1, "bool": 1, "f8e4m3": 1, "f8e5m2": 1,
}

# typestr for __cuda_array_interface__ / __array_interface__ (little endian).
# bf16 and fp8 have none in NumPy's protocol: those export through DLPack.
TYPESTR: dict[str, str] = {
    "f16": "<f2", "f32": "<f4", "f64": "<f8", "i8": "|i1", "i16": "<i2", "i32": "<i4",
    "i64": "<i8", "u8": "|u1", "bool": "|b1",
}

_TORCH = {
    "f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64", "i8": "int8",
    "i16": "int16", "i32": "int32", "i64": "int64", "u8": "uint8", "bool": "bool",
    "f8e4m3": "float8_e4m3fn", "f8e5m2": "float8_e5m2",
}

# DLPack (kDLInt=0, kDLUInt=1, kDLFloat=2, kDLBfloat=4, kDLBool=6, kDLFloat8_e4m3fn=10, kDLFloat8_e5m2=12)
DLPACK: dict[str, tuple[int, int]] = {
    "f16": (2, 16), "bf16": (4, 16), "f32": (2, 32), "f64": (2, 64), "i8": (0, 8), "i16": (0, 16),
    "i32": (0, 32), "i64": (0, 64), "u8": (1, 8), "bool": (6, 8), "f8e4m3": (10, 8), "f8e5m2": (12, 8),
}


def canonical(dtype: Any) -> str:
    """Accepts a string alias, a torch.dtype or a NumPy/CuPy dtype; returns
    the agent's canonical name (validation of strings is the agent's)."""
    if isinstance(dtype, str):
        return dtype
    name = str(dtype)
    if name.startswith("torch."):
        return name
    try:
        import numpy as np

        return str(np.dtype(dtype).name)
    except Exception:
        return name


def torch_dtype(dt: str) -> Any:
    import torch

    return getattr(torch, _TORCH[dt])


def numpy_dtype(dt: str) -> Any:
    import numpy as np

    if dt in TYPESTR:
        return np.dtype(TYPESTR[dt])
    try:  # bf16 / fp8 through ml_dtypes when installed
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, {"bf16": "bfloat16", "f8e4m3": "float8_e4m3fn", "f8e5m2": "float8_e5m2"}[dt]))
    except ImportError:
        raise TypeError(f"NumPy has no {dt} dtype: install ml_dtypes, or use .torch() or .numpy(view=...)") from None
