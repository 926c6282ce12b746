"""The backfill's journal: each command the service accepted, recorded as the run goes, so that a
run stopped at any point (Ctrl-C, SIGKILL, a lost machine) resumes without publishing it all again.

Beside the result files, ``{output}-journal/`` gets one file per batch of published commands,
written as soon as the publish step hands the batch on (not at the end, as Beam's result files
are), each line ``{"key": ..., "message_id": ...}``. So a killed run's journal holds every
command the service accepted but those still in flight: at most the write's pending batches
(``max_pending_batches`` x ``batch_size`` per worker process), which a resumed run publishes
again. A command's key is a SHA-256 of its record as canonical JSON, the same in every run.
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
    def __init__(self, directory: str, flush_every: int) -> None:
        self._directory = directory
        self._flush_every = flush_every

    def start_bundle(self) -> None:
        self._lines: list[str] = []
        self._since = time.monotonic()

    def process(self, published: PublishedMessage) -> None:
        self._lines.append(json.dumps({"key": command_key(published.element), "message_id": published.message_id}))
        if len(self._lines) >= self._flush_every or time.monotonic() - self._since >= _FLUSH_SECONDS:
            self._flush()

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        self._since = time.monotonic()
        if not self._lines:
            return
        path = FileSystems.join(self._directory, f"part-{uuid.uuid4().hex}.jsonl")
        with FileSystems.create(path) as handle:  # a local folder is made as needed; object stores have none
            handle.write(("\n".join(self._lines) + "\n").encode())
        self._lines = []


class WriteJournal(beam.PTransform):
    """Records each `PublishedMessage`'s command in the journal in ``directory``, a file per
    ``flush_every`` commands (or half a second)."""

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
