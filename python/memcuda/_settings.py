"""The client's numeric settings: an argument, else its environment
variable, else the default, each checked so that a bad value is refused
with the setting's name instead of failing later, somewhere deeper."""
from __future__ import annotations

import math
import os
from typing import Callable, Optional, TypeVar, Union

from ._errors import InvalidArgument

__all__ = ["seconds", "count"]

Number = Union[int, float]


def seconds(value: Optional[Number], env: str, default: float, what: str, positive: bool = False) -> float:
    """A duration (seconds or microseconds, as what says): value, else
    $env (when env names one), else default. At least 0 (above 0 when
    positive), and finite."""
    if value is not None:
        return _checked(value, what, positive)
    got = _from_env(env, float, what, "a number")
    if got is None:
        return default
    text, v = got
    return _checked(v, f"${env}={text!r}: {what}", positive)


def count(value: Optional[int], env: str, default: int, what: str) -> int:
    """A whole number of at least 0: value, else $env (when env names
    one), else default."""
    if value is None and not env:
        raise InvalidArgument(f"{what} must be a whole number, not None")
    if value is None:
        got = _from_env(env, int, what, "a whole number")
        if got is None:
            return default
        text, value = got
        what = f"${env}={text!r}: {what}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be a whole number, not {value!r}")
    if value < 0:
        raise InvalidArgument(f"{what} must be at least 0, not {value}")
    return value


T = TypeVar("T", int, float)


def _from_env(env: str, parse: Callable[[str], T], what: str, kind: str) -> Optional[tuple[str, T]]:
    # $env's text and value; None when env names none or it is unset or empty.
    text = os.environ.get(env, "").strip() if env else ""
    if not text:
        return None
    try:
        return text, parse(text)
    except ValueError:
        raise InvalidArgument(f"${env}={text!r}: {what} must be {kind}") from None


def _checked(v: object, what: str, positive: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidArgument(f"{what} must be a number, not {v!r}")
    f = float(v)
    if math.isnan(f) or math.isinf(f) or f < 0 or (positive and f == 0):
        raise InvalidArgument(f"{what} must be {'above' if positive else 'at least'} 0 and finite, not {v!r}")
    return f
