"""`EnrichWithClientStatus`: join each element with its client's online status (and details)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import apache_beam as beam
from apache_beam.metrics.metric import Lineage

from tdmq_beam.errors import TdmqError
from tdmq_beam.option_checks import field_or_callable, one_of
from tdmq_beam.records.fields import client_id_getter
from tdmq_beam.service.cloud_api import CloudApiConfig
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.service.status_lookup import ClientStatus, LookupResults, LookupSettings
from tdmq_beam.transforms.base import CallTransform
from tdmq_beam.transforms.batched_calls import FAILED, BatchedCallsFn, Batching, Output
from tdmq_beam.transforms.client_rows import details_row
from tdmq_beam.transforms.results import FailedMessage, failure_from_error
from tdmq_beam.transforms.worker_client import acquire_status_lookup

__all__ = ["EnrichResult", "EnrichWithClientStatus", "default_join"]


class EnrichResult(NamedTuple):
    """What `EnrichWithClientStatus` returns; ``enriched, failed = events | EnrichWithClientStatus(...)``.

    Attributes:
        enriched: every element joined with its client's status.
        failed: a `FailedMessage` for every element whose lookup failed (none
            with ``on_failure="unknown"``) or whose client id is missing.
    """

    enriched: beam.PCollection[Any]
    failed: beam.PCollection[FailedMessage]


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

    COUNTERS = ("hits", "misses", "status_calls", "details_calls", "throttled", "failed")

    def report_lineage(self) -> None:
        Lineage.sources().add("tdmq_mqtt", self.instance, subtype="client_status")
        if self._cloud is not None:
            Lineage.sources().add("tencentcloud_mqtt", self._cloud.instance_id, subtype="clients")

    def __init__(
        self,
        settings: LookupSettings,
        client_id: Callable[[Any], str],
        join: Callable[[Any, ClientStatus], Any] | None,
        on_failure: str,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._settings = settings
        self._client_id = client_id
        self._join = join
        self._pass_unknown = on_failure == "unknown"

    def setup(self) -> None:
        self.lookup = acquire_status_lookup(self._connection, self._cloud, self._settings, self._tag)
        self.client = self.lookup.client
        self._setup_progress()

    def _joined(self, element: Any, status: ClientStatus) -> Any:
        if self._join is not None:
            return self._join(element, status)
        return default_join(element, status, self._cloud is not None)

    def prepare(self, element: Any) -> str:
        return self._client_id(element)

    def start(self, client_ids: list[str]) -> concurrent.futures.Future:
        return self.lookup.submit_batch(client_ids, self.concurrency)

    def output(self, element: Any, client_id: str, result: ClientStatus | TdmqError) -> Output:
        if isinstance(result, ClientStatus):
            return None, self._joined(element, result)
        elif self._pass_unknown:
            return None, self._joined(element, ClientStatus(client_id, None))
        else:
            self.counters["failed"].inc()
            return FAILED, failure_from_error(element, None, result, context=f"looking up client {client_id!r}")

    def batch_done(self, results: LookupResults) -> None:
        for name, count in results.stats.items():
            if count:
                self.counters[name].inc(count)


@beam.typehints.with_input_types(Any)
class EnrichWithClientStatus(CallTransform):
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
        batching: how calls are batched: a `Batching`, just its mode (``auto``,
            ``bundle``, ``sharded``) or its settings as a dict. Defaults to
            ``Batching()``; see also ``with_batching``.

    Returns an `EnrichResult` (``enriched``, ``failed``).

    Raises:
        ConfigurationError: an option that cannot work, naming it.
    """

    LABEL = "Lookup"
    MAIN = "enriched"
    Result = EnrichResult

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
        batching: Batching | str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            connection,
            cloud,
            batching=batching,
        )
        field_or_callable("client_id", client_id)
        one_of("on_failure", on_failure, ("failed", "unknown"))
        self._settings = LookupSettings(status_ttl, details_ttl, negative_ttl, max_cached, status_qps)
        self._client_id = client_id_getter(client_id)
        self._client_id_label = client_id if isinstance(client_id, str) else getattr(client_id, "__name__", "callable")
        self._join = join
        self._on_failure = on_failure

    def new_fn(self, **options: Any) -> _EnrichFn:
        return _EnrichFn(self._settings, self._client_id, self._join, self._on_failure, **options)

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"client_id": self._client_id_label}
        for name in ("status_ttl", "details_ttl", "negative_ttl", "max_cached"):
            described[name] = getattr(self._settings, name)
        described["on_failure"] = self._on_failure
        return described
