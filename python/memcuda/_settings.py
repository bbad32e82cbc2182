"""The client's numeric settings: an argument, else its environment
variable, else the default, each checked so that a bad value is refused
with the setting's name instead of failing later, somewhere deeper."""
from __future__ import annotations

import math
import os
from typing import Optional, Union

from ._errors import InvalidArgument

__all__ = ["seconds", "count"]

Number = Union[int, float]


def seconds(value: Optional[Number], env: str, default: float, what: str, positive: bool = False) -> float:
    """A duration (seconds or microseconds, as what says): value, else
    $env (when env names one), else default. At least 0 (above 0 when
    positive), and finite."""
    raw: object = value
    if value is None:
        if not env:
            return default
        text = os.environ.get(env, "").strip()
        if not text:
            return default
        try:
            raw = float(text)
        except ValueError:
            raise InvalidArgument(f"${env}={text!r}: {what} must be a number") from None
        return _checked(raw, f"${env}={text!r}: {what}", positive)
    return _checked(raw, what, positive)


def count(value: Optional[int], env: str, default: int, what: str) -> int:
    """A whole number of at least 0: value, else $env (when env names
    one), else default."""
    if value is None and not env:
        raise InvalidArgument(f"{what} must be a whole number, not None")
    if value is None:
        text = os.environ.get(env, "").strip()
        if not text:
            return default
        try:
            n = int(text)
        except ValueError:
            raise InvalidArgument(f"${env}={text!r}: {what} must be a whole number") from None
        if n < 0:
            raise InvalidArgument(f"${env}={text!r}: {what} must be at least 0")
        return n
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be a whole number, not {value!r}")
    if value < 0:
        raise InvalidArgument(f"{what} must be at least 0, not {value}")
    return value


def _checked(v: object, what: str, positive: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidArgument(f"{what} must be a number, not {v!r}")
    f = float(v)
    if math.isnan(f) or math.isinf(f) or f < 0 or (positive and f == 0):
        raise InvalidArgument(f"{what} must be {'above' if positive else 'at least'} 0 and finite, not {v!r}")
    return f
