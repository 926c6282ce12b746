"""`SetClientKeepAlive`: change online clients' server-side keep-alive through the keep-alive API."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics.metric import Lineage

from tdmq_beam.errors import ConfigurationError, TdmqError
from tdmq_beam.option_checks import field_or_callable, int_in_range
from tdmq_beam.records.fields import MappingError, as_record, client_id_getter, element_to_json
from tdmq_beam.rules.limits import KEEPALIVE_RANGE
from tdmq_beam.service.concurrency import run_bounded
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.transforms.base import CallTransform
from tdmq_beam.transforms.batched_calls import FAILED, BatchedCallsFn, Batching, Output
from tdmq_beam.transforms.results import FailedMessage, failure_from_error

__all__ = ["KeepAliveResult", "KeepAliveSet", "SetClientKeepAlive"]


@dataclass(frozen=True)
class KeepAliveSet:
    """An element done: the client's keep-alive is now ``keepalive`` seconds."""

    element: Any
    client_id: str
    keepalive: int
    attempts: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "element_json": element_to_json(self.element),
            "client_id": self.client_id,
            "keepalive": self.keepalive,
            "attempts": self.attempts,
        }


class KeepAliveResult(NamedTuple):
    """What `SetClientKeepAlive` returns; ``updated, failed = clients | SetClientKeepAlive(...)``.

    Attributes:
        updated: a `KeepAliveSet` for every client whose keep-alive was changed.
        failed: a `FailedMessage` for every other element.
    """

    updated: beam.PCollection[KeepAliveSet]
    failed: beam.PCollection[FailedMessage]


def _interval_getter(interval: str | int | Callable[[Any], int]) -> Callable[[Any], int]:
    if callable(interval):
        return interval
    if isinstance(interval, int):
        return lambda element: interval
    field = interval

    def from_field(element: Any) -> int:
        return as_record(element).get(field)  # type: ignore[return-value]  # checked in prepare

    return from_field


class _KeepAliveFn(BatchedCallsFn):
    COUNTERS = ("set", "failed")

    def report_lineage(self) -> None:
        Lineage.sinks().add("tdmq_mqtt", self.instance, subtype="keepalive")

    def __init__(self, client_id: Callable[[Any], str], interval: Callable[[Any], int], **options: Any) -> None:
        super().__init__(**options)
        self._client_id = client_id
        self._interval = interval

    def prepare(self, element: Any) -> tuple[str, int]:
        client_id = self._client_id(element)
        seconds = self._interval(element)
        low, high = KEEPALIVE_RANGE
        if type(seconds) is not int or not low <= seconds <= high:
            raise MappingError(
                f"keep-alive for {client_id!r} must be an int within {low}..{high} seconds, got {seconds!r}"
            )
        return client_id, seconds

    def start(self, work: list[tuple[str, int]]) -> concurrent.futures.Future:
        aio = self.client.aio
        return self.client.submit(
            run_bounded(work, lambda call: aio.set_keepalive_with_attempts(*call), self.concurrency)
        )

    def output(self, element: Any, work: tuple[str, int], result: tuple[int, int] | TdmqError) -> Output:
        client_id, _ = work
        if isinstance(result, TdmqError):
            self.counters["failed"].inc()
            context = f"setting the keep-alive of {client_id!r}"
            return FAILED, failure_from_error(element, None, result, context=context)
        else:
            self.counters["set"].inc()
            keepalive, attempts = result
            return None, KeepAliveSet(element, client_id, keepalive, attempts)


@beam.typehints.with_input_types(Any)
class SetClientKeepAlive(CallTransform):
    """Sets the server-side keep-alive of online clients, one per element.

    Intervals outside 30..1200 seconds fail before any call. Refusals (client
    offline, a keep-alive-0 session, authentication, permission) and what still
    fails after retries go to ``failed`` with the reason.

    Args:
        connection: the instance access point and credentials.
        client_id: the field holding the client id (default ``client_id``), or a callable.
        interval: the field holding the seconds (default ``interval``), a fixed
            int for every element, or a callable.
        batching: how calls are batched: a `Batching`, just its mode (``auto``,
            ``bundle``, ``sharded``) or its settings as a dict. Defaults to
            ``Batching()``; see also ``with_batching``.

    Returns a `KeepAliveResult` (``updated``, ``failed``).

    Raises:
        ConfigurationError: an option that cannot work, naming it.
    """

    LABEL = "SetKeepAlive"
    MAIN = "updated"
    Result = KeepAliveResult
    main_type = KeepAliveSet

    def __init__(
        self,
        connection: TdmqConnection,
        *,
        client_id: str | Callable[[Any], str] = "client_id",
        interval: str | int | Callable[[Any], int] = "interval",
        batching: Batching | str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            connection,
            batching=batching,
        )
        low, high = KEEPALIVE_RANGE
        if isinstance(interval, int) and not isinstance(interval, bool):
            int_in_range("interval", interval, low, high, unit=" seconds")
        elif not (callable(interval) or isinstance(interval, str)):
            raise ConfigurationError(f"interval must name a field, be an int or a callable, got {interval!r}")
        field_or_callable("client_id", client_id)
        self._client_id = client_id_getter(client_id)
        self._interval = _interval_getter(interval)
        self._interval_label = interval if isinstance(interval, (str, int)) else "callable"

    def new_fn(self, **options: Any) -> _KeepAliveFn:
        return _KeepAliveFn(self._client_id, self._interval, **options)

    def describe(self) -> dict[str, Any]:
        return {"interval": self._interval_label}
