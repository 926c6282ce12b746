"""Received MQTT messages back into Avro records: the reverse of `avro_mapping`.

The same schema annotations and mapping files that say how a record becomes a
message say how a message becomes a record again: topic template fields are
read back out of the topic, the payload is decoded by its encoding (a field,
JSON, or Avro binary), and each MQTT property and user property goes back to
the field that plays its role. The record is then checked against the schema
with fastavro, so a message that does not fit never reaches the pipeline as
a record: `MessageDecoder.decode` raises `RecordError` with the reason.

Roles only the publisher knows (``client_id``, ``username``) are not in a
received message; their fields take their schema defaults.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
import re
import string
from collections.abc import Mapping
from typing import Any

import fastavro
from fastavro.validation import ValidationError, validate

from tdmq_beam.errors import ConfigurationError
from tdmq_beam.json_documents import DEFAULT_MAX_DEPTH, load_json
from tdmq_beam.option_checks import positive_int
from tdmq_beam.records.avro_mapping import avro_mapping, load_schema
from tdmq_beam.records.mapping import PROPERTY_ROLES
from tdmq_beam.records.payload import AvroPayload, FieldPayload, JsonPayload, RecordError
from tdmq_beam.records.received_message import ReceivedMessage

__all__ = ["MessageDecoder"]

# Roles a received message cannot carry back: the broker does not pass them on.
_PUBLISHER_ONLY = frozenset({"client_id", "username"})


def _branches(avro_type: Any) -> list[Any]:
    """The non-null branches of a field type."""
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    return [branch for branch in branches if branch != "null"]


def _primitive(avro_type: Any) -> tuple[str, str | None]:
    """(type name, logical type) of a field's first non-null branch."""
    branches = _branches(avro_type) or ["null"]
    first = branches[0]
    if isinstance(first, dict):
        return str(first.get("type")), first.get("logicalType")
    return str(first), None


def _from_text(field: str, text: str, avro_type: Any) -> Any:
    """A field's value from text (a topic level or a user property)."""
    kind, _ = _primitive(avro_type)
    try:
        if kind in ("int", "long"):
            return int(text)
        if kind in ("float", "double"):
            return float(text)
        if kind == "boolean":
            if text not in ("true", "false"):
                raise ValueError(f"{text!r} is not true or false")
            return text == "true"
        if kind == "bytes":
            return text.encode()
    except ValueError as exc:
        raise RecordError(field, f"cannot hold {text!r} ({exc})") from None
    return text


def _from_json(value: Any, avro_type: Any) -> Any:
    """A JSON value as the field's type wants it: the reverse of `json_default`."""
    kind, logical = _primitive(avro_type)
    if isinstance(value, str):
        if kind == "bytes":
            try:
                return base64.b64decode(value, validate=True)
            except ValueError:
                return value  # not base64: validation names the field
        if kind == "long" and logical in ("timestamp-millis", "timestamp-micros"):
            try:
                return datetime.datetime.fromisoformat(value)
            except ValueError:
                return value
    return value


class MessageDecoder:
    """Turns `ReceivedMessage` back into records of an Avro schema.

    Args:
        schema: the record schema (dict, JSON text or ``.avsc`` path) with its
            ``mqtt.*`` annotations, as used to write.
        mapping_file: a mapping (dict or JSON file path) adding to or overriding
            the annotations, as used to write.
        max_depth: a JSON payload nested deeper (arrays and objects) does not decode
            (`RecordError`), where Python's parser would raise `RecursionError`. Defaults to 64.

    Raises:
        ConfigurationError: the schema or mapping cannot work (naming the field).
    """

    def __init__(
        self,
        schema: str | os.PathLike | Mapping[str, Any],
        mapping_file: str | os.PathLike | Mapping | None = None,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.max_depth = positive_int("max_depth", max_depth)
        self.schema = load_schema(schema)
        self.mapping = avro_mapping(self.schema, mapping_file)
        self._parsed = fastavro.parse_schema(self.schema)
        self._fields = {field["name"]: field for field in self.schema["fields"]}
        self._topic = self._topic_pattern()

    def _topic_pattern(self) -> re.Pattern[str] | None:
        template = self.mapping.topic
        if not isinstance(template, str):
            return None  # a callable topic cannot be read backwards
        parts = []
        for literal, name, _, _ in string.Formatter().parse(template):
            parts.append(re.escape(literal))
            if name is not None:
                parts.append(f"(?P<{name}>[^/]+)")
        return re.compile("".join(parts))

    def decode(self, message: ReceivedMessage) -> dict[str, Any]:
        """The record ``message`` carries.

        Raises:
            RecordError: the topic, payload or a property does not fit the schema (the reason says which).
        """
        record: dict[str, Any] = {}
        if self._topic is not None:
            match = self._topic.fullmatch(message.topic)
            if match is None:
                raise RecordError(None, f"topic {message.topic!r} does not match the template {self.mapping.topic!r}")
            for name, text in match.groupdict().items():
                record[name] = _from_text(name, text, self._fields[name]["type"])
        self._decode_payload(message.payload, record)
        self._decode_properties(message, record)
        for name, field in self._fields.items():
            if name not in record and "default" in field:
                record[name] = field["default"]
        try:
            validate(record, self._parsed, raise_errors=True)
        except ValidationError as exc:
            raise RecordError(None, f"does not match schema {self.schema.get('name')!r}: {_first_line(exc)}") from None
        return record

    def _decode_payload(self, payload: bytes, record: dict[str, Any]) -> None:
        encoder = self.mapping.payload
        if isinstance(encoder, FieldPayload):
            kind, _ = _primitive(self._fields[encoder.field]["type"])
            if kind == "string":
                try:
                    record[encoder.field] = payload.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise RecordError(encoder.field, f"holds the payload, which is not UTF-8 ({exc.reason})") from None
            else:
                record[encoder.field] = payload
        elif isinstance(encoder, JsonPayload):
            try:
                document = load_json(payload, max_depth=self.max_depth)
            except ValueError as exc:
                raise RecordError(None, f"payload is not JSON ({exc})") from None
            if not isinstance(document, dict):
                raise RecordError(None, f"payload is JSON {type(document).__name__}, not an object")
            names = encoder.fields or tuple(document)
            for name in names:
                if name in document and name in self._fields:
                    record[name] = _from_json(document[name], self._fields[name]["type"])
        elif isinstance(encoder, AvroPayload):
            try:
                decoded = fastavro.schemaless_reader(io.BytesIO(payload), self._parsed, None)
            except Exception as exc:  # fastavro raises whatever the bytes lead it to
                raise RecordError(None, f"payload is not an Avro {self.schema.get('name')!r} record ({exc})") from None
            assert isinstance(decoded, dict)  # the schema is a record
            record.update(decoded)
        else:
            raise ConfigurationError("the mapping's payload is a callable, which cannot be decoded")

    def _decode_properties(self, message: ReceivedMessage, record: dict[str, Any]) -> None:
        mapping = self.mapping
        for role in PROPERTY_ROLES:
            name = getattr(mapping, role)
            if name is None or role in _PUBLISHER_ONLY:
                continue
            value = getattr(message, role)
            if value is None:
                continue
            if isinstance(value, bytes) and _primitive(self._fields[name]["type"])[0] == "string":
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise RecordError(name, f"({role}) holds bytes that are not UTF-8") from None
            record[name] = value
        user_properties = mapping.user_properties
        if isinstance(user_properties, str):
            pairs = [(prop.key, prop.value) for prop in message.user_properties]
            kind, _ = _primitive(self._fields[user_properties]["type"])
            record[user_properties] = dict(pairs) if kind == "map" else [{"key": k, "value": v} for k, v in pairs]
        elif isinstance(user_properties, Mapping):
            for key, name in user_properties.items():
                text = message.user_property(key)
                if text is not None:
                    record[name] = _from_text(name, text, self._fields[name]["type"])

    def __repr__(self) -> str:
        return f"MessageDecoder({self.schema.get('name')!r})"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    try:  # fastavro puts a JSON list of problems in the message
        problems = json.loads(text)
        if isinstance(problems, list) and problems:
            return "; ".join(str(problem) for problem in problems[:3])
    except ValueError:
        pass
    return text.splitlines()[0] if text else type(exc).__name__
