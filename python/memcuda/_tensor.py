"""SharedTensor: one reference on a named tensor, held over the socket."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from ._record import TensorInfo
from ._segments import Segment
from ._views import TensorViews

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["SharedTensor"]


class SharedTensor(TensorViews):
    """One reference on a named tensor. Views from .numpy(), .torch() and
    .cupy() are zero-copy; NumPy and host views keep the reference alive while
    they exist, and GPU views through DLPack do too. release() (or `with`)
    drops it at once: views must not be used after that."""

    def __init__(self, client: "Client", info: TensorInfo, seg: Segment) -> None:
        self.client = client
        self.info = info
        self._seg = seg
        self._seg_ptr = seg.ptr
        self._ordinal = seg.ordinal
        self._released = False
        # Released by __del__ when forgotten (cheaper to set up than a
        # weakref.finalize, which a warm get would pay for every time).

    def publish(self, stream: Optional[int] = None) -> None:
        """Records this process's IPC event on the stream (default: PyTorch's
        current stream) after the writes so far, and publishes it: later
        get()s make their stream wait for it, instead of a device sync."""
        self._check()
        if not self.is_cuda:
            raise TypeError("publish orders GPU work; this is a host tensor")
        from . import _cuda

        s = _cuda.current_stream(self.device_index) if stream is None else stream
        ev = _cuda.record(self.device_index, s)
        if not ev:  # the stream is idle: record anyway, readers still need an event to wait on
            ev = _cuda.record_always(self.device_index, s)
        self.client._call("publish", name=self.name, event=ev)

    def wait(self, stream: Optional[int] = None) -> None:
        """Makes the stream (default: PyTorch's current one) wait for the
        event the writer published, if any."""
        self._check()
        if self.info.event and self.is_cuda:
            from . import _cuda

            s = _cuda.current_stream(self.device_index) if stream is None else stream
            _cuda.stream_wait(self.device_index, self.info.event, s)

    def release(self, stream: Optional[int] = None) -> None:
        """Drops this reference. Views must not be used afterwards. For GPU
        tensors an event recorded on the stream (default: PyTorch's current
        stream) goes along, and the agent reuses the memory only after the
        work queued so far is done: no synchronize needed before release."""
        if self._released:
            return
        self._released = True
        event = ""
        if self.is_cuda:
            from . import _cuda

            s = _cuda.current_stream(self.device_index) if stream is None else stream
            event = _cuda.record(self.device_index, s)
        self.client._release(self, event)

    def __enter__(self) -> "SharedTensor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        if not getattr(self, "_released", True):
            self._released = True
            try:
                self.client._release_from_finalizer(self.info.name, self._seg)
            except Exception:
                pass  # interpreter shutdown: the connection's close drops the reference

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        """Pickles by name: unpickling, in this or another process of the
        node, opens the same memory through the process's shared client of
        the same agent socket (memcuda.shared_client)."""
        self._check()
        return (_open_pickled, (self.info.name, self.client.path))

    def __repr__(self) -> str:
        state = "released" if self._released else f"refcount~{self.info.refcount}"
        return f"SharedTensor({self.name!r}, {self.dtype}{list(self.shape)}, {self.info.ipc_mode}, {state})"


def _open_pickled(name: str, path: str) -> SharedTensor:
    from ._client import shared_client

    return shared_client(path).get(name)
