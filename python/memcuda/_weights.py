"""Model weights in one call: publish a state dict under a name prefix, load
it back as zero-copy tensors, build a torch.nn.Module on them."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

from ._errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from ._client import Client
    from ._tensor import SharedTensor

__all__ = ["load_state_dict", "module_from_store", "publish_state_dict"]


def _client(client: Optional["Client"]) -> "Client":
    if client is not None:
        return client
    from ._client import shared_client

    return shared_client()


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not prefix:
        raise InvalidArgument("a state dict needs a name prefix, such as 'llama-1b/'")


def publish_state_dict(src: Union[Mapping[str, Any], Any], prefix: str, client: Optional["Client"] = None,
                       device: Any = None) -> dict[str, "SharedTensor"]:
    """Publishes a module's (or a mapping's) tensors as named tensors
    prefix + key, with create_many underneath, and copies the data in. A
    name that exists with the same dtype and shape is written in place
    (readers see the new weights; a trainer refreshing a rollout engine's
    copy does this); another dtype or shape raises AlreadyExists. GPU
    tensors are published (SharedTensor.publish) after the copies, so
    readers' get()s wait for them. device: where the tensors live (default:
    each source tensor's GPU, or device 0). Returns the references held,
    by key; the tensors outlive them (delete them to free the memory)."""
    _check_prefix(prefix)
    sd = src.state_dict() if hasattr(src, "state_dict") else dict(src)
    if not sd:
        raise InvalidArgument("the state dict is empty")
    c = _client(client)
    tensors = {k: v.detach() for k, v in sd.items()}
    by_device: dict[Any, list[str]] = {}
    for k, v in tensors.items():
        dev = device if device is not None else (v.device.index or 0) if v.device.type == "cuda" else None
        by_device.setdefault(dev, []).append(k)
    out: dict[str, "SharedTensor"] = {}
    try:
        for dev, keys in by_device.items():
            specs = [(prefix + k, tuple(tensors[k].shape), tensors[k].dtype) for k in keys]
            for k, t in zip(keys, c.create_many(specs, device=dev)):
                out[k] = t
        for k, t in out.items():
            t.torch().copy_(tensors[k].reshape(t.shape))
        for t in out.values():
            if t.is_cuda:
                t.publish()
    except BaseException:
        for t in out.values():
            t.release()
        raise
    return out


def load_state_dict(prefix: str, client: Optional["Client"] = None) -> dict[str, Any]:
    """The tensors published under prefix, as a state dict of zero-copy
    torch.Tensors keyed without the prefix (get_many underneath: one round
    trip plus the mappings). Each tensor keeps its reference while it lives.
    Raises NotFound when nothing is published under prefix."""
    _check_prefix(prefix)
    c = _client(client)
    names = [info.name for info in c.list(prefix=prefix)]
    if not names:
        raise NotFound(f"no tensors are published under {prefix!r}")
    return {n[len(prefix):]: t.torch() for n, t in zip(names, c.get_many(names))}


def module_from_store(factory: Callable[[], Any], prefix: str, client: Optional["Client"] = None, strict: bool = True) -> Any:
    """Builds factory()'s module on the meta device (no memory for its
    weights) and assigns the published tensors as its parameters and
    buffers: the module computes on the shared memory, nothing copied.
    Needs PyTorch 2.1 or newer (load_state_dict(assign=True))."""
    import torch

    with torch.device("meta"):
        module = factory()
    module.load_state_dict(load_state_dict(prefix, client), strict=strict, assign=True)
    return module
