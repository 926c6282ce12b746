"""`EnrichWithClientStatus`: join each element with its client's online status (and details)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import apache_beam as beam
from apache_beam.metrics.metric import Lineage
from apache_beam.transforms.window import GlobalWindows

from tdmq_beam.errors import ConfigurationError, TdmqError
from tdmq_beam.option_checks import field_or_callable, instance_of, one_of, positive
from tdmq_beam.records.client_event import ClientEvent
from tdmq_beam.records.fields import client_id_getter
from tdmq_beam.service.cloud_api import CloudApiConfig
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.service.status_lookup import ClientStatus, LookupResults, LookupSettings
from tdmq_beam.transforms.base import CallTransform
from tdmq_beam.transforms.batched_calls import FAILED, BatchedCallsFn, Batching, Output
from tdmq_beam.transforms.client_rows import details_row
from tdmq_beam.transforms.events_join import QUERY, ElementsByClientFn, EventsJoinFn, keyed_event
from tdmq_beam.transforms.outputs import par_do_with_outputs
from tdmq_beam.transforms.results import FailedMessage, failure_from_error
from tdmq_beam.transforms.track_status import DEFAULT_OFFLINE_EXPIRY
from tdmq_beam.transforms.worker_client import acquire_status_lookup

__all__ = ["SOURCES", "EnrichResult", "EnrichWithClientStatus", "check_source", "default_join"]

SOURCES = ("query", "events", "events+query")
"""Where `EnrichWithClientStatus` takes a status from."""


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

    Where the status comes from (``source``), per element:

    - ``query`` (default): the active query (``/client-id/{id}/status``), as
      accurate as the service; one API call per client per ``status_ttl``.
    - ``events``: the client events (``events``, from `ReadClientEvents`), kept
      per client in Beam state and ordered by the events' own time, as
      `TrackClientStatus` does; no API call. As wrong as the events are late or
      lost (QoS 0): an element is answered with what the events have told when
      it arrives, and a client no event has been seen for is ``online`` None.
    - ``events+query``: the events where they have settled the client (an event
      seen, at most ``staleness`` seconds old by the worker's clock), the
      active query with its cache for the others; as accurate as the query for
      those, as cheap as the events where they suffice.

    The events modes keep state per client in the global window and restore
    the elements' windowing after the join; they need a runner with user state
    and timers (the DirectRunner, Dataflow, Flink), and do not add details.
    With ``events+query``, ``batching`` ``auto`` batches the queries per bundle.

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
        source: ``query`` (default), ``events`` or ``events+query``; see above.
        events: with an events source, the `ClientEvent` PCollection
            (``ReadClientEvents(...).events``).
        staleness: with ``events+query``, seconds after which a client's newest
            event is too old to answer from. Defaults to 600.
        offline_expiry: with an events source, seconds of event time after which
            an offline client's state is dropped. Defaults to 86400.

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
        source: Literal["query", "events", "events+query"] = "query",
        events: beam.PCollection[ClientEvent] | None = None,
        staleness: float = 600.0,
        offline_expiry: float = DEFAULT_OFFLINE_EXPIRY,
    ) -> None:
        super().__init__(
            connection,
            cloud,
            batching=batching,
        )
        field_or_callable("client_id", client_id)
        one_of("on_failure", on_failure, ("failed", "unknown"))
        check_source(source, with_cloud=cloud is not None)
        if source == "query":
            if events is not None:
                raise ConfigurationError("events is for source='events' or 'events+query'; source is 'query'")
        else:
            if events is None:
                raise ConfigurationError(
                    f"source={source!r} needs events: the ClientEvent PCollection (ReadClientEvents(...).events)"
                )
            instance_of("events", events, beam.PCollection)
        self._source = source
        self._events = events
        self._staleness = positive("staleness", staleness, unit=" seconds")
        self._offline_expiry = positive("offline_expiry", offline_expiry, unit=" seconds")
        self._settings = LookupSettings(status_ttl, details_ttl, negative_ttl, max_cached, status_qps)
        self._client_id = client_id_getter(client_id)
        self._client_id_label = client_id if isinstance(client_id, str) else getattr(client_id, "__name__", "callable")
        self._join = join
        self._on_failure = on_failure

    def expand(self, pcoll: beam.PCollection) -> EnrichResult:
        if self._source == "query":
            return super().expand(pcoll)
        assert self._events is not None
        windowing = pcoll.windowing
        keyed = par_do_with_outputs(
            pcoll,
            "ByClient",
            lambda pairs: ElementsByClientFn(self._client_id, pairs),
            "keyed",
            {"keyed": tuple[str, tuple[Any, Any]], FAILED: FailedMessage},
        )
        events = self._events | "EventsByClient" >> beam.Map(keyed_event).with_output_types(tuple[str, tuple[Any, Any]])
        both = (
            keyed["keyed"] | "Global" >> beam.WindowInto(GlobalWindows()),
            events | "GlobalEvents" >> beam.WindowInto(GlobalWindows()),
        ) | "ElementsAndEvents" >> beam.Flatten()
        join = self._join or (lambda element, status: default_join(element, status, False))
        joined = par_do_with_outputs(
            both,
            "JoinEvents",
            lambda pairs: EventsJoinFn(
                self.metrics_namespace,
                join,
                with_query=self._source == "events+query",
                staleness=self._staleness,
                offline_expiry=self._offline_expiry,
                pairs=pairs,
            ),
            "enriched",
            {"enriched": self.main_type, QUERY: Any},
        )
        enriched = [joined["enriched"]]
        failed = [keyed[FAILED]]
        if self._error_handler is not None:
            self._error_handler.add_error_pcollection(keyed[FAILED])
        if self._source == "events+query":
            # The few elements asked after the join are batched per bundle under ``auto``: on
            # Beam's streaming DirectRunner (2.77, 2.78), what GroupIntoBatches flushes at the window's
            # end is dropped by a GroupByKey downstream (docs/runners.md).
            batching = self._batching
            if batching.mode == "auto":
                batching = dataclasses.replace(batching, mode="bundle")
            asked = self.expand_calls(joined[QUERY], batching)
            enriched.append(asked.enriched)
            failed.append(asked.failed | "RestoreFailed" >> _windowed_as(windowing))
        return EnrichResult(
            tuple(enriched) | "Enriched" >> beam.Flatten() | "Restore" >> _windowed_as(windowing),
            tuple(failed) | "Failed" >> beam.Flatten(),
        )

    def new_fn(self, **options: Any) -> _EnrichFn:
        return _EnrichFn(self._settings, self._client_id, self._join, self._on_failure, **options)

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"client_id": self._client_id_label}
        for name in ("status_ttl", "details_ttl", "negative_ttl", "max_cached"):
            described[name] = getattr(self._settings, name)
        described["on_failure"] = self._on_failure
        described["source"] = self._source
        if self._source != "query":
            described.update(offline_expiry=self._offline_expiry)
        if self._source == "events+query":
            described.update(staleness=self._staleness)
        return described


def check_source(source: Any, *, with_cloud: bool) -> str:
    """``source``, one of `SOURCES`; an events source with cloud credentials is refused, since
    the events add no client details (also used by the YAML transform and the jobs' flags)."""
    one_of("source", source, SOURCES)
    if source != "query" and with_cloud:
        raise ConfigurationError(f"source={source!r} adds no client details; give cloud with source='query' only")
    return source


def _windowed_as(windowing: Any) -> beam.WindowInto:
    """Puts elements back into ``windowing`` (a PCollection's), by their timestamps."""
    return beam.WindowInto(
        windowing.windowfn,
        trigger=windowing.triggerfn,
        accumulation_mode=windowing.accumulation_mode,
        timestamp_combiner=windowing.timestamp_combiner,
        allowed_lateness=windowing.allowed_lateness,
    )
