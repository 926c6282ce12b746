"""Reading records: a mapping view of any record, the client id field, and record values as JSON.

Shared by the mapping (records onto messages), the result records and the transforms.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from tdmq_beam.errors import InvalidMessageError

__all__ = ["MappingError", "as_record", "client_id_getter", "element_to_json", "json_default", "text_getter"]


class MappingError(InvalidMessageError):
    """An element does not fit the mapping; the message names the field."""

    kind = "invalid_record"


def as_record(element: Any) -> Mapping[str, Any]:
    """A mapping view of a dict, a Beam Row or a NamedTuple.

    Raises:
        MappingError: for any other element.
    """
    if isinstance(element, Mapping):
        return element
    as_dict = getattr(element, "as_dict", None) or getattr(element, "_asdict", None)
    if as_dict is not None:
        return as_dict()
    raise MappingError(
        f"cannot map an element of type {type(element).__name__}: give MqttMessage, dict, Beam Row or NamedTuple"
    )


def text_getter(field: str | Callable[[Any], str], what: str) -> Callable[[Any], str]:
    """A function from an element to a non-empty str: a field of a record, or ``field`` itself
    when it is a callable. ``what`` names the value in errors (``the client id``)."""
    if callable(field):
        return field
    name = field

    def from_field(element: Any) -> str:
        value = as_record(element).get(name)
        if not isinstance(value, str) or not value:
            raise MappingError(f"invalid record: field {name!r} must hold {what} as a non-empty str, got {value!r}")
        return value

    return from_field


def client_id_getter(client_id: str | Callable[[Any], str]) -> Callable[[Any], str]:
    """A function from an element to its client id: a field of a record, or ``client_id`` itself."""
    return text_getter(client_id, "the client id")


def json_default(value: Any) -> Any:
    """``json.dumps`` default for record values JSON has no type for."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if hasattr(value, "as_dict"):  # beam.Row
        return value.as_dict()
    if hasattr(value, "_asdict"):  # NamedTuple
        return value._asdict()
    if hasattr(value, "__dataclass_fields__"):
        return {name: getattr(value, name) for name in value.__dataclass_fields__}
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def element_to_json(element: Any) -> str:
    """The element as JSON text: bytes as base64, times as ISO 8601, anything else as its repr.
    A NamedTuple element (a `ReceivedMessage`) is an object, not the list JSON makes of tuples."""
    if hasattr(element, "_asdict"):
        element = element._asdict()
    return json.dumps(element, default=json_default, ensure_ascii=False, separators=(",", ":"))
