"""How an element becomes an `MqttMessage`: field roles, transform defaults, idempotency keys.

`MessageMapping` says which record fields play which MQTT role; `MessageDefaults`
holds the transform-level values that a record's fields (or an `MqttMessage`'s
own fields) override; `IdempotencyKey` adds a deterministic user property;
`MessageBuilder` puts the three together and is what the transforms call.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tdmq_beam.errors import ConfigurationError, InvalidMessageError
from tdmq_beam.records.fields import MappingError, as_record
from tdmq_beam.records.payload import FieldPayload, PayloadEncoder, RecordError
from tdmq_beam.rules.message_properties import MESSAGE_PROPERTIES, PROPERTY_NAMES
from tdmq_beam.service.message import MqttMessage

__all__ = [
    "PROPERTY_ROLES",
    "IdempotencyKey",
    "MessageBuilder",
    "MessageDefaults",
    "MessageMapping",
]

# Roles a single field can play, beside topic, payload and user properties: the message settings.
PROPERTY_ROLES = PROPERTY_NAMES
_SETTINGS = {prop.name: prop for prop in MESSAGE_PROPERTIES}
_KEYED_SETTINGS = tuple(prop for prop in MESSAGE_PROPERTIES if prop.in_idempotency_key)


def _check_role(role: str, field_name: str, value: Any) -> Any:
    """Checks one mapped field's value for its role (type and range; the message checks the rest)."""
    setting = _SETTINGS[role]
    if not setting.is_valid(value):
        expected = " or ".join(map(str, setting.choices)) if setting.choices else setting.accepts
        raise RecordError(field_name, f"({role}) must be {expected}, got {value!r}")
    return value


@dataclass(frozen=True)
class MessageMapping:
    """Which fields of a record (dict, Beam Row, Avro record) play which MQTT role.

    Args:
        topic: a template such as ``devices/{device_id}/commands`` (fields in
            braces) or a callable from the record to the topic.
        payload: a field name (bytes or str), a `PayloadEncoder` (`JsonPayload`,
            `AvroPayload`, `FieldPayload`) or a callable from the record to
            bytes or str.
        user_properties: a field holding a mapping or (key, value) pairs, or a
            mapping from property key to field name (values sent as str).
        qos, retained, client_id, username, message_expiry_interval, content_type,
            payload_format_indicator, response_topic, correlation_data: the
            field holding that role's value. A field that is absent or None
            leaves the transform's default.
    """

    topic: str | Callable[[Mapping[str, Any]], str]
    payload: str | PayloadEncoder | Callable[[Mapping[str, Any]], bytes | str]
    user_properties: str | Mapping[str, str] | None = None
    qos: str | None = None
    retained: str | None = None
    client_id: str | None = None
    username: str | None = None
    message_expiry_interval: str | None = None
    content_type: str | None = None
    payload_format_indicator: str | None = None
    response_topic: str | None = None
    correlation_data: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.topic, str):
            self.topic_fields()  # raises ValueError for a malformed template
        elif not callable(self.topic):
            raise ConfigurationError("topic must be a template string or a callable")
        if isinstance(self.payload, str):
            object.__setattr__(self, "payload", FieldPayload(self.payload))
        elif not (isinstance(self.payload, PayloadEncoder) or callable(self.payload)):
            raise ConfigurationError("payload must be a field name, a PayloadEncoder or a callable")
        for role in PROPERTY_ROLES:
            name = getattr(self, role)
            if name is not None and (not isinstance(name, str) or not name):
                raise ConfigurationError(f"{role} must name a field, got {name!r}")
        if self.user_properties is not None and not isinstance(self.user_properties, (str, Mapping)):
            raise ConfigurationError("user_properties must name a field, or map property keys to field names")

    def topic_fields(self) -> tuple[str, ...]:
        """The fields a topic template reads."""
        if not isinstance(self.topic, str):
            return ()
        try:
            parsed = list(string.Formatter().parse(self.topic))
        except ValueError as exc:
            raise ConfigurationError(f"topic template {self.topic!r}: {exc}") from None
        names = []
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if not name.isidentifier() or spec or conversion:
                raise ConfigurationError(f"topic template {self.topic!r}: write fields as {{name}}, got {{{name}}}")
            names.append(name)
        return tuple(names)

    def fields(self) -> dict[str, str]:
        """Every field the mapping reads, with the role it plays."""
        roles: dict[str, str] = dict.fromkeys(self.topic_fields(), "topic")
        if isinstance(self.payload, PayloadEncoder):
            roles.update(dict.fromkeys(self.payload.fields, "payload"))
        for role in PROPERTY_ROLES:
            if getattr(self, role) is not None:
                roles[getattr(self, role)] = role
        if isinstance(self.user_properties, str):
            roles[self.user_properties] = "user_properties"
        elif isinstance(self.user_properties, Mapping):
            roles.update(dict.fromkeys(self.user_properties.values(), "user_property"))
        return roles

    def topic_for(self, record: Mapping[str, Any]) -> str:
        if not isinstance(self.topic, str):
            topic = self.topic(record)
            if not isinstance(topic, str):
                raise RecordError(None, f"the topic callable returned {type(topic).__name__}, not str")
            return topic
        try:
            return self.topic.format_map(record)
        except KeyError as exc:
            raise RecordError(exc.args[0], f"is missing (topic template {self.topic!r})") from None

    def payload_for(self, record: Mapping[str, Any]) -> bytes:
        if isinstance(self.payload, PayloadEncoder):
            return self.payload.encode(record)
        assert callable(self.payload)  # a field name became a FieldPayload in __post_init__
        payload = self.payload(record)
        if isinstance(payload, str):
            return payload.encode("utf-8")
        if not isinstance(payload, bytes):
            raise RecordError(None, f"the payload callable returned {type(payload).__name__}, not bytes or str")
        return payload

    def properties_for(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The roles this record sets (fields absent or None are left out)."""
        values: dict[str, Any] = {}
        for role in PROPERTY_ROLES:
            name = getattr(self, role)
            if name is not None:
                value = record.get(name)
                if value is not None:
                    values[role] = _check_role(role, name, value)
        if self.payload_content_type is not None and "content_type" not in values:
            values["content_type"] = self.payload_content_type
        return values

    @property
    def payload_content_type(self) -> str | None:
        return self.payload.content_type if isinstance(self.payload, PayloadEncoder) else None

    def user_properties_for(self, record: Mapping[str, Any]) -> list[tuple[str, str]]:
        source = self.user_properties
        if source is None:
            return []
        pairs: list[tuple[str, str]] = []
        if isinstance(source, Mapping):
            for key, name in source.items():
                value = record.get(name)
                if value is not None:
                    pairs.append((key, value if isinstance(value, str) else str(value)))
            return pairs
        value = record.get(source)
        if value is None:
            return []
        items = value.items() if isinstance(value, Mapping) else value
        try:
            for item in items:
                pair: Any = (item.get("key"), item.get("value")) if isinstance(item, Mapping) else item
                key, text = pair  # an Avro array of {key, value} records, or pairs
                if not isinstance(key, str) or not isinstance(text, str):
                    raise ValueError
                pairs.append((key, text))
        except (TypeError, ValueError):
            raise RecordError(source, "(user_properties) must be a map of str or (key, value) str pairs") from None
        return pairs


@dataclass(frozen=True)
class MessageDefaults:
    """Transform-level values for what an element does not set itself. None: the service's default."""

    qos: int | None = None
    retained: bool | None = None
    client_id: str | None = None
    username: str | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    message_expiry_interval: int | None = None
    content_type: str | None = None
    payload_format_indicator: int | None = None
    response_topic: str | None = None
    correlation_data: bytes | str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_properties", tuple(tuple(pair) for pair in self.user_properties))
        try:  # validated once, by building a message with every default
            self.apply({"topic": "t", "payload": b""})
        except InvalidMessageError as exc:
            raise ConfigurationError(f"invalid transform default: {exc}") from None

    def apply(self, values: dict[str, Any]) -> MqttMessage:
        """A message from ``values`` (topic, payload and roles), defaults filling the rest."""
        for role in PROPERTY_ROLES:
            if role not in values:
                default = getattr(self, role)
                if default is not None:
                    values[role] = default
        if self.user_properties:
            values["user_properties"] = (*self.user_properties, *values.get("user_properties", ()))
        topic = values.pop("topic")
        payload = values.pop("payload")
        return MqttMessage(topic, payload, **values)

    def is_empty(self) -> bool:
        return not self.user_properties and all(getattr(self, role) is None for role in PROPERTY_ROLES)


@dataclass(frozen=True)
class IdempotencyKey:
    """A deterministic user property, the same on every retry and rerun, so consumers can drop duplicates.

    Args:
        property_name: the user property's key. Defaults to ``idempotency-key``.
        field: take the key from this record field; by default the key is a
            SHA-256 (32 hex digits) of the topic, the payload, the user properties
            and every message setting the property table puts in the key.
    """

    property_name: str = "idempotency-key"
    field: str | None = None

    def __post_init__(self) -> None:
        if not self.property_name:
            raise ConfigurationError("IdempotencyKey needs a property name")

    def key_for(self, message: MqttMessage, record: Mapping[str, Any] | None) -> str:
        if self.field is not None and record is not None:
            value = record.get(self.field)
            if value is None:
                raise RecordError(self.field, "is missing (it holds the idempotency key)")
            return value if isinstance(value, str) else str(value)
        digest = hashlib.sha256()
        settings = tuple(getattr(message, prop.name) for prop in _KEYED_SETTINGS)
        for part in (message.topic.encode(), message.payload, repr((message.user_properties, settings)).encode()):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return digest.hexdigest()[:32]


@dataclass(frozen=True)
class MessageBuilder:
    """Turns elements into messages: `MqttMessage` as it is (defaults filling its None
    fields), records through the mapping. Raises `InvalidMessageError` (or `MappingError`
    naming the field) for elements that do not fit."""

    mapping: MessageMapping | None = None
    defaults: MessageDefaults = field(default_factory=MessageDefaults)
    idempotency_key: IdempotencyKey | None = None

    _no_defaults: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        # Decided once: the per-element path only asks a bool.
        object.__setattr__(self, "_no_defaults", self.defaults.is_empty())

    def build(self, element: Any) -> MqttMessage:
        if isinstance(element, MqttMessage):
            message = self._fill(element)
            record = None
        else:
            if self.mapping is None:
                raise MappingError(
                    f"elements of type {type(element).__name__} need a mapping: WriteToTdmqMqtt(..., mapping=...)"
                )
            record = as_record(element)
            try:
                values = self.mapping.properties_for(record)
                values["topic"] = self.mapping.topic_for(record)
                values["payload"] = self.mapping.payload_for(record)
                properties = self.mapping.user_properties_for(record)
            except RecordError as exc:
                raise MappingError(f"invalid record: {exc}") from None
            if properties:
                values["user_properties"] = properties
            try:
                message = self.defaults.apply(values)
            except InvalidMessageError as exc:
                raise MappingError(f"invalid record: {exc}") from None
        if self.idempotency_key is not None:
            try:
                key = self.idempotency_key.key_for(message, record)
            except RecordError as exc:
                raise MappingError(f"invalid record: {exc}") from None
            message = replace(
                message, user_properties=(*message.user_properties, (self.idempotency_key.property_name, key))
            )
        return message

    def _fill(self, message: MqttMessage) -> MqttMessage:
        if self._no_defaults:
            return message
        defaults = self.defaults
        updates: dict[str, Any] = {
            role: getattr(defaults, role)
            for role in PROPERTY_ROLES
            if role not in ("qos", "retained")
            and getattr(message, role) is None
            and getattr(defaults, role) is not None
        }
        if defaults.user_properties:
            updates["user_properties"] = (*defaults.user_properties, *message.user_properties)
        return replace(message, **updates) if updates else message

    def describe(self) -> dict[str, Any]:
        """For display data."""
        data: dict[str, Any] = {}
        if self.mapping is not None:
            topic = self.mapping.topic
            data["topic"] = topic if isinstance(topic, str) else getattr(topic, "__name__", "callable")
            data["payload"] = repr(self.mapping.payload)
        for role in PROPERTY_ROLES:
            value = getattr(self.defaults, role)
            if value is not None:
                data[f"default_{role}"] = value if not isinstance(value, bytes) else repr(value)
        if self.idempotency_key is not None:
            data["idempotency_key"] = self.idempotency_key.property_name
        return data
