"""`MqttMessage`: one MQTT message to publish, validated, and its HTTP publish request target."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any

from tdmq_beam.errors import InvalidMessageError
from tdmq_beam.mqtt.topics import topic_name_error, utf8_string_error
from tdmq_beam.rules.message_properties import MESSAGE_PROPERTIES, quote_component

__all__ = ["MqttMessage", "UserProperties"]


UserProperties = Iterable[tuple[str, str]] | Mapping[str, str]


# Every setting but qos and retained, which every request carries.
_OPTIONAL_PROPERTIES = tuple(prop for prop in MESSAGE_PROPERTIES if prop.name not in ("qos", "retained"))


@dataclass(frozen=True, slots=True)
class MqttMessage:
    """An MQTT message to publish through the HTTP publish API.

    The message validates itself when created and raises `InvalidMessageError`
    (a `ValueError`) naming the first rule it breaks. The payload size cap is
    the connection's (`TdmqConnection.max_payload_bytes`), checked at publish.

    Args:
        topic: topic name: non-empty, no ``+``/``#``, no U+0000, at most
            65,535 bytes of UTF-8.
        payload: bytes, or str sent as UTF-8.
        qos: 0, 1 or 2. Defaults to 1, as the service does.
        retained: whether the broker keeps the message for later subscribers.
        client_id: client id the service uses for ACL checks; the service's
            default is ``http-{connection-id}`` (under mTLS: the certificate CN).
        username: username for ACL checks when no Basic credentials are sent.
        user_properties: MQTT 5 user properties, in order; keys may repeat.
            A mapping or an iterable of (key, value) pairs.
        message_expiry_interval: MQTT 5 message expiry, seconds (uint32).
            0 means "now or never": the message reaches the subscribers that
            can take it at once and is neither queued nor retained.
        content_type: MQTT 5 content type.
        payload_format_indicator: MQTT 5: 0 bytes, 1 UTF-8 (checked).
        response_topic: MQTT 5 response topic (a topic name).
        correlation_data: MQTT 5 correlation data, bytes or str. The HTTP API
            carries it as text, so it must be UTF-8.
    """

    topic: str
    payload: bytes
    _: KW_ONLY
    qos: int = 1
    retained: bool = False
    client_id: str | None = None
    username: str | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    message_expiry_interval: int | None = None
    content_type: str | None = None
    payload_format_indicator: int | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None

    def __post_init__(self) -> None:
        payload = self.payload
        if isinstance(payload, str):
            object.__setattr__(self, "payload", payload.encode("utf-8"))
        elif isinstance(payload, (bytearray, memoryview)):
            object.__setattr__(self, "payload", bytes(payload))
        elif not isinstance(payload, bytes):
            raise InvalidMessageError(f"payload must be bytes or str, got {type(payload).__name__}")
        if isinstance(self.correlation_data, str):
            object.__setattr__(self, "correlation_data", self.correlation_data.encode("utf-8"))
        properties: Any = self.user_properties
        if isinstance(properties, Mapping):
            properties = properties.items()
        try:
            pairs = tuple(properties)
        except TypeError:
            raise InvalidMessageError("user_properties must be (key, value) pairs or a mapping") from None
        object.__setattr__(self, "user_properties", pairs)
        problem = self.problem()
        if problem:
            raise InvalidMessageError(problem)

    def problem(self, max_payload_bytes: int | None = None) -> str | None:
        """The first rule the message breaks, or None."""
        problem = topic_name_error(self.topic) if isinstance(self.topic, str) else "topic must be a str"
        if problem:
            return problem
        for prop in MESSAGE_PROPERTIES:
            value = getattr(self, prop.name)
            if value is not None and (problem := prop.problem(value)):
                return problem
        if self.client_id == "":
            return "client_id is empty; leave it None for the service's default"
        for index, pair in enumerate(self.user_properties, 1):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                return f"user property {index} is not a (key, value) pair: {pair!r}"
            for part, text in zip(("key", "value"), pair, strict=True):
                if problem := utf8_string_error(f"user property {index} {part}", text):
                    return problem
        if self.payload_format_indicator == 1:
            try:
                self.payload.decode("utf-8")
            except UnicodeDecodeError:
                return "payload_format_indicator is 1 but the payload is not valid UTF-8"
        if self.correlation_data is not None:
            try:
                self.correlation_data.decode("utf-8")
            except UnicodeDecodeError:
                return "correlation_data must be UTF-8: the HTTP publish API carries it as text"
        if max_payload_bytes is not None:
            return self.payload_problem(max_payload_bytes)
        return None

    def payload_problem(self, max_payload_bytes: int) -> str | None:
        """Why the payload is too large for ``max_payload_bytes``, or None (the one check a
        publish repeats: the rest were made when the message was created)."""
        if len(self.payload) > max_payload_bytes:
            return f"payload is {len(self.payload)} bytes; the limit is {max_payload_bytes}"
        return None

    def request_target(self) -> str:
        """Path and query of the publish request, every part percent-encoded."""
        parts = [f"qos={self.qos}", "retained=true" if self.retained else "retained=false"]
        for prop in _OPTIONAL_PROPERTIES:
            value = getattr(self, prop.name)
            if value is not None:
                parts.append(prop.query(value))
        for index, (key, value) in enumerate(self.user_properties, 1):
            parts.append(f"UserProp.{index}.Key={quote_component(key)}&UserProp.{index}.Value={quote_component(value)}")
        return f"/topics/{quote_component(self.topic)}?{'&'.join(parts)}"
