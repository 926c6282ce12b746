"""`EnrichWithClientStatus`: join each element with its client's online status (and details)."""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.display import DisplayDataItem

from tdmq_beam.batched_calls import FAILED, BatchedCallsFn, BatchingOptions, CallResults
from tdmq_beam.client_status import ClientStatus, LookupResults, LookupSettings
from tdmq_beam.cloud_api import CloudApiConfig
from tdmq_beam.connection import TdmqConnection
from tdmq_beam.errors import InvalidMessageError, TdmqError
from tdmq_beam.mapping import MappingError, as_record
from tdmq_beam.results import failure_from_error
from tdmq_beam.worker_client import acquire_status_lookup

__all__ = ["EnrichResult", "EnrichWithClientStatus", "client_id_getter", "default_join"]

_NAMESPACE = "tdmq_beam.EnrichWithClientStatus"


class EnrichResult(CallResults):
    """What `EnrichWithClientStatus` returns.

    Attributes:
        enriched: every element joined with its client's status.
        failed: a `FailedMessage` for every element whose lookup failed (none
            with ``on_failure="unknown"``) or whose client id is missing.
    """

    MAIN = "enriched"


def client_id_getter(client_id: str | Callable[[Any], str]) -> Callable[[Any], str]:
    """A function from an element to its client id: a field of a record, or ``client_id`` itself."""
    if callable(client_id):
        return client_id
    field = client_id

    def from_field(element: Any) -> str:
        value = as_record(element).get(field)
        if not isinstance(value, str) or not value:
            raise MappingError(
                f"invalid record: field {field!r} must hold the client id as a non-empty str, got {value!r}"
            )
        return value

    return from_field


def details_row(status: ClientStatus) -> beam.Row | None:
    """The details of ``status`` as a Beam Row (subscriptions as Rows), or None."""
    if status.details is None:
        return None
    fields = status.details.as_dict()
    fields["subscriptions"] = [beam.Row(**sub) for sub in fields["subscriptions"]]
    return beam.Row(**fields)


def default_join(element: Any, status: ClientStatus, with_details: bool) -> Any:
    """Dicts and Rows (``beam.Row`` and schema NamedTuples, as Beam decodes Rows) gain
    ``online`` (and ``client`` with a cloud config); anything else becomes an
    ``(element, ClientStatus)`` pair."""
    if isinstance(element, Mapping):
        joined = dict(element)
        joined["online"] = status.online
        if with_details:
            joined["client"] = status.details.as_dict() if status.details is not None else None
        return joined
    if isinstance(element, beam.Row) or hasattr(element, "_asdict"):
        fields = element._asdict()
        fields["online"] = status.online
        if with_details:
            fields["client"] = details_row(status)
        return beam.Row(**fields)
    return element, status


class _EnrichFn(BatchedCallsFn):
    """Looks up client ids in concurrent batches on the process's `StatusLookup`."""

    def __init__(
        self,
        connection: TdmqConnection,
        cloud: CloudApiConfig | None,
        tag: str,
        settings: LookupSettings,
        client_id: Callable[[Any], str],
        join: Callable[[Any, ClientStatus], Any] | None,
        on_failure: str,
        **batching: Any,
    ) -> None:
        super().__init__(connection, cloud, tag, **batching)
        self._settings = settings
        self._client_id = client_id
        self._join = join
        self._pass_unknown = on_failure == "unknown"
        self._counters = {
            name: Metrics.counter(_NAMESPACE, name)
            for name in ("hits", "misses", "status_calls", "details_calls", "throttled", "failed")
        }

    def setup(self) -> None:
        self.lookup = acquire_status_lookup(self._connection, self._cloud, self._settings, self._tag)
        self.client = self.lookup.client

    def _joined(self, element: Any, status: ClientStatus) -> Any:
        if self._join is not None:
            return self._join(element, status)
        return default_join(element, status, self._cloud is not None)

    def prepare(self, element: Any) -> str:
        return self._client_id(element)

    def reject(self, element: Any, error: InvalidMessageError):
        self._counters["failed"].inc()
        yield FAILED, failure_from_error(element, None, error, attempts=0)

    def start(self, client_ids: list[str]) -> concurrent.futures.Future:
        return self.lookup.submit_batch(client_ids, self.concurrency)

    def outputs(self, element: Any, client_id: str, result: ClientStatus | TdmqError):
        if isinstance(result, ClientStatus):
            yield None, self._joined(element, result)
        elif self._pass_unknown:
            yield None, self._joined(element, ClientStatus(client_id, None))
        else:
            self._counters["failed"].inc()
            yield FAILED, failure_from_error(element, None, result, context=f"looking up client {client_id!r}")

    def batch_done(self, results: LookupResults) -> None:
        for name, count in results.stats.items():
            if count:
                self._counters[name].inc(count)


@beam.typehints.with_input_types(Any)
class EnrichWithClientStatus(beam.PTransform):
    """Joins each element with whether its MQTT client is online, and (with ``cloud``) its details.

    Lookups are side lookups that respect the service: per worker process, a
    TTL cache (separate TTLs for status and details, negative caching of
    clients the service does not know, bounded with LRU eviction) shared by
    every DoFn instance; lookups already in flight are shared (a hundred
    elements for one client make one request); many lookups run at once. The
    status API is paced by ``status_qps`` and ``connection.tps``, the cloud API
    by ``cloud.rate`` (20/s by default); all are per worker process: divide the
    service's limits by the number of worker processes.

    Output, by default: dicts and Beam Rows gain ``online`` (bool; None when
    the lookup failed and ``on_failure="unknown"``) and, with ``cloud``,
    ``client`` (connection status, keep-alive, protocol version, clean session,
    subscriptions, create/connect/disconnect times; None for a client the
    service does not know); Rows come out as ``beam.Row``. Other elements
    become ``(element, ClientStatus)``.
    A ``join`` function ``(element, ClientStatus) -> output`` replaces both.

    Args:
        connection: the instance access point and credentials (status API).
        cloud: cloud API credentials, to add the client's details. Default: none.
        client_id: the field holding the client id (default ``client_id``), or
            a callable from the element to its client id.
        join: replaces the default join.
        on_failure: ``failed`` (default): failed lookups go to ``failed``;
            ``unknown``: they pass through with ``online`` None.
        status_ttl, details_ttl, negative_ttl: seconds a status, details, and
            "unknown client" answer stay cached. Defaults 5, 60, 30.
        max_cached: entries per cache before the least recently used go. Default 100,000.
        status_qps: status API requests/s per worker process; None (default)
            leaves only ``connection.tps``.
        batch_size: elements per concurrent batch. Default 2 x max_in_flight (at least 128).
        batching, max_buffering_duration_secs: as in `WriteToTdmqMqtt`.
    """

    def __init__(
        self,
        connection: TdmqConnection,
        cloud: CloudApiConfig | None = None,
        *,
        client_id: str | Callable[[Any], str] = "client_id",
        join: Callable[[Any, ClientStatus], Any] | None = None,
        on_failure: Literal["failed", "unknown"] = "failed",
        status_ttl: float = 5.0,
        details_ttl: float = 60.0,
        negative_ttl: float = 30.0,
        max_cached: int = 100_000,
        status_qps: float | None = None,
        batch_size: int | None = None,
        max_pending_batches: int = 32,
        batching: Literal["auto", "bundle", "sharded"] = "auto",
        max_buffering_duration_secs: float = 1.0,
    ) -> None:
        super().__init__()
        self._batching = BatchingOptions.resolve(
            connection, batch_size, max_pending_batches, batching, max_buffering_duration_secs
        )
        if cloud is not None and not isinstance(cloud, CloudApiConfig):
            raise ValueError(f"cloud must be a CloudApiConfig or None, got {type(cloud).__name__}")
        if not (callable(client_id) or (isinstance(client_id, str) and client_id)):
            raise ValueError("client_id must name a field or be a callable")
        if on_failure not in ("failed", "unknown"):
            raise ValueError(f"on_failure must be 'failed' or 'unknown', got {on_failure!r}")
        self._settings = LookupSettings(status_ttl, details_ttl, negative_ttl, max_cached, status_qps)
        self._connection = connection
        self._cloud = cloud
        self._client_id = client_id_getter(client_id)
        self._client_id_label = client_id if isinstance(client_id, str) else getattr(client_id, "__name__", "callable")
        self._join = join
        self._on_failure = on_failure
        self._tag = f"EnrichWithClientStatus-{uuid.uuid4()}"

    def expand(self, pcoll: pvalue.PCollection) -> EnrichResult:
        def make_fn(**options: Any) -> _EnrichFn:
            return _EnrichFn(
                self._connection, self._cloud, self._tag, self._settings, self._client_id, self._join,
                self._on_failure, **options,
            )  # fmt: skip

        return EnrichResult(*self._batching.apply(pcoll, "Lookup", make_fn, main="enriched"))

    def display_data(self) -> dict[str, Any]:
        data = {key: DisplayDataItem(value, label=key) for key, value in self._connection.display_data().items()}
        if self._cloud is not None:
            data.update({key: DisplayDataItem(value, label=key) for key, value in self._cloud.display_data().items()})
        data["client_id"] = DisplayDataItem(self._client_id_label, label="Client id")
        for name in ("status_ttl", "details_ttl", "negative_ttl", "max_cached"):
            data[name] = DisplayDataItem(getattr(self._settings, name), label=name)
        data["on_failure"] = DisplayDataItem(self._on_failure, label="On failure")
        for key, value in self._batching.display_data().items():
            data[key] = DisplayDataItem(value, label=key)
        return data
