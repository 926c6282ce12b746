"""The backfill's journal: each command the service accepted, recorded as the run goes, so that a
run stopped at any point (Ctrl-C, SIGKILL, a lost machine) resumes without publishing it all again.

Beside the result files, ``{output}-journal/`` gets a line per published command as soon as the
publish step hands it on (not at the end, as Beam's result files are), ``{"key": ...,
"message_id": ...}``, in files of a batch's worth of lines. The publish step hands a finished
batch on before it starts the next, so a killed run's journal holds every command the service
accepted but those of the batches still in flight: at most ``max_pending_batches`` x
``batch_size`` per worker process (one batch with ``--max-pending-batches 1``), which a resumed
run publishes again. A command's key is a SHA-256 of its record as canonical JSON, the same in every run.
``--resume`` skips every command whose key the journal holds. A file cut short by a kill ends in a
partial line, which is ignored.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from tdmq_beam.records.fields import json_default
from tdmq_beam.transforms.results import PublishedMessage

__all__ = ["SkipJournaled", "WriteJournal", "command_key", "journal_directory", "journaled_keys"]

_FLUSH_SECONDS = 0.5


def journal_directory(output: str) -> str:
    """Where the journal of a run writing ``output`` (the result files' prefix) lives."""
    return f"{output}-journal"


def command_key(record: Mapping[str, Any]) -> str:
    """The command's key in the journal: 32 hex digits of a SHA-256 of its canonical JSON."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def journaled_keys(directory: str) -> set[str]:
    """The keys of every command the journal in ``directory`` records as published."""
    keys: set[str] = set()
    pattern = FileSystems.join(directory, "part-*.jsonl")
    for metadata in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(metadata.path) as handle:
            for line in handle.read().decode("utf-8", "replace").splitlines():
                try:
                    keys.add(json.loads(line)["key"])
                except (ValueError, KeyError, TypeError):
                    continue  # the last line of a file a kill cut short
    return keys


class _WriteJournal(beam.DoFn):
    """Appends each published command's line to the open part file at once (a local file has it
    as soon as it is written), and closes the file every ``flush_every`` lines or half a second
    (an object store has a file when it is closed); the next line opens another."""

    def __init__(self, directory: str, flush_every: int) -> None:
        self._directory = directory
        self._flush_every = flush_every

    def start_bundle(self) -> None:
        self._file: Any = None
        self._lines = 0
        self._opened = 0.0

    @beam.typehints.no_annotations  # emits nothing: Beam 2.78 reads '-> None' as a non-iterable output
    def process(self, published: PublishedMessage) -> None:
        line = json.dumps({"key": command_key(published.element), "message_id": published.message_id})
        if self._file is None:
            path = FileSystems.join(self._directory, f"part-{uuid.uuid4().hex}.jsonl")
            self._file = FileSystems.create(path)  # a local folder is made as needed; object stores have none
            self._opened = time.monotonic()
        self._file.write((line + "\n").encode())
        self._file.flush()
        self._lines += 1
        if self._lines >= self._flush_every or time.monotonic() - self._opened >= _FLUSH_SECONDS:
            self._close()

    def finish_bundle(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._lines = 0


class WriteJournal(beam.PTransform):
    """Records each `PublishedMessage`'s command in the journal in ``directory`` as it comes, in
    files of ``flush_every`` commands (or half a second)."""

    def __init__(self, directory: str, *, flush_every: int) -> None:
        super().__init__()
        self._directory = directory
        self._flush_every = flush_every

    def expand(self, published: beam.PCollection) -> beam.PCollection:
        return published | beam.ParDo(_WriteJournal(self._directory, self._flush_every))


class _SkipJournaled(beam.DoFn):
    def __init__(self, directory: str, namespace: str) -> None:
        self._directory = directory
        self._skipped = Metrics.counter(namespace, "skipped")

    def setup(self) -> None:
        self._keys = journaled_keys(self._directory)

    def process(self, record: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if command_key(record) in self._keys:
            self._skipped.inc()
            return
        yield record


class SkipJournaled(beam.PTransform):
    """Drops the commands the journal in ``directory`` records as published (counted ``skipped``)."""

    def __init__(self, directory: str, *, namespace: str) -> None:
        super().__init__()
        self._directory = directory
        self._namespace = namespace

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return records | beam.ParDo(_SkipJournaled(self._directory, self._namespace))
