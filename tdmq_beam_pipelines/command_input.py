"""Reading commands from files (JSON Lines or Avro), where a bad line or record never stops the run.

Every line that is not JSON, and every record that does not fit its Avro schema
(checked type by type with fastavro's validation), goes to the failed output as
a `FailedMessage` whose reason says where it was: the file's name and the
1-based line number (JSON Lines) or the record's 1-based position (Avro).
Files are read whole by one worker each (``fileio.MatchFiles`` +
``ReadMatches``): line numbers need that, and backfill inputs come as many files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
import fastavro
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from fastavro.validation import ValidationError, validate

from tdmq_beam import FailedMessage
from tdmq_beam.transforms.outputs import par_do_with_outputs
from tdmq_beam.transforms.runner_limits import RunnerCapabilities

__all__ = ["CommandInput", "ReadCommands"]

FAILED = "failed"


class CommandInput(NamedTuple):
    """The commands read (dicts), and the lines and records that could not be (`FailedMessage`)."""

    records: beam.PCollection[dict]
    failed: beam.PCollection[FailedMessage]


def _schema_problem(record: Any, parsed_schema: Any) -> str | None:
    if not isinstance(record, dict):
        return f"a command must be a JSON object, got {type(record).__name__}"
    try:
        validate(record, parsed_schema, raise_errors=True)
    except ValidationError as exc:
        problems = "; ".join(str(problem) for problem in exc.errors) or str(exc)
        return f"does not match the schema: {problems}"
    return None


class _ReadFile(beam.DoFn):
    """One file's commands, each checked against the schema; what does not fit goes to ``failed``."""

    def __init__(self, schema: dict, file_format: str, counter_namespace: str, pairs: bool) -> None:
        self._schema = schema
        self._format = file_format
        self._pairs = pairs  # (tag, value) on one output: see tdmq_beam.transforms.outputs
        self._read = Metrics.counter(counter_namespace, "read")

    def setup(self) -> None:
        self._parsed = fastavro.parse_schema(self._schema)
        # A JSON record may leave out fields that have a default, as an Avro reader would fill them in.
        self._defaults = {
            field["name"]: field["default"] for field in self._schema.get("fields", ()) if "default" in field
        }

    def process(self, readable: fileio.ReadableFile) -> Iterator[Any]:
        path = readable.metadata.path
        name = os.path.basename(path)
        file_format = self._format
        if file_format == "auto":
            file_format = "avro" if path.endswith(".avro") else "jsonl"
        items = _avro_records(readable, name) if file_format == "avro" else _json_lines(readable, name)
        for item in items:
            self._read.inc()
            problem = item.problem or _schema_problem(item.record, self._parsed)
            if problem is None:
                command = {**self._defaults, **item.record} if self._defaults else item.record
                yield (None, command) if self._pairs else command
            else:
                kind = "unparseable" if item.record is None else "invalid_record"
                element = item.record if item.record is not None else item.raw
                failure = FailedMessage(element, None, None, kind, f"{item.location}: {problem}", 0)
                yield (FAILED, failure) if self._pairs else beam.pvalue.TaggedOutput(FAILED, failure)


class _Item(NamedTuple):
    """One line or record: where it was, its text (lines), the record it holds, or why it holds none."""

    location: str
    raw: str | None
    record: Any
    problem: str | None = None


def _json_lines(readable: fileio.ReadableFile, name: str) -> Iterator[_Item]:
    with readable.open() as handle:
        for number, data in enumerate(handle, 1):
            location = f"{name} line {number}"
            text = data.decode("utf-8", "replace").rstrip("\n")
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield _Item(location, text, None, f"not UTF-8 ({exc.reason})")
                continue
            if not text.strip():
                continue
            try:
                yield _Item(location, text, json.loads(text))
            except ValueError as exc:
                yield _Item(location, text, None, f"not valid JSON ({exc})")


def _avro_records(readable: fileio.ReadableFile, name: str) -> Iterator[_Item]:
    with readable.open(mime_type="application/octet-stream") as handle:
        try:
            for position, record in enumerate(fastavro.reader(handle), 1):
                yield _Item(f"{name} record {position}", None, record)
        except (ValueError, EOFError, fastavro.read.SchemaResolutionError) as exc:
            yield _Item(name, name, None, f"not a readable Avro file ({exc})")


class ReadCommands(beam.PTransform):
    """Reads commands from files matching ``pattern``; returns a `CommandInput`.

    Args:
        pattern: a file pattern (local or any Beam file system).
        schema: the Avro schema (a dict) each command must fit.
        file_format: ``jsonl``, ``avro``, or ``auto`` (by each file's extension). Defaults to auto.
        counter_namespace: where the ``read`` counter goes.
    """

    def __init__(self, pattern: str, schema: dict, *, file_format: str = "auto", counter_namespace: str) -> None:
        super().__init__()
        self._pattern = pattern
        self._schema = schema
        self._format = file_format
        self._namespace = counter_namespace

    def expand(self, pipeline: beam.pvalue.PBegin) -> CommandInput:
        if not RunnerCapabilities.of(pipeline.pipeline).file_io:
            # Beam's Dask runner translates no file read (fileio's yields nothing there): the
            # files are matched here and handed over as elements.
            matched = FileSystems.match([self._pattern])[0].metadata_list
            files = pipeline | "Files" >> beam.Create([fileio.ReadableFile(metadata) for metadata in matched])
        else:
            files = pipeline | "Match" >> fileio.MatchFiles(self._pattern) | "Open" >> fileio.ReadMatches()
        outputs = par_do_with_outputs(
            files,
            "ReadAndCheck",
            lambda pairs: _ReadFile(self._schema, self._format, self._namespace, pairs),
            "records",
            {"records": dict, FAILED: FailedMessage},
        )
        return CommandInput(outputs["records"], outputs[FAILED])
