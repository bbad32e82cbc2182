"""memcuda: named, zero-copy shared tensors through the mem-cuda node agent.

    import memcuda
    store = memcuda.connect()
    t = store.create("weights", (4096, 4096), "bf16")   # or store.get("weights")
    w = t.torch()                                      # zero-copy torch.Tensor
    t.release()                                        # or use `with`
"""
from ._client import DEFAULT_SOCKET, SharedTensor, Store, TensorInfo, __version__, connect, socket_path
from ._errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MemcudaError,
    NotFound,
    OutOfMemory,
    PermissionDenied,
    ProtocolError,
    Unavailable,
)
from ._redis import RedisTensor, open_from_redis

__all__ = [
    "DEFAULT_SOCKET", "SharedTensor", "Store", "TensorInfo", "__version__", "connect", "socket_path",
    "AlreadyExists", "FailedPrecondition", "InvalidArgument", "MemcudaError", "NotFound", "OutOfMemory",
    "PermissionDenied", "ProtocolError", "Unavailable", "RedisTensor", "open_from_redis",
]
