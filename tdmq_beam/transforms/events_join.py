"""The events join of `EnrichWithClientStatus`: elements answered from the status their client's events tell.

Elements and `ClientEvent` are keyed by client id into one stateful DoFn that
keeps each client's `TrackedStatus` (`StatusStateFn`, the base of
`TrackClientStatus`'s DoFn too). An element is answered from it when the events have settled its client;
otherwise, with ``source="events+query"``, it goes on to the active query, and
with ``source="events"`` it is answered ``online=None`` (unknown). An element is
answered with what the events have told when it arrives: an event still on its
way is not waited for.

Settled means: an event has been seen for the client, and the newest is at most
``staleness`` seconds old by the worker's clock. Past that the events are not
trusted alone, since a lost ``client_disconnected`` (events are QoS 0) would
leave a client online for ever.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import Metrics

from tdmq_beam.errors import InvalidMessageError
from tdmq_beam.records.client_event import ClientEvent
from tdmq_beam.records.tracked_status import TrackedStatus
from tdmq_beam.service.status_lookup import ClientStatus
from tdmq_beam.transforms.batched_calls import FAILED
from tdmq_beam.transforms.outputs import output
from tdmq_beam.transforms.results import failure_from_error
from tdmq_beam.transforms.track_status import StatusStateFn

__all__ = ["ASK", "EVENT", "QUERY", "ElementsByClientFn", "EventsJoinFn", "answer_from_events", "keyed_event"]

EVENT = "event"
"""The tag of an event in the join's input (an element's is None)."""
QUERY = "query"
"""The join's output of the elements the events have not settled, for the active query."""


def keyed_event(event: ClientEvent) -> tuple[str, tuple[str | None, Any]]:
    return event.client_id, (EVENT, event)


class ElementsByClientFn(beam.DoFn):
    """Keys each element by its client id; an element without one goes to ``failed``."""

    def __init__(self, client_id: Callable[[Any], str], pairs: bool) -> None:
        self._client_id = client_id
        self._pairs = pairs

    def process(self, element: Any) -> Iterator[Any]:
        try:
            client_id = self._client_id(element)
        except InvalidMessageError as error:
            yield output(FAILED, failure_from_error(element, None, error, attempts=0), self._pairs)
            return
        yield output(None, (client_id, (None, element)), self._pairs)


class EventsJoinFn(StatusStateFn):
    """Keeps each client's status from its events and answers its elements from it."""

    def __init__(
        self,
        namespace: str,
        join: Callable[[Any, ClientStatus], Any],
        *,
        with_query: bool,
        staleness: float,
        offline_expiry: float,
        pairs: bool,
    ) -> None:
        super().__init__(namespace, offline_expiry)
        self._join = join
        self._with_query = with_query
        self._staleness = staleness
        self._pairs = pairs

    def setup(self) -> None:
        super().setup()
        self._from_events = Metrics.counter(self._namespace, "answered_from_events")
        self._to_query = Metrics.counter(self._namespace, "sent_to_query")
        self._unknown = Metrics.counter(self._namespace, "unknown_to_events")
        self._events = Metrics.counter(self._namespace, "events")

    def process(
        self,
        keyed: tuple[str, tuple[str | None, Any]],
        status=beam.DoFn.StateParam(StatusStateFn.STATUS),
        expiry=beam.DoFn.TimerParam(StatusStateFn.EXPIRY),
    ) -> Iterator[Any]:
        client_id, (tag, value) = keyed
        if tag == EVENT:
            self._events.inc()
            self.apply(value, status, expiry)
            return
        known = status.read()
        answer = answer_from_events(known, time.time(), with_query=self._with_query, staleness=self._staleness)
        if isinstance(answer, str):  # ASK
            self._to_query.inc()
            yield output(QUERY, value, self._pairs)
            return
        (self._unknown if answer is None else self._from_events).inc()
        yield output(None, self._join(value, ClientStatus(client_id, answer)), self._pairs)


ASK = "ask"
"""`answer_from_events`'s answer when the active query must answer."""


def answer_from_events(
    known: TrackedStatus | None, now: float, *, with_query: bool, staleness: float
) -> bool | str | None:
    """What the join answers for a client whose events told ``known`` (None: nothing), at ``now``
    (Unix seconds): online True/False, None (unknown, ``events`` only) or `ASK` (the query).

    With the query behind, the events answer only where they have settled the
    client: an event seen, at most ``staleness`` seconds old. The rule is pure so
    that the benchmark that measures how wrong each source is applies this one.
    """
    if known is not None and (not with_query or now - known.since.micros / 1e6 <= staleness):
        return known.online
    return ASK if with_query else None
