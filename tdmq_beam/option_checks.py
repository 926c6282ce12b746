"""One way to check options: every check takes the option's name and value, returns the value
(normalised where that helps: seconds as float), or raises `ConfigurationError` naming the option.

Used by every public constructor (transforms, connection, cloud config, retry policy, emulator
config), so that the same mistake reads the same everywhere. Booleans are never numbers here:
``num_readers=True`` is refused, though ``True`` is an ``int`` to Python.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tdmq_beam.errors import ConfigurationError

__all__ = [
    "field_or_callable",
    "flag",
    "instance_of",
    "int_in_range",
    "non_empty_text",
    "non_negative",
    "non_negative_int",
    "one_of",
    "optional",
    "positive",
    "positive_int",
]

T = TypeVar("T")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(name: str, value: Any) -> int:
    """``value``, an int of at least 1."""
    if not _is_int(value) or value < 1:
        raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
    return value


def non_negative_int(name: str, value: Any) -> int:
    """``value``, an int of at least 0."""
    if not _is_int(value) or value < 0:
        raise ConfigurationError(f"{name} must be a non-negative int, got {value!r}")
    return value


def int_in_range(name: str, value: Any, low: int, high: int, *, unit: str = "") -> int:
    """``value``, an int within ``low..high`` (``unit`` names what it counts, for the message)."""
    if not _is_int(value) or not low <= value <= high:
        raise ConfigurationError(f"{name} must be an int within {low}..{high}{unit}, got {value!r}")
    return value


def positive(name: str, value: Any, *, unit: str = "") -> float:
    """``value``, a number above 0, as a float (``unit``: `` seconds``, `` per second``...)."""
    if not _is_number(value) or not value > 0:
        raise ConfigurationError(f"{name} must be positive{unit}, got {value!r}")
    return float(value)


def non_negative(name: str, value: Any, *, unit: str = "") -> float:
    """``value``, a number of at least 0, as a float."""
    if not _is_number(value) or value < 0:
        raise ConfigurationError(f"{name} must not be negative{unit}, got {value!r}")
    return float(value)


def one_of(name: str, value: Any, choices: Sequence[T]) -> T:
    """``value``, one of ``choices`` (a bool never stands for 0 or 1)."""
    if isinstance(value, bool) is not isinstance(choices[0], bool) or value not in choices:
        listed = [repr(choice) for choice in choices]
        words = listed[0] if len(listed) == 1 else f"{', '.join(listed[:-1])} or {listed[-1]}"
        raise ConfigurationError(f"{name} must be {words}, got {value!r}")
    return value


def flag(name: str, value: Any) -> bool:
    """``value``, True or False."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")
    return value


def non_empty_text(name: str, value: Any, *, max_length: int | None = None) -> str:
    """``value``, a str with at least one character (and at most ``max_length``)."""
    if not isinstance(value, str) or not value or (max_length is not None and len(value) > max_length):
        most = f" of at most {max_length} characters" if max_length is not None else ""
        raise ConfigurationError(f"{name} must be a non-empty str{most}, got {value!r}")
    return value


def field_or_callable(name: str, value: Any) -> str | Callable[..., Any]:
    """``value``, the name of a record field or a callable of the element."""
    if not (callable(value) or (isinstance(value, str) and value)):
        raise ConfigurationError(f"{name} must name a field or be a callable, got {value!r}")
    return value


def instance_of(name: str, value: Any, kind: type[T]) -> T:
    """``value``, an instance of ``kind``."""
    if not isinstance(value, kind):
        raise ConfigurationError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def optional(check: Callable[..., T], name: str, value: Any, *args: Any, **kwargs: Any) -> T | None:
    """None, or ``value`` passed through ``check`` (``optional(positive, "tps", tps)``)."""
    return None if value is None else check(name, value, *args, **kwargs)
