"""memcuda: named, zero-copy shared tensors through the mem-cuda node agent.

    import memcuda
    client = memcuda.connect()
    t = client.create("weights", (4096, 4096), "bf16")   # or client.get("weights")
    w = t.torch()                                       # zero-copy torch.Tensor
    t.release()                                         # or use `with`
"""
from ._client import DEFAULT_SOCKET, Client, connect, shared_client, socket_path
from ._errors import (
    AlreadyExists,
    DeadlineExceeded,
    Disconnected,
    FailedPrecondition,
    InvalidArgument,
    MemcudaError,
    NotFound,
    OutOfMemory,
    PermissionDenied,
    ProtocolError,
    Unavailable,
    Unimplemented,
)
from ._record import TensorInfo
from ._redis import RedisTensor, open_from_redis
from ._tensor import SharedTensor
from ._version import __version__
from ._views import TensorViews
from ._weights import load_state_dict, module_from_store, publish_state_dict

__all__ = [
    "DEFAULT_SOCKET", "Client", "SharedTensor", "TensorInfo", "TensorViews", "__version__", "connect", "shared_client",
    "socket_path",
    "AlreadyExists", "DeadlineExceeded", "Disconnected", "FailedPrecondition", "InvalidArgument", "MemcudaError", "NotFound",
    "OutOfMemory", "PermissionDenied", "ProtocolError", "Unavailable", "Unimplemented", "RedisTensor",
    "open_from_redis", "load_state_dict", "module_from_store", "publish_state_dict",
]
