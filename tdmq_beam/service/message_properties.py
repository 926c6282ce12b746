"""The one table of what can be set on a published message besides its topic, payload and user properties.

Each `MessageProperty` says everything the connector needs about one setting:
its name (the `MqttMessage` field, the `MessageMapping` role, the
`MessageDefaults` field and the `WriteToTdmqMqtt` keyword), the HTTP publish
parameter it travels as, which values it takes, and which Avro types a record
field may have to play it. Validation, request targets, mapping roles and Avro
role checks all read this table; a test checks that the classes naming the
settings list exactly these.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tdmq_beam.mqtt.topics import topic_name_error, utf8_string_error
from tdmq_beam.service.limits import MAX_UINT32

__all__ = ["MESSAGE_PROPERTIES", "PROPERTY_NAMES", "MessageProperty", "quote_component"]


@functools.lru_cache(maxsize=65536)
def quote_component(text: str) -> str:
    """``text`` percent-encoded for a path segment or query value (cached: values repeat)."""
    return quote(text, safe="")


@dataclass(frozen=True)
class MessageProperty:
    """One message setting.

    Attributes:
        name: the field, role and keyword name.
        parameter: the HTTP publish API's query parameter.
        accepts: what a value must be, in words (for error messages).
        avro_types: Avro types (``null`` removed from unions) a field may have in this role.
        valid: whether a value has the right type and range.
        choices: the values an enumerated setting takes (qos, payload format), else empty.
        string_rule: the value is text held to MQTT's string rules (UTF-8, no U+0000, 65,535 bytes).
    """

    name: str
    parameter: str
    accepts: str
    avro_types: frozenset[str]
    valid: Callable[[Any], bool]
    choices: tuple[int, ...] = ()
    string_rule: bool = False

    def is_valid(self, value: Any) -> bool:
        """Whether ``value`` has the right type and range (the string rules aside)."""
        return self.valid(value) and (not self.choices or value in self.choices)

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this setting, as a sentence naming it, or None."""
        if not self.is_valid(value):
            return f"{self.name} must be {self.accepts}, got {value!r}"
        if self.string_rule:
            return utf8_string_error(self.name, value)
        if self.name == "response_topic" and (problem := topic_name_error(value)):
            return f"response_topic: {problem}"
        return None

    def query(self, value: Any) -> str:
        """``parameter=value`` for the publish request's query, percent-encoded (qos and retained,
        which every request carries, are written by `MqttMessage.request_target` itself)."""
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        return f"{self.parameter}={quote_component(text)}"


def _is_choice(value: Any) -> bool:
    return type(value) is int  # the range is the property's choices


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_uint32(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_UINT32


def _is_bytes_or_str(value: Any) -> bool:
    return isinstance(value, (bytes, str))


_INTEGERS = frozenset({"int", "long"})
_STRINGS = frozenset({"string"})

# In the order the publish request names them.
MESSAGE_PROPERTIES: tuple[MessageProperty, ...] = (
    MessageProperty("qos", "qos", "0, 1 or 2", _INTEGERS, _is_choice, (0, 1, 2)),
    MessageProperty("retained", "retained", "a bool", frozenset({"boolean"}), _is_bool),
    MessageProperty("client_id", "client_id", "a str", _STRINGS, _is_str, string_rule=True),
    MessageProperty("username", "username", "a str", _STRINGS, _is_str, string_rule=True),
    MessageProperty("response_topic", "ResponseTopic", "a str", _STRINGS, _is_str),
    MessageProperty(
        "correlation_data", "CorrelationData", "bytes or str", frozenset({"string", "bytes", "fixed"}), _is_bytes_or_str
    ),
    MessageProperty("content_type", "ContentType", "a str", _STRINGS, _is_str, string_rule=True),
    MessageProperty("payload_format_indicator", "PayloadFormatIndicator", "0 or 1", _INTEGERS, _is_choice, (0, 1)),
    MessageProperty(
        "message_expiry_interval", "MessageExpiryInterval", f"an int within 0..{MAX_UINT32}", _INTEGERS, _is_uint32
    ),
)

PROPERTY_NAMES: tuple[str, ...] = tuple(prop.name for prop in MESSAGE_PROPERTIES)
"""The settings' names, in the table's order."""
