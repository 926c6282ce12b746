"""How the message query actions of the cloud API spell a stored message, shared by the client and the emulator.

``DescribeMessageDetails`` answers a message's MQTT 5 properties as fields
named like their HTTP publish parameters (``ContentType``, ``ResponseTopic``,
...): the rows of the message-property table that a broker forwards. Binary
values (``Body``, ``CorrelationData``) travel as base64, the emulator's
choice where Tencent's documentation does not say (docs/emulator.md).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from tdmq_beam.rules.message_properties import FORWARDED_PROPERTIES, MESSAGE_PROPERTIES, MessageProperty

__all__ = ["BY_TOPIC_LIMIT", "DETAIL_FIELDS", "LIST_LIMIT", "QOS", "decode_bytes", "detail_value", "encode_bytes"]

BY_TOPIC_LIMIT = 1024
"""The most messages one DescribeMessageByTopic call answers (its default: 100)."""
LIST_LIMIT = 50
"""The most messages one DescribeMessageList page holds (its default: 20)."""

DETAIL_FIELDS: dict[str, MessageProperty] = {
    prop.parameter: prop for prop in MESSAGE_PROPERTIES if prop.name in FORWARDED_PROPERTIES
}
"""The forwarded properties, by the field ``DescribeMessageDetails`` names them with."""
QOS = next(prop for prop in MESSAGE_PROPERTIES if prop.name == "qos")
"""The QoS row of the table, for the ``Qos`` of the answers."""


def encode_bytes(data: bytes) -> str:
    """Binary data as the answers carry it."""
    return base64.b64encode(data).decode("ascii")


def decode_bytes(field: str, text: str) -> bytes:
    """The bytes an answer's ``field`` carries.

    Raises:
        ValueError: the text is not base64, naming the field.
    """
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the answer's {field} is not base64: {text[:40]!r}") from None


def detail_value(prop: MessageProperty, field: str, value: Any) -> Any:
    """The value of ``prop`` that an answer's ``field`` carries: base64 for binary values, otherwise
    read and checked as the publish parameter's text is (`MessageProperty.from_parameter`).

    Raises:
        ValueError: the value is not one the property takes, naming the field.
    """
    if prop.kind is bytes:
        return decode_bytes(field, str(value))
    try:
        return prop.from_parameter(str(value))
    except ValueError as error:
        raise ValueError(f"the answer's {field}: {error}") from None
