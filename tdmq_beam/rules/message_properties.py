"""The one table of what can be set on a published message besides its topic, payload and user properties.

Each `MessageProperty` says everything the connector and the emulator need about
one setting: its name (the `MqttMessage` field, the `MessageMapping` role, the
`MessageDefaults` field, the `WriteToTdmqMqtt` and Beam YAML keyword), the HTTP
publish parameter it travels as (and how its text reads), which values it takes,
which Avro types a record field may have to play it, its MQTT 5 property id,
whether a subscriber gets it back (a `ReceivedMessage` field of the same name),
and whether it enters the idempotency key. Validation, request targets, mapping
roles, Avro role checks, the idempotency key, received-message decoding, the
emulator's parsing and forwarding and the YAML keywords all read this table; a
test checks every one of them against it. A new property is one row here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tdmq_beam.mqtt.codec import Prop
from tdmq_beam.mqtt.topics import topic_name_error, utf8_string_error
from tdmq_beam.rules.limits import MAX_UINT32

__all__ = [
    "FORWARDED_PROPERTIES",
    "MESSAGE_PROPERTIES",
    "PARAMETER_SPELLINGS",
    "PROPERTY_NAMES",
    "MessageProperty",
    "quote_component",
]


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
        kind: the Python type of a value (``int``, ``bool``, ``str`` or ``bytes``), which
            also says how the parameter's text reads.
        mqtt_property: the MQTT 5 property identifier it travels as in PUBLISH, or
            None (qos and retained are header flags; client_id and username say who
            publishes and never reach subscribers).
        choices: the values an enumerated setting takes (qos, payload format), else empty.
        string_rule: the value is text held to MQTT's string rules (UTF-8, no U+0000, 65,535 bytes).
        spellings: other names the service accepts for the parameter.
        forwarded: subscribers get it with the message (the broker forwards it), so a
            `ReceivedMessage` has a field of this name.
        in_idempotency_key: `IdempotencyKey` hashes it: two messages differing in it are
            two messages, not one sent twice.
    """

    name: str
    parameter: str
    accepts: str
    avro_types: frozenset[str]
    valid: Callable[[Any], bool]
    kind: type
    mqtt_property: int | None = None
    choices: tuple[int, ...] = ()
    string_rule: bool = False
    spellings: tuple[str, ...] = ()
    forwarded: bool = True
    in_idempotency_key: bool = True

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

    def from_parameter(self, text: str) -> Any:
        """The value a publish request's (percent-decoded) parameter text stands for.

        Raises:
            ValueError: saying what is wrong, naming the parameter.
        """
        value: Any = text
        if self.kind is int:
            if not (text.isascii() and text.isdigit()):
                raise ValueError(f"invalid {self.parameter} {text!r}: must be {self.accepts}, digits only")
            value = int(text)
        elif self.kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError(f"invalid {self.parameter} {text!r}: must be true or false")
            value = text.lower() == "true"
        if not self.is_valid(value):
            raise ValueError(f"invalid {self.parameter} {text!r}: must be {self.accepts}")
        if self.string_rule or self.kind is bytes:
            if problem := utf8_string_error(self.parameter, text):
                raise ValueError(problem)
        if self.name == "response_topic" and (problem := topic_name_error(text)):
            raise ValueError(f"invalid {self.parameter}: {problem}")
        return text.encode("utf-8") if self.kind is bytes else value

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
    MessageProperty("qos", "qos", "0, 1 or 2", _INTEGERS, _is_choice, int, choices=(0, 1, 2), spellings=("QoS",)),
    MessageProperty("retained", "retained", "a bool", frozenset({"boolean"}), _is_bool, bool, spellings=("Retained",)),
    MessageProperty("client_id", "client_id", "a str", _STRINGS, _is_str, str, string_rule=True, forwarded=False),
    MessageProperty("username", "username", "a str", _STRINGS, _is_str, str, string_rule=True, forwarded=False),
    MessageProperty("response_topic", "ResponseTopic", "a str", _STRINGS, _is_str, str, Prop.RESPONSE_TOPIC),
    MessageProperty(
        "correlation_data", "CorrelationData", "bytes or str", frozenset({"string", "bytes", "fixed"}),
        _is_bytes_or_str, bytes, Prop.CORRELATION_DATA,
    ),
    MessageProperty(
        "content_type", "ContentType", "a str", _STRINGS, _is_str, str, Prop.CONTENT_TYPE, string_rule=True
    ),
    MessageProperty(
        "payload_format_indicator", "PayloadFormatIndicator", "0 or 1", _INTEGERS, _is_choice, int,
        Prop.PAYLOAD_FORMAT_INDICATOR, choices=(0, 1),
    ),
    MessageProperty(
        "message_expiry_interval", "MessageExpiryInterval", f"an int within 0..{MAX_UINT32}", _INTEGERS,
        _is_uint32, int, Prop.MESSAGE_EXPIRY_INTERVAL,
    ),
)  # fmt: skip

PROPERTY_NAMES: tuple[str, ...] = tuple(prop.name for prop in MESSAGE_PROPERTIES)
"""The settings' names, in the table's order."""

FORWARDED_PROPERTIES: dict[str, int] = {
    prop.name: prop.mqtt_property for prop in MESSAGE_PROPERTIES if prop.forwarded and prop.mqtt_property is not None
}
"""The MQTT 5 properties a subscriber gets with the message (user properties aside): name -> property id."""

PARAMETER_SPELLINGS: dict[str, str] = {
    spelling: prop.parameter for prop in MESSAGE_PROPERTIES for spelling in (prop.parameter, *prop.spellings)
}
"""Every accepted spelling of a publish parameter -> its name in the table."""
