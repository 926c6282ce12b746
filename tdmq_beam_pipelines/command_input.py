"""Reading commands from files (JSON Lines or Avro), where a bad line or record never stops the run.

Every line that is not JSON, and every record that does not fit its Avro schema
(checked type by type with fastavro's validation), goes to the failed output as
a `FailedMessage` whose reason says where it was: the file's name and the
1-based line number (JSON Lines) or the record's 1-based position (Avro).
Files are read whole by one worker each (``fileio.MatchFiles`` +
``ReadMatches``): line numbers need that, and backfill inputs come as many files.

Input is bounded where a hostile or broken file could exhaust a worker: a line
longer than ``max_line_bytes`` is not held in memory (the dead letter keeps
its first bytes), and a JSON document nested deeper than ``max_depth`` is a
dead letter (`tdmq_beam.json_documents`), never a `RecursionError`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
import fastavro
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from tdmq_beam import FailedMessage
from tdmq_beam.json_documents import DEFAULT_MAX_DEPTH, load_json
from tdmq_beam.option_checks import positive_int
from tdmq_beam.records.record_check import RecordCheck
from tdmq_beam.records.sourced_record import source_of
from tdmq_beam.transforms.graceful_stop import stop_requested
from tdmq_beam.transforms.outputs import par_do_with_outputs
from tdmq_beam.transforms.runner_limits import RunnerCapabilities

__all__ = ["DEFAULT_MAX_LINE_BYTES", "CommandInput", "ReadCommands", "input_problem"]

FAILED = "failed"
DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024
"""The longest JSON line read (a command with a payload of 1 MiB, `TdmqConnection`'s default
``max_payload_bytes``, fits, base64 and all)."""
_EXCERPT = 256  # characters of an overlong line kept in its dead letter


def with_location(failure: FailedMessage) -> FailedMessage:
    """``failure`` with its command's file and line in front of the reason, where it has them:
    what only the write finds (a topic that is no topic name, a payload over the limit, a refused
    publish) says where the command was, as the reader's own refusals do."""
    if (location := source_of(failure.element)) is not None:
        return dataclasses.replace(failure, reason=f"{location}: {failure.reason}")
    return failure


class CommandInput(NamedTuple):
    """The commands read (dicts), and the lines and records that could not be (`FailedMessage`)."""

    records: beam.PCollection[dict]
    failed: beam.PCollection[FailedMessage]


class _ReadFile(beam.DoFn):
    """One file's commands, each checked against the schema; what does not fit goes to ``failed``."""

    def __init__(
        self,
        schema: dict,
        file_format: str,
        counter_namespace: str,
        pairs: bool,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self._schema = schema
        self._format = file_format
        self._max_line_bytes = max_line_bytes
        self._max_depth = max_depth
        self._pairs = pairs  # (tag, value) on one output: see tdmq_beam.transforms.outputs
        self._read = Metrics.counter(counter_namespace, "read")

    def setup(self) -> None:
        self._check = RecordCheck(self._schema, noun="command")

    def process(self, readable: fileio.ReadableFile) -> Iterator[Any]:
        path = readable.metadata.path
        name = os.path.basename(path)
        file_format = self._format
        if file_format == "auto":
            file_format = "avro" if path.endswith(".avro") else "jsonl"
        items = (
            _avro_records(readable, name)
            if file_format == "avro"
            else _json_lines(readable, name, self._max_line_bytes, self._max_depth)
        )
        for item in items:
            if stop_requested():
                break  # stopped by a signal: what was read goes through, the rest waits for --resume
            self._read.inc()
            problem = item.problem or self._check.problem(item.record)
            if problem is None:
                # a JSON line may leave out defaulted fields; the command knows its file and line
                command = self._check.with_defaults(item.record, item.location)
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


def _json_lines(readable: fileio.ReadableFile, name: str, max_line_bytes: int, max_depth: int) -> Iterator[_Item]:
    with readable.open() as handle:
        for number, (data, length) in enumerate(_bounded_lines(handle, max_line_bytes), 1):
            location = f"{name} line {number}"
            if length > max_line_bytes:
                excerpt = data.decode("utf-8", "replace") + "..."
                yield _Item(location, excerpt, None, f"a line of {length} bytes, over the limit of {max_line_bytes}")
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield _Item(location, data.decode("utf-8", "replace"), None, f"not UTF-8 ({exc.reason})")
                continue
            if not text.strip():
                continue
            try:
                yield _Item(location, text, load_json(text, max_depth=max_depth))
            except ValueError as exc:
                yield _Item(location, text, None, f"not valid JSON ({exc})")


def _bounded_lines(handle: Any, limit: int, chunk: int = 1024 * 1024) -> Iterator[tuple[bytes, int]]:
    """Each line of ``handle`` without its newline, with its length; of a line longer than
    ``limit``, only its first bytes (the rest is read past, never held). Reads with ``read(n)``
    alone, which every Beam file handle has (compressed ones have no ``readline(limit)``)."""
    keep = max(limit, _EXCERPT)
    pending: list[bytes] = []  # the line so far (its first bytes, once it is longer than keep)
    held = 0  # the line's length so far
    while block := handle.read(chunk):
        start = 0
        while True:
            end = block.find(b"\n", start)
            piece = block[start:] if end < 0 else block[start:end]
            if held <= keep:
                pending.append(piece)
            held += len(piece)
            if end < 0:
                break
            yield _line(pending, held, limit), held
            pending, held, start = [], 0, end + 1
    if held:
        yield _line(pending, held, limit), held


def _line(pieces: list[bytes], length: int, limit: int) -> bytes:
    data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    return data[:_EXCERPT] if length > limit else data


def _avro_records(readable: fileio.ReadableFile, name: str) -> Iterator[_Item]:
    with readable.open(mime_type="application/octet-stream") as handle:
        try:
            for position, record in enumerate(fastavro.reader(handle), 1):
                yield _Item(f"{name} record {position}", None, record)
        except Exception as exc:  # fastavro raises whatever corrupt bytes lead it to (KeyError, struct.error, ...)
            yield _Item(name, name, None, f"not a readable Avro file ({type(exc).__name__}: {exc})")


def input_problem(pattern: str, *, allow_empty: bool = False) -> str | None:
    """Why ``pattern`` is no input to run on, in one line (None when it matches files): a path
    that does not exist, or a pattern that matches nothing (unless ``allow_empty``). Beam's own
    answer comes later and at length (``ValueError: ALLOW_IF_WILDCARD``)."""
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as exc:  # a file system Beam cannot reach (no credentials, no such bucket)
        return f"--input {pattern}: cannot list it ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    if matched:
        return None
    if not any(mark in pattern for mark in "*?["):
        return f"--input {pattern}: no such file"
    if allow_empty:
        return None
    return f"--input {pattern} matches no file (give --allow-empty-input to run on none)"


class ReadCommands(beam.PTransform):
    """Reads commands from files matching ``pattern``; returns a `CommandInput`.

    Args:
        pattern: a file pattern (local or any Beam file system).
        schema: the Avro schema (a dict) each command must fit.
        file_format: ``jsonl``, ``avro``, or ``auto`` (by each file's extension). Defaults to auto.
        counter_namespace: where the ``read`` counter goes.
        max_line_bytes: a longer JSON line is a dead letter (with its first bytes), never read
            into memory whole. Defaults to 4 MiB.
        max_depth: a JSON line nested deeper (arrays and objects) is a dead letter. Defaults to 64.
    """

    def __init__(
        self,
        pattern: str,
        schema: dict,
        *,
        file_format: str = "auto",
        counter_namespace: str,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        super().__init__()
        self._max_line_bytes = positive_int("max_line_bytes", max_line_bytes)
        self._max_depth = positive_int("max_depth", max_depth)
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
            lambda pairs: _ReadFile(
                self._schema, self._format, self._namespace, pairs, self._max_line_bytes, self._max_depth
            ),
            "records",
            {"records": dict, FAILED: FailedMessage},
        )
        return CommandInput(outputs["records"], outputs[FAILED])
