"""Payload encoders: how a record becomes the bytes of an MQTT message."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import fastavro

from tdmq_beam.errors import ConfigurationError
from tdmq_beam.records.fields import json_default

__all__ = ["AvroPayload", "FieldPayload", "JsonPayload", "PayloadEncoder", "RecordError"]


class RecordError(ValueError):
    """A record does not fit its mapping; the message names the field."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"field {field!r}: {message}" if field else message)
        self.field = field


class PayloadEncoder:
    """Turns a record into payload bytes. Subclasses name the fields they read in ``fields``."""

    content_type: str | None = None
    fields: tuple[str, ...] = ()

    def encode(self, record: Mapping[str, Any]) -> bytes:
        raise NotImplementedError


class FieldPayload(PayloadEncoder):
    """The payload is one field's value: bytes as they are, str as UTF-8.

    Args:
        field: the field's name.
        content_type: MQTT 5 content type to send with it, if any.
    """

    def __init__(self, field: str, *, content_type: str | None = None) -> None:
        if not field:
            raise ConfigurationError("FieldPayload needs a field name")
        self.field = field
        self.fields = (field,)
        self.content_type = content_type

    def encode(self, record: Mapping[str, Any]) -> bytes:
        try:
            value = record[self.field]
        except KeyError:
            raise RecordError(self.field, "is missing (it holds the payload)") from None
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        raise RecordError(self.field, f"holds the payload and must be bytes or str, got {type(value).__name__}")

    def __repr__(self) -> str:
        return f"FieldPayload({self.field!r})"


class JsonPayload(PayloadEncoder):
    """The payload is JSON of chosen fields (or the whole record).

    Bytes become base64, times ISO 8601, decimals strings.

    Args:
        fields: the fields to include, in order. Defaults to all of them.
        content_type: MQTT 5 content type. Defaults to ``application/json``.
    """

    def __init__(self, fields: Sequence[str] | None = None, *, content_type: str | None = "application/json") -> None:
        self.fields = tuple(fields) if fields is not None else ()
        self._all = fields is None
        self.content_type = content_type

    def encode(self, record: Mapping[str, Any]) -> bytes:
        if self._all:
            document = dict(record)
        else:
            document = {}
            for name in self.fields:
                try:
                    document[name] = record[name]
                except KeyError:
                    raise RecordError(name, "is missing (the JSON payload includes it)") from None
        return json.dumps(document, default=json_default, ensure_ascii=False, separators=(",", ":")).encode()

    def __repr__(self) -> str:
        return f"JsonPayload({list(self.fields) if not self._all else 'all fields'})"


class AvroPayload(PayloadEncoder):
    """The payload is the record in Avro binary (schemaless: readers need the schema).

    Args:
        schema: the Avro schema of the record (a dict, already parsed or not).
        content_type: MQTT 5 content type. Defaults to ``application/avro``.
    """

    def __init__(self, schema: Mapping[str, Any], *, content_type: str | None = "application/avro") -> None:
        self.schema = dict(schema)
        self._parsed = fastavro.parse_schema(self.schema)
        self.fields = tuple(field["name"] for field in self.schema.get("fields", ()))
        self.content_type = content_type

    def encode(self, record: Mapping[str, Any]) -> bytes:
        out = io.BytesIO()
        try:
            fastavro.schemaless_writer(out, self._parsed, record)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise RecordError(
                None, f"record does not match the Avro schema {self.schema.get('name')!r}: {exc}"
            ) from None
        return out.getvalue()

    def __reduce__(self):
        return AvroPayload, (self.schema,), {"content_type": self.content_type}

    def __setstate__(self, state: dict) -> None:
        self.content_type = state["content_type"]

    def __repr__(self) -> str:
        return f"AvroPayload({self.schema.get('name')!r})"
