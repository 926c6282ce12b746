"""`CallTransform`: the one base of the transforms that call the service once per element.

A transform on this base is three things: how an element becomes a call
(``prepare``), how a batch of calls runs on the worker's client (``start``),
and what a result becomes (``output``): a `BatchedCallsFn` subclass. The base
owns the rest, the same for every transform:

- the connection (and cloud API) check and the batching options;
- the output wiring: a typed main output, any further typed outputs
  (``OUTPUTS``) and a typed ``failed`` output of `FailedMessage`, returned as
  a `NamedTuple` result (attributes, and ``main, failed = pcoll | ...``
  unpacks), ``failed`` optionally also sent to a Beam `ErrorHandler`
  (``with_error_handler``), as Beam's own IOs do;
- display data (connection, cloud API, batching and the transform's own
  settings, all labelled alike) and the metrics namespace
  (``tdmq_beam.{TransformName}``).

Adding an API call as a transform: write its DoFn (``prepare``, ``start``,
``output``), a result `NamedTuple` (main output, ``failed``), and a
`CallTransform` subclass that sets ``LABEL``, ``MAIN``, ``Result`` and
``main_type``, validates its own options in ``__init__`` and returns its DoFn
from ``new_fn``; ``describe`` adds its display data. A transform making one
cloud API call per element is smaller still: see `cloud_lookup.CloudLookup`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms.display import DisplayDataItem

from tdmq_beam.errors import ConfigurationError
from tdmq_beam.option_checks import instance_of, optional, positive, positive_int
from tdmq_beam.service.cloud_api import CloudApiConfig
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.transforms.batched_calls import (
    FAILED,
    BatchedCallsFn,
    Batching,
    grouped_batches,
    sharded_batches,
)
from tdmq_beam.transforms.outputs import par_do_with_outputs
from tdmq_beam.transforms.results import FailedMessage
from tdmq_beam.transforms.runner_limits import RunnerCapabilities

__all__ = ["CallTransform"]


class CallTransform(beam.PTransform):
    """Base of the transforms that call the service per element in concurrent batches.

    Args:
        connection: the instance access point and credentials; None for
            transforms that use the cloud API only.
        cloud: cloud API credentials, for transforms that use the cloud API.
        batching: how calls are batched: a `Batching`, just its mode (``auto``,
            ``bundle``, ``sharded``) or its settings as a dict. Defaults to ``Batching()``.

    Raises:
        ConfigurationError: a setting that cannot work, naming it.
    """

    LABEL: ClassVar[str]
    """The label of the DoFn step (``Publish``)."""
    MAIN: ClassVar[str]
    """The name of the main output (``published``)."""
    Result: ClassVar[Any]
    """The result type: a NamedTuple of (main output, ``failed``)."""
    main_type: Any = Any
    """The element type of the main output."""
    NEEDS_CONNECTION: ClassVar[bool] = True
    """Whether the transform calls the data plane (and so needs a connection)."""
    OUTPUTS: ClassVar[dict[str, Any]] = {}
    """Outputs besides the main one and ``failed``: name -> element type (``Result`` has a field for each)."""

    def __init__(
        self,
        connection: TdmqConnection | None,
        cloud: CloudApiConfig | None = None,
        *,
        batching: Batching | str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        optional(instance_of, "connection", connection, TdmqConnection)
        optional(instance_of, "cloud", cloud, CloudApiConfig)
        if connection is None and (self.NEEDS_CONNECTION or cloud is None):
            needs = "a connection (TdmqConnection)" if self.NEEDS_CONNECTION else "cloud (a CloudApiConfig)"
            raise ConfigurationError(f"{type(self).__name__} needs {needs}")
        self._connection = connection
        self._cloud = cloud
        self._batching = Batching.of(batching)
        self._tag = f"{type(self).__name__}-{uuid.uuid4()}"  # one worker-process client per transform
        self._error_handler: Any = None
        self._progress: tuple[str, float, int | None] | None = (type(self).__name__, 10.0, None)

    # -- for subclasses ---------------------------------------------------------------

    def new_fn(self, **batching: Any) -> BatchedCallsFn:
        """The transform's DoFn, given the batching keywords of `BatchedCallsFn`."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The transform's own settings for display data (secrets never)."""
        return {}

    @property
    def metrics_namespace(self) -> str:
        return f"tdmq_beam.{type(self).__name__}"

    # -- Beam -------------------------------------------------------------------------

    def with_error_handler(self, error_handler: Any) -> CallTransform:
        """Also sends ``failed`` to a Beam ``ErrorHandler`` (``apache_beam.transforms.error_handling``);
        None turns that off. Returns the transform, for chaining."""
        self._error_handler = error_handler
        return self

    def with_batching(self, batching: Batching | None = None, /, **settings: Any) -> CallTransform:
        """Sets how calls are batched: a `Batching`, or its settings as keywords
        (``.with_batching(batch_size=512, mode="sharded")``). Returns the transform, for chaining."""
        if batching is not None and settings:
            raise ConfigurationError("with_batching: give a Batching or its settings as keywords, not both")
        self._batching = Batching(**settings) if batching is None else Batching.of(batching)
        return self

    def with_progress(self, interval: float | None = 10.0, *, expected: int | None = None) -> CallTransform:
        """Each worker process logs this transform's progress (done, failed, rate, retries,
        throttling, and an ETA given ``expected`` elements per process) on the
        ``tdmq_beam.progress`` logger at INFO, at most every ``interval`` seconds (default 10).
        None turns it off. Returns the transform, for chaining."""
        interval = optional(positive, "the progress interval", interval, unit=" seconds")
        optional(positive_int, "expected", expected)
        self._progress = None if interval is None else (type(self).__name__, interval, expected)
        return self

    def expand(self, pcoll: pvalue.PCollection) -> Any:
        return self.expand_calls(pcoll, self._batching)

    def expand_calls(self, pcoll: pvalue.PCollection, batching: Batching) -> Any:
        """The calls on ``pcoll`` batched as ``batching`` says (`expand` with the transform's own)."""
        # Where no stateful DoFn runs (so no GroupIntoBatches) or what a DoFn emits in
        # finish_bundle is dropped (Beam's Dask runner), batches come from a GroupByKey and every
        # call completes inside process (see `grouped_batches`).
        runner = RunnerCapabilities.of(pcoll.pipeline)
        grouped = not (runner.stateful_dofns and runner.finish_bundle_outputs)
        sharded = not grouped and batching.sharded_for(pcoll)

        def make_fn(pairs: bool) -> BatchedCallsFn:
            return self.new_fn(
                connection=self._connection,
                cloud=self._cloud,
                tag=self._tag,
                namespace=self.metrics_namespace,
                batch_size=batching.size_for(self._connection),
                max_pending_batches=batching.max_pending_batches,
                batched_input=sharded or grouped,
                complete_in_process=grouped,
                output_pairs=pairs,
                progress=self._progress,
            )

        if grouped:
            pcoll = grouped_batches(pcoll)
        elif sharded:
            size = batching.size_for(self._connection)
            pcoll = sharded_batches(pcoll, size, batching.max_buffering_duration_secs)
        types = {self.MAIN: self.main_type, **self.OUTPUTS, FAILED: FailedMessage}
        outputs = par_do_with_outputs(pcoll, self.LABEL, make_fn, self.MAIN, types)
        if self._error_handler is not None:
            self._error_handler.add_error_pcollection(outputs[FAILED])
        return self.Result(**{name: outputs[name] for name in self.Result._fields})

    def display_data(self) -> dict[str, Any]:
        items: dict[str, Any] = dict(self._connection.display_data()) if self._connection is not None else {}
        if self._cloud is not None:
            items.update(self._cloud.display_data())
        items.update(self.describe())
        items.update(self._batching.display_data(self._connection))
        return {
            key: DisplayDataItem(
                value if isinstance(value, (str, int, float, bool)) else repr(value),
                label=key.replace("_", " ").capitalize(),
            )
            for key, value in items.items()
        }
