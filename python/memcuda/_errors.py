"""Errors raised by the client; each carries the agent's wire code."""
from __future__ import annotations

__all__ = [
    "AlreadyExists", "DeadlineExceeded", "Disconnected", "FailedPrecondition", "InvalidArgument", "MemcudaError", "NotFound", "OutOfMemory",
    "PermissionDenied", "ProtocolError", "Unavailable", "Unimplemented", "from_code",
]


class MemcudaError(Exception):
    """An error reported by the agent (or the transport), with its code."""

    code: str = "internal"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgument(MemcudaError, ValueError):
    code = "invalid_argument"


class NotFound(MemcudaError, KeyError):
    code = "not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class AlreadyExists(MemcudaError):
    code = "already_exists"


class FailedPrecondition(MemcudaError):
    code = "failed_precondition"


class OutOfMemory(MemcudaError, MemoryError):
    code = "out_of_memory"


class Unavailable(MemcudaError, ConnectionError):
    code = "unavailable"


class Disconnected(Unavailable):
    """The connection to the agent broke (the agent stopped, crashed or was
    replaced). A Client reconnects by itself; this reaches user code only
    when it cannot, or for a call that may have been applied."""


class PermissionDenied(MemcudaError, PermissionError):
    code = "permission_denied"


class Unimplemented(MemcudaError, NotImplementedError):
    """The agent does not have the operation (an older agent)."""

    code = "unimplemented"


class DeadlineExceeded(MemcudaError, TimeoutError):
    code = "deadline_exceeded"


class ProtocolError(MemcudaError):
    code = "internal"


_BY_CODE: dict[str, type[MemcudaError]] = {
    c.code: c
    for c in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, OutOfMemory, Unavailable, PermissionDenied,
              Unimplemented, DeadlineExceeded)
}


def from_code(code: str, message: str) -> MemcudaError:
    """The exception for a wire error code."""
    return _BY_CODE.get(code, MemcudaError)(message, code)
