"""`SetClientKeepAlive`: change online clients' server-side keep-alive through the keep-alive API."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.display import DisplayDataItem

from tdmq_beam.batched_calls import FAILED, BatchedCallsFn, BatchingOptions, CallResults
from tdmq_beam.client import KEEPALIVE_RANGE, AsyncTdmqClient
from tdmq_beam.connection import TdmqConnection
from tdmq_beam.enrich import client_id_getter
from tdmq_beam.errors import InvalidMessageError, TdmqError
from tdmq_beam.mapping import MappingError, as_record
from tdmq_beam.results import element_to_json, failure_from_error

__all__ = ["KeepAliveResult", "KeepAliveSet", "SetClientKeepAlive"]

_NAMESPACE = "tdmq_beam.SetClientKeepAlive"


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


class KeepAliveResult(CallResults):
    """What `SetClientKeepAlive` returns: ``published`` (`KeepAliveSet`) and ``failed``
    (`FailedMessage`), in the shape of `WriteToTdmqMqtt`'s result."""


def _interval_getter(interval: str | int | Callable[[Any], int]) -> Callable[[Any], int]:
    if callable(interval):
        return interval
    if isinstance(interval, int) and not isinstance(interval, bool):
        return lambda element: interval
    field = interval

    def from_field(element: Any) -> int:
        return as_record(element).get(field)

    return from_field


class _KeepAliveFn(BatchedCallsFn):
    def __init__(self, connection, tag, client_id, interval, **batching: Any) -> None:
        super().__init__(connection, None, tag, **batching)
        self._client_id = client_id
        self._interval = interval
        self._set = Metrics.counter(_NAMESPACE, "set")
        self._failed = Metrics.counter(_NAMESPACE, "failed")

    def prepare(self, element: Any) -> tuple[str, int]:
        client_id = self._client_id(element)
        seconds = self._interval(element)
        low, high = KEEPALIVE_RANGE
        if type(seconds) is not int or not low <= seconds <= high:
            raise MappingError(
                f"keep-alive for {client_id!r} must be an int within {low}..{high} seconds, got {seconds!r}"
            )
        return client_id, seconds

    def reject(self, element: Any, error: InvalidMessageError):
        self._failed.inc()
        yield FAILED, failure_from_error(element, None, error, attempts=0)

    def start(self, work: list[tuple[str, int]]) -> concurrent.futures.Future:
        return self.client.submit(_set_all(self.client.aio, work, self.concurrency))

    def outputs(self, element: Any, work: tuple[str, int], result: tuple[int, int] | TdmqError):
        client_id, _ = work
        if isinstance(result, TdmqError):
            self._failed.inc()
            context = f"setting the keep-alive of {client_id!r}"
            yield FAILED, failure_from_error(element, None, result, context=context)
        else:
            self._set.inc()
            keepalive, attempts = result
            yield None, KeepAliveSet(element, client_id, keepalive, attempts)


async def _set_all(
    client: AsyncTdmqClient, work: list[tuple[str, int]], concurrency: int
) -> list[tuple[int, int] | TdmqError]:
    results: list[Any] = [None] * len(work)
    jobs = iter(enumerate(work))

    async def worker() -> None:
        for index, (client_id, seconds) in jobs:
            try:
                results[index] = await client.set_keepalive_with_attempts(client_id, seconds)
            except TdmqError as error:
                results[index] = error

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(work)))))
    return results


@beam.typehints.with_input_types(Any)
@beam.typehints.with_output_types(KeepAliveSet)
class SetClientKeepAlive(beam.PTransform):
    """Sets the server-side keep-alive of online clients, one per element.

    Intervals outside 30..1200 seconds fail before any call. Refusals (client
    offline, a keep-alive-0 session, authentication, permission) and what still
    fails after retries go to ``failed`` with the reason.

    Args:
        connection: the instance access point and credentials.
        client_id: the field holding the client id (default ``client_id``), or a callable.
        interval: the field holding the seconds (default ``interval``), a fixed
            int for every element, or a callable.
        batch_size, max_pending_batches, batching, max_buffering_duration_secs:
            as in `WriteToTdmqMqtt`.
    """

    def __init__(
        self,
        connection: TdmqConnection,
        *,
        client_id: str | Callable[[Any], str] = "client_id",
        interval: str | int | Callable[[Any], int] = "interval",
        batch_size: int | None = None,
        max_pending_batches: int = 32,
        batching: Literal["auto", "bundle", "sharded"] = "auto",
        max_buffering_duration_secs: float = 1.0,
    ) -> None:
        super().__init__()
        self._batching = BatchingOptions.resolve(
            connection, batch_size, max_pending_batches, batching, max_buffering_duration_secs
        )
        low, high = KEEPALIVE_RANGE
        if isinstance(interval, int) and not isinstance(interval, bool) and not low <= interval <= high:
            raise ValueError(f"interval must be within {low}..{high} seconds, got {interval}")
        if not (callable(interval) or isinstance(interval, (str, int))) or isinstance(interval, bool):
            raise ValueError("interval must name a field, be an int or a callable")
        if not (callable(client_id) or (isinstance(client_id, str) and client_id)):
            raise ValueError("client_id must name a field or be a callable")
        self._connection = connection
        self._client_id = client_id_getter(client_id)
        self._interval = _interval_getter(interval)
        self._interval_label = interval if isinstance(interval, (str, int)) else "callable"
        self._tag = f"SetClientKeepAlive-{uuid.uuid4()}"

    def expand(self, pcoll: pvalue.PCollection) -> KeepAliveResult:
        def make_fn(**options: Any) -> _KeepAliveFn:
            return _KeepAliveFn(self._connection, self._tag, self._client_id, self._interval, **options)

        return KeepAliveResult(*self._batching.apply(pcoll, "SetKeepAlive", make_fn, main="published"))

    def display_data(self) -> dict[str, Any]:
        data = {key: DisplayDataItem(value, label=key) for key, value in self._connection.display_data().items()}
        data["interval"] = DisplayDataItem(self._interval_label, label="Interval")
        return data
