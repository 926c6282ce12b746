"""Avro records onto MQTT messages: a `MessageMapping` declared in the schema or a mapping file.

In the schema, the record carries ``mqtt.topic`` (a template over its fields)
and ``mqtt.payload``; fields carry ``mqtt.role`` (and ``mqtt.key`` for a user
property)::

    {"type": "record", "name": "DeviceCommand",
     "mqtt.topic": "devices/{device_id}/commands",
     "mqtt.payload": {"encoding": "json", "fields": ["command_id", "command"]},
     "fields": [
       {"name": "device_id", "type": "string"},
       {"name": "qos", "type": ["null", "int"], "default": null, "mqtt.role": "qos"},
       {"name": "trace_id", "type": ["null", "string"], "mqtt.role": "user_property", "mqtt.key": "trace-id"},
       ...]}

A mapping file (JSON) says the same beside a schema that has no annotations;
where both speak, the file wins::

    {"topic": "devices/{device_id}/commands",
     "payload": {"encoding": "field", "field": "body"},
     "roles": {"qos": "qos", "message_expiry_interval": "expiry_seconds"},
     "user_properties": {"trace-id": "trace_id"}}

``payload.encoding`` is ``field`` (a bytes or string field), ``json`` (of
``fields``, or all) or ``avro`` (the whole record in Avro binary). Every field
named is checked against the schema when the mapping is built: an unknown
field or a type that cannot play its role is a `ValueError` naming the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fastavro

from tdmq_beam.errors import ConfigurationError
from tdmq_beam.records.mapping import PROPERTY_ROLES, MessageMapping
from tdmq_beam.records.payload import AvroPayload, FieldPayload, JsonPayload, PayloadEncoder
from tdmq_beam.rules.message_properties import MESSAGE_PROPERTIES

__all__ = ["avro_mapping", "load_mapping_file", "load_schema"]

# Avro types (after removing "null" from unions) each role accepts.
_ACCEPTS: dict[str, frozenset[str]] = {
    **{setting.name: setting.avro_types for setting in MESSAGE_PROPERTIES},
    "topic": frozenset({"string", "int", "long", "enum", "boolean"}),
    "topic_field": frozenset({"string"}),
    "payload": frozenset({"bytes", "string", "fixed"}),
    "user_property": frozenset({"string", "int", "long", "boolean", "enum", "double", "float"}),
    "user_properties": frozenset({"map<string>", "array<key-value>"}),
    "json": frozenset(),  # any type
}


def load_schema(schema: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """An Avro schema from a dict, JSON text, or the path of an ``.avsc`` file.

    Raises:
        ValueError: the schema cannot be read or is not a valid Avro record schema.
    """
    if isinstance(schema, Mapping):
        document = dict(schema)
    else:
        text = os.fspath(schema)
        if isinstance(schema, str) and text.lstrip().startswith("{"):
            source = "schema text"
        else:
            source = f"schema file {text}"
            try:
                text = Path(text).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigurationError(f"cannot read {source}: {exc.strerror}") from None
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(f"{source} is not JSON: {exc}") from None
    try:
        fastavro.parse_schema(document)
    except Exception as exc:  # fastavro raises several types for bad schemas
        raise ConfigurationError(f"not a valid Avro schema: {exc}") from None
    if document.get("type") != "record":
        raise ConfigurationError("the schema must be an Avro record")
    return document


def load_mapping_file(path: str | os.PathLike) -> dict[str, Any]:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read mapping file {os.fspath(path)}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigurationError(f"mapping file {os.fspath(path)} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigurationError(f"mapping file {os.fspath(path)} must hold a JSON object")
    return document


def _type_names(avro_type: Any, named: dict[str, str]) -> set[str]:
    """The non-null type names a field may hold (map and array with their item kind)."""
    if isinstance(avro_type, list):
        names: set[str] = set()
        for branch in avro_type:
            names |= _type_names(branch, named)
        return names
    if isinstance(avro_type, dict):
        kind = avro_type.get("type")
        if kind in ("enum", "fixed", "record"):
            named[avro_type.get("name", "")] = kind
            if avro_type.get("namespace"):
                named[f"{avro_type['namespace']}.{avro_type.get('name', '')}"] = kind
            return {kind}
        if kind == "map":
            return {"map<string>"} if _type_names(avro_type.get("values"), named) == {"string"} else {"map"}
        if kind == "array":
            items = avro_type.get("items")
            if isinstance(items, dict) and items.get("type") == "record":
                fields = {f["name"]: _type_names(f["type"], named) for f in items.get("fields", ())}
                if fields.get("key") == {"string"} and fields.get("value") == {"string"}:
                    return {"array<key-value>"}
            return {"array"}
        return _type_names(kind, named)
    if avro_type == "null":
        return set()
    if isinstance(avro_type, str) and avro_type in named:
        return {named[avro_type]}
    return {avro_type}


def _role_problem(role: str, field: str, types: set[str]) -> str | None:
    accepted = _ACCEPTS[role]
    if not accepted or (types and types <= accepted):
        return None
    shown = " | ".join(sorted(types)) or "null"
    needed = " or ".join(sorted(accepted))
    return f"field {field!r} is {shown}; as {role.replace('_', ' ')} it must be {needed}"


def avro_mapping(
    schema: str | os.PathLike | Mapping[str, Any],
    mapping_file: str | os.PathLike | Mapping[str, Any] | None = None,
) -> MessageMapping:
    """Builds and validates the mapping of an Avro record schema onto MQTT messages.

    Args:
        schema: the record schema (dict, JSON text or ``.avsc`` path), with or
            without ``mqtt.*`` annotations.
        mapping_file: a mapping (dict or JSON file path) that adds to or
            overrides the schema's annotations.

    Raises:
        ValueError: naming the field or setting that does not fit.
    """
    document = load_schema(schema)
    spec = load_mapping_file(mapping_file) if isinstance(mapping_file, (str, os.PathLike)) else dict(mapping_file or {})
    unknown = set(spec) - {"topic", "payload", "roles", "user_properties"}
    if unknown:
        raise ConfigurationError(
            f"mapping has unknown key(s) {sorted(unknown)}: use topic, payload, roles, user_properties"
        )

    named: dict[str, str] = {}
    field_types = {f["name"]: _type_names(f["type"], named) for f in document["fields"]}
    record_name = document.get("name", "record")

    def require(name: Any, role: str) -> str:
        if not isinstance(name, str) or name not in field_types:
            raise ConfigurationError(f"mapping names field {name!r}, which schema {record_name!r} does not have")
        problem = _role_problem(role, name, field_types[name])
        if problem:
            raise ConfigurationError(problem)
        return name

    # What the schema's annotations say.
    roles: dict[str, str] = {}
    user_properties: dict[str, str] | str | None = None
    topic: str | None = document.get("mqtt.topic")
    payload_spec: Any = document.get("mqtt.payload")
    for avro_field in document["fields"]:
        role = avro_field.get("mqtt.role")
        if role is None:
            continue
        name = avro_field["name"]
        if role in PROPERTY_ROLES:
            roles[role] = name
        elif role == "user_property":
            if not isinstance(user_properties, dict):
                user_properties = {}
            user_properties[avro_field.get("mqtt.key", name)] = name
        elif role == "user_properties":
            user_properties = name
        elif role == "payload":
            payload_spec = payload_spec or {"encoding": "field", "field": name}
        elif role == "topic":
            topic = topic or "{" + name + "}"
            require(name, "topic_field")
        else:
            raise ConfigurationError(f"field {name!r} has unknown mqtt.role {role!r}")

    # What the mapping file says wins.
    topic = spec.get("topic", topic)
    payload_spec = spec.get("payload", payload_spec)
    roles.update(spec.get("roles") or {})
    user_properties = spec.get("user_properties", user_properties)

    if not isinstance(topic, str) or not topic:
        raise ConfigurationError(
            f"no topic: give schema {record_name!r} an 'mqtt.topic' template or the mapping a 'topic'"
        )
    for role, name in roles.items():
        if role not in PROPERTY_ROLES:
            raise ConfigurationError(f"unknown role {role!r}; roles are {', '.join(PROPERTY_ROLES)}")
        require(name, role)
    if isinstance(user_properties, str):
        require(user_properties, "user_properties")
    elif isinstance(user_properties, Mapping):
        for name in user_properties.values():
            require(name, "user_property")
    elif user_properties is not None:
        raise ConfigurationError("user_properties must name a field or map property keys to field names")

    payload = _payload_encoder(payload_spec, document, require)
    mapping = MessageMapping(topic=topic, payload=payload, user_properties=user_properties, **roles)
    for name in mapping.topic_fields():
        require(name, "topic")
    return mapping


def _payload_encoder(spec: Any, document: dict[str, Any], require) -> PayloadEncoder:
    if spec is None:
        raise ConfigurationError(
            "no payload: add 'mqtt.payload' to the schema, a field with mqtt.role payload, or 'payload'"
        )
    if isinstance(spec, str):
        spec = {"encoding": "field", "field": spec}
    if not isinstance(spec, Mapping):
        raise ConfigurationError("payload must be a field name or {'encoding': 'field' | 'json' | 'avro', ...}")
    encoding = spec.get("encoding", "field")
    content_type = spec.get("content_type")
    if encoding == "field":
        return FieldPayload(require(spec.get("field"), "payload"), content_type=content_type)
    if encoding == "json":
        fields = spec.get("fields")
        if fields is not None:
            fields = [require(name, "json") for name in fields]
        return JsonPayload(fields, content_type=content_type or "application/json")
    if encoding == "avro":
        return AvroPayload(document, content_type=content_type or "application/avro")
    raise ConfigurationError(f"unknown payload encoding {encoding!r}: use field, json or avro")
