"""The DoFn machinery the transforms share: calls in concurrent batches on the worker's client.

`BatchedCallsFn` buffers elements, hands every ``batch_size`` of them to the
worker process's shared client (its event loop runs the batch while more
elements arrive), keeps at most ``max_pending_batches`` batches outstanding,
and emits each element's outputs in the element's own timestamp and windows.
Batches finish in any order: one slow call holds up only its own batch.
Subclasses say how an element becomes a call (`prepare`), how a batch of
calls runs (`start`) and what a result becomes (`output`).

Two Beam details shape it. Each element is handled once, whatever windows it
is in (``WindowedValueParam``, not per-window invocation). And finished
outputs are emitted only while the current input is in exactly one window,
or at the bundle's end: Beam multiplies the windows of values emitted while
it processes a multi-window input.

`AttachWindowing` prepares input for the sharded path: it moves each element,
once, into the global window for `GroupIntoBatches`, with its timestamp and
windows alongside, which `BatchedCallsFn(batched_input=True)` restores.
"""

from __future__ import annotations

import collections
import concurrent.futures
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal
from urllib.parse import urlsplit

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import WindowedValue

from tdmq_beam.errors import ConfigurationError, InvalidMessageError
from tdmq_beam.option_checks import instance_of, one_of, optional, positive, positive_int
from tdmq_beam.service.cloud_api import CLOUD_IN_FLIGHT, CloudApiConfig
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.transforms.progress import Progress, progress_for
from tdmq_beam.transforms.results import failure_from_error
from tdmq_beam.transforms.worker_client import WorkerClientFn

__all__ = [
    "FAILED",
    "AttachWindowing",
    "BatchedCallsFn",
    "Batching",
    "BatchingMode",
    "sharded_batches",
    "use_sharded_batching",
]

FAILED = "failed"
"""The tag of every transform's failed output."""

_GLOBAL = (window.GlobalWindow(),)

Output = tuple[str | None, Any]
"""(output tag or None for the main output, value)."""


_Pending = tuple[Any, Any, WindowedValue]
"""(element, its call, the element in its windows)."""


class BatchedCallsFn(WorkerClientFn):
    """Base DoFn: elements -> calls in concurrent batches on the shared client -> outputs.

    Args:
        connection, cloud: what the worker's client is made from.
        tag: one worker-process client per tag (per transform instance).
        namespace: the metrics namespace; ``COUNTERS`` become ``self.counters``.
        batch_size, max_pending_batches: see `CallTransform`.
        batched_input: elements arrive batched by `sharded_batches`.
        output_pairs: emit ``(tag, value)`` on the main output instead of tagged outputs.
        complete_in_process: finish every call of an input batch before ``process`` returns,
            emitting nothing from ``finish_bundle`` (for Beam's Dask runner, which drops that:
            see `grouped_batches`).
        progress: (label, interval seconds, expected elements or None) to log progress, or None.
    """

    COUNTERS: tuple[str, ...] = ("failed",)

    def __init__(
        self,
        *,
        connection: TdmqConnection | None,
        cloud: CloudApiConfig | None,
        tag: str,
        namespace: str,
        batch_size: int,
        max_pending_batches: int,
        batched_input: bool = False,
        output_pairs: bool = False,
        complete_in_process: bool = False,
        progress: tuple[str, float, int | None] | None = None,
    ) -> None:
        super().__init__(connection, cloud, tag)
        self._batch_size = batch_size
        self._max_pending = max_pending_batches
        self._batched_input = batched_input
        self._output_pairs = output_pairs  # (tag, value) on the one output: see `outputs.par_do_with_outputs`
        self._complete_in_process = complete_in_process
        self._progress_settings = progress
        self._progress: Progress | None = None
        self.counters = {name: Metrics.counter(namespace, name) for name in self.COUNTERS}

    # -- for subclasses ----------------------------------------------------------

    def prepare(self, element: Any) -> Any:
        """The call to make for ``element``; raise `InvalidMessageError` to reject it at once."""
        raise NotImplementedError

    def reject(self, element: Any, error: InvalidMessageError) -> Output:
        """The output for an element `prepare` rejected: by default a `FailedMessage` (no attempt made)."""
        self.counters["failed"].inc()
        return FAILED, failure_from_error(element, None, error, attempts=0)

    def start(self, work: list[Any]) -> concurrent.futures.Future:
        """Starts a batch of calls on ``self.client``, ``self.concurrency`` at a time; the future
        holds one result per call."""
        raise NotImplementedError

    @property
    def concurrency(self) -> int:
        """Calls at once per batch: all batches together run about twice the connection's
        ``max_in_flight``, enough to keep every connection busy while some calls wait out a
        backoff, few enough that idle workers do not crowd the event loop."""
        in_flight = self._connection.max_in_flight if self._connection is not None else CLOUD_IN_FLIGHT
        return max(2, -(-2 * in_flight // self._max_pending))

    def output(self, element: Any, work: Any, result: Any) -> Output:
        """The output for one element whose call finished with ``result``: (tag or None, value)."""
        raise NotImplementedError

    def batch_done(self, results: Any) -> None:
        """Called once per finished batch, on the DoFn's thread (for metrics)."""

    @property
    def instance(self) -> str:
        """``host:port`` of the instance, as lineage names it (the instance id for cloud-only transforms)."""
        if self._connection is None:
            return self._cloud.instance_id if self._cloud is not None else ""
        return urlsplit(self._connection.endpoint).netloc

    # -- beam.DoFn ----------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self._setup_progress()

    def _setup_progress(self) -> None:
        if self._progress_settings is not None:
            self._progress = progress_for(self._tag, *self._progress_settings)

    def start_bundle(self) -> None:
        super().start_bundle()
        self._buffer: list[_Pending] = []
        self._outstanding: dict[concurrent.futures.Future, list[_Pending]] = {}
        self._ready: collections.deque[Any] = collections.deque()

    def process(self, element: Any, windowed=beam.DoFn.WindowedValueParam) -> Iterator[Any]:
        if self._batched_input:
            for item, timestamp, windows in element[1]:
                if self._add(item, WindowedValue(item, timestamp, windows)):
                    yield from self._submit(self._may_emit(windowed))
        elif self._add(element, windowed):
            yield from self._submit(self._may_emit(windowed))
        if self._complete_in_process:
            if self._buffer:
                yield from self._submit(True)
            while self._outstanding:
                self._complete(block=True)
        if self._ready and self._may_emit(windowed):
            yield from self._handed_on()

    def finish_bundle(self) -> Iterable[Any]:
        if self._buffer:
            yield from self._submit(True)
        while self._outstanding:
            self._complete(block=True)
        yield from self._handed_on()

    # -- machinery --------------------------------------------------------------------

    def _add(self, element: Any, windowed: WindowedValue) -> bool:
        """Buffers ``element``'s call (or its rejection); whether a batch is full."""
        try:
            work = self.prepare(element)
        except InvalidMessageError as error:
            self._ready.append(self._in_windows(self.reject(element, error), windowed))
            return False
        self._buffer.append((element, work, windowed))
        return len(self._buffer) >= self._batch_size

    def _submit(self, emit: bool) -> Iterator[Any]:
        """Starts the buffered batch once fewer than ``max_pending_batches`` are outstanding.

        With ``emit``, what has finished is handed on before the batch starts: downstream (the
        backfill's journal) has then taken in every finished batch, so the calls the service may
        have accepted and no one downstream has seen are those of the outstanding batches only,
        at most ``max_pending_batches`` of them. The other outstanding batches keep the pipe busy
        meanwhile.
        """
        batch, self._buffer = self._buffer, []
        while len(self._outstanding) >= self._max_pending:
            self._complete(block=True)
        if emit:
            yield from self._handed_on()
        self._outstanding[self.start([work for _, work, _ in batch])] = batch
        self._complete(block=False)

    def _may_emit(self, windowed: WindowedValue) -> bool:
        """Whether outputs may be emitted now: Beam would put them in every window of a
        multi-window input (see the module's docstring)."""
        return len(windowed.windows) == 1 or self._complete_in_process

    def _handed_on(self) -> Iterator[Any]:
        """The finished outputs, in the order they finished."""
        ready = self._ready
        while ready:
            yield ready.popleft()

    def _complete(self, block: bool) -> None:
        """Takes in the batches that are done; with ``block``, waits for at least one.

        Whichever finishes first: a batch held up by one slow call (a timeout,
        a Retry-After) does not hold up the others, which keep the pipe full.
        """
        if block:
            done, _ = concurrent.futures.wait(self._outstanding, return_when=concurrent.futures.FIRST_COMPLETED)
        else:
            done = {future for future in self._outstanding if future.done()}
        output = self.output
        in_windows = self._in_windows
        ready = self._ready
        for future in done:
            batch = self._outstanding.pop(future)
            results = future.result()
            failed = 0
            for (element, work, windowed), result in zip(batch, results, strict=True):
                outcome = output(element, work, result)
                failed += outcome[0] == FAILED
                ready.append(in_windows(outcome, windowed))
            self.batch_done(results)
            if self._progress is not None:
                aio = self.client.aio
                self._progress.add(len(results), failed, aio.retries, aio.throttled)

    def _in_windows(self, output: Output, windowed: WindowedValue) -> Any:
        """An output in the timestamp, windows and pane of the input it came from."""
        if self._output_pairs:
            return windowed.with_value(output)
        tag, value = output
        result = windowed.with_value(value)
        return result if tag is None else beam.pvalue.TaggedOutput(tag, result)


class AttachWindowing(beam.DoFn):
    """Moves each element, once, into the global window keyed for `GroupIntoBatches`,
    keeping its timestamp and windows with it.

    An element in several windows is held to the bundle's end: emitted while
    it is the current input, Beam would copy it once per window.
    """

    def start_bundle(self) -> None:
        self._held: list[WindowedValue] = []

    def process(self, element: Any, windowed=beam.DoFn.WindowedValueParam):
        moved = WindowedValue((0, (element, windowed.timestamp, windowed.windows)), windowed.timestamp, _GLOBAL)
        if len(windowed.windows) == 1:
            yield moved
        else:
            self._held.append(moved)

    def finish_bundle(self):
        held, self._held = self._held, []
        yield from held


def sharded_batches(pcoll: beam.PCollection, batch_size: int, max_buffering_duration_secs: float) -> beam.PCollection:
    """Batches across bundles (for streaming): input for ``BatchedCallsFn(batched_input=True)``."""
    return (
        pcoll
        | "KeepWindowing" >> beam.ParDo(AttachWindowing()).with_output_types(beam.typehints.Tuple[int, Any])
        | "Batch"
        >> beam.GroupIntoBatches.WithShardedKey(batch_size, max_buffering_duration_secs=max_buffering_duration_secs)
    )


def grouped_batches(pcoll: beam.PCollection, shards: int = 16) -> beam.PCollection:
    """Batches by a `GroupByKey` over ``shards`` random keys: input for
    ``BatchedCallsFn(batched_input=True, complete_in_process=True)``.

    For Beam's Dask runner, which in 2.77 keeps only what ``process`` emits (it
    collects a partition's outputs before calling ``finish_bundle``) and runs
    no stateful DoFn (so no `GroupIntoBatches`): each group's calls all
    complete inside one ``process`` call, concurrently.
    """
    return (
        pcoll
        | "KeepWindowing" >> beam.ParDo(AttachWindowing()).with_output_types(beam.typehints.Tuple[int, Any])
        | "Shard" >> beam.Map(lambda keyed: (random.randrange(shards), keyed[1]))
        | "Group" >> beam.GroupByKey()
    )


def use_sharded_batching(pcoll: beam.PCollection, batching: str) -> bool:
    """``sharded``: yes; ``bundle``: no; ``auto``: for streaming pipelines and unbounded input."""
    if batching != "auto":
        return batching == "sharded"
    return bool(pcoll.pipeline.options.view_as(StandardOptions).streaming) or not pcoll.is_bounded


BatchingMode = Literal["auto", "bundle", "sharded"]


@dataclass(frozen=True)
class Batching:
    """How a transform batches its calls to the service: one value, given as
    ``WriteToTdmqMqtt(..., batching=Batching(batch_size=512))`` (or just the mode,
    ``batching="sharded"``, or the settings, ``batching={"batch_size": 512}``) or with
    ``.with_batching(...)``.

    Args:
        batch_size: elements per concurrent batch. Defaults to None: 2 x the
            connection's ``max_in_flight`` (at least 128).
        max_pending_batches: batches in flight per DoFn instance; they finish
            in any order, so a slow call holds up only its own batch. Defaults to 32.
        mode: ``bundle`` batches within bundles; ``sharded`` batches across
            bundles with `GroupIntoBatches.WithShardedKey` (for streaming, where
            bundles are small); ``auto`` (default) picks sharded for unbounded
            input or streaming pipelines.
        max_buffering_duration_secs: with sharded batching, the longest an
            element waits for its batch to fill. Defaults to 1.

    Raises:
        ConfigurationError: a setting that cannot work, naming it.
    """

    batch_size: int | None = None
    max_pending_batches: int = 32
    mode: BatchingMode = "auto"
    max_buffering_duration_secs: float = 1.0

    def __post_init__(self) -> None:
        optional(positive_int, "batch_size", self.batch_size)
        positive_int("max_pending_batches", self.max_pending_batches)
        one_of("batching", self.mode, ("auto", "bundle", "sharded"))
        positive("max_buffering_duration_secs", self.max_buffering_duration_secs, unit=" seconds")

    @classmethod
    def of(cls, value: Batching | str | Mapping[str, Any] | None) -> Batching:
        """``value`` as a `Batching`: None is the defaults, a str the mode, a mapping the settings."""
        if value is None:
            return cls()
        if isinstance(value, str):
            return cls(mode=value)  # type: ignore[arg-type]  # checked in __post_init__
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {field.name for field in fields(cls)})
            if unknown:
                raise ConfigurationError(f"batching: unknown setting(s) {unknown}")
            return cls(**value)
        return instance_of("batching", value, cls)

    def size_for(self, connection: TdmqConnection | None) -> int:
        """The batch size on ``connection`` (None: cloud API calls only)."""
        if self.batch_size is not None:
            return self.batch_size
        return max(2 * (connection.max_in_flight if connection is not None else CLOUD_IN_FLIGHT), 128)

    def sharded_for(self, pcoll: beam.PCollection) -> bool:
        """Whether ``pcoll`` is batched across bundles: ``sharded``, or ``auto`` for streaming and unbounded input."""
        return use_sharded_batching(pcoll, self.mode)

    def display_data(self, connection: TdmqConnection | None) -> dict[str, Any]:
        return {"batch_size": self.size_for(connection), "batching": self.mode}
