"""`RecordCheck`: a record checked against its Avro schema, type by type, before it is mapped.

The backfill's readers and the Beam YAML write take records from outside (JSON lines, rows);
the same check decides for both what fits the schema, so a map arrives as a map and a long as a
long, and a record that does not fit is a dead letter naming the field, never a message with a
value the schema does not allow. Fields the record leaves out that have a default get it, as an
Avro reader would fill them in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fastavro
from fastavro.validation import ValidationError, validate

from tdmq_beam.records.sourced_record import SourcedRecord

__all__ = ["RecordCheck"]


class RecordCheck:
    """Checks records against ``schema`` (an Avro record schema, as a dict).

    Args:
        schema: the record schema.
        noun: what a record is called in messages ("command"). Defaults to "record".
    """

    def __init__(self, schema: Mapping[str, Any], *, noun: str = "record") -> None:
        self._parsed = fastavro.parse_schema(dict(schema))
        self._defaults = {field["name"]: field["default"] for field in schema.get("fields", ()) if "default" in field}
        self._noun = noun

    def problem(self, record: Any) -> str | None:
        """Why ``record`` does not fit the schema, or None."""
        if not isinstance(record, Mapping):
            return f"a {self._noun} must be a JSON object, got {type(record).__name__}"
        try:
            validate(record, self._parsed, raise_errors=True)
        except ValidationError as exc:
            problems = "; ".join(str(problem) for problem in exc.errors) or str(exc)
            return f"does not match the schema: {problems}"
        return None

    def with_defaults(self, record: Mapping[str, Any], source: Any) -> SourcedRecord:
        """``record`` with the schema's defaults for the fields it leaves out, and its ``source``
        (one dict built, whatever the defaults)."""
        return SourcedRecord(source, record, self._defaults)
