"""`TrackClientStatus`: the current online status of each client from its events, in Beam state.

`StatusStateFn` is the DoFn base of both this transform and the events join
of `EnrichWithClientStatus`: the state they keep per client, one
`TrackedStatus` (a few fields, so a client's state is bounded), and an
event-time timer that forgets a client once it has been offline for
``offline_expiry`` seconds, so that clients that went away do not hold state
for ever.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.coders import RowCoder
from apache_beam.metrics.metric import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import Duration

from tdmq_beam.option_checks import positive
from tdmq_beam.records.client_event import ClientEvent
from tdmq_beam.records.tracked_status import TrackedStatus, next_status

__all__ = ["DEFAULT_OFFLINE_EXPIRY", "StatusStateFn", "TrackClientStatus"]

_NAMESPACE = "tdmq_beam.TrackClientStatus"

DEFAULT_OFFLINE_EXPIRY = 86400.0
"""Seconds a client offline by its events is remembered: a day."""


class StatusStateFn(beam.DoFn):
    """A DoFn keeping one `TrackedStatus` per client: its state, its expiry timer, the rule applied.

    Subclasses take ``status=beam.DoFn.StateParam(StatusStateFn.STATUS)`` and
    ``expiry=beam.DoFn.TimerParam(StatusStateFn.EXPIRY)`` in ``process`` and call
    `apply` for each event; the timer's callback is here. (A timer has one
    callback, so the two DoFns share this class rather than a helper.)
    """

    STATUS = ReadModifyWriteStateSpec("status", RowCoder.from_type_hint(TrackedStatus, None))
    EXPIRY = TimerSpec("offline_expiry", TimeDomain.WATERMARK)

    def __init__(self, namespace: str, offline_expiry: float) -> None:
        self._namespace = namespace
        self._offline_expiry = offline_expiry

    def setup(self) -> None:
        self._expiry = Duration.of(self._offline_expiry)
        self._stale = Metrics.counter(self._namespace, "stale_events")
        self._expired = Metrics.counter(self._namespace, "expired_clients")

    def apply(self, event: ClientEvent, state: Any, timer: Any) -> tuple[TrackedStatus | None, TrackedStatus | None]:
        """(the status before, the status after ``event``); after is None when the event changed nothing."""
        current = state.read()
        status = next_status(current, event)
        if status is None:
            if event.online is not None:
                self._stale.inc()
            return current, None
        state.write(status)
        if status.online:
            timer.clear()
        else:
            timer.set(status.since + self._expiry)
        return current, status

    @on_timer(EXPIRY)
    def forget(self, status=beam.DoFn.StateParam(STATUS), fired=beam.DoFn.TimestampParam) -> None:
        """Forgets the client when it is still offline since before the timer's time minus the expiry."""
        known = status.read()
        if known is not None and not known.online and known.since + self._expiry <= fired:
            status.clear()
            self._expired.inc()


class _TrackFn(StatusStateFn):
    def __init__(self, offline_expiry: float) -> None:
        super().__init__(_NAMESPACE, offline_expiry)

    def setup(self) -> None:
        super().setup()
        self._changes = Metrics.counter(_NAMESPACE, "status_changes")

    def process(
        self,
        keyed: tuple[str, ClientEvent],
        status=beam.DoFn.StateParam(StatusStateFn.STATUS),
        expiry=beam.DoFn.TimerParam(StatusStateFn.EXPIRY),
    ) -> Iterator[TrackedStatus]:
        before, after = self.apply(keyed[1], status, expiry)
        if after is not None and (before is None or before.online != after.online):
            self._changes.inc()
            yield after


@beam.typehints.with_input_types(ClientEvent)
@beam.typehints.with_output_types(TrackedStatus)
class TrackClientStatus(beam.PTransform):
    """Turns client events into each client's status changes, ordered by the events' own time.

    Per client, Beam state holds the newest status the events have told; an
    event older than it (a ``client_connected`` that arrives after a newer
    ``client_disconnected``) changes nothing (counted ``stale_events``). The
    output is a `TrackedStatus` each time a client's status flips, and when a
    client is first seen: ``(client_id, online, since, reason, username)``.
    A client offline for ``offline_expiry`` seconds of event time is forgotten
    (``expired_clients``); its next event starts afresh.

    Events lost on the way (they are QoS 0) are not invented: a client whose
    disconnect never came stays online here. `EnrichWithClientStatus` with
    ``source="events+query"`` asks the service when the events are too old to trust.

    The events are taken into the global window (state lives as long as the
    client, not a window); a runner needs user state and event-time timers:
    the DirectRunner, Dataflow and Flink have them.

    Args:
        offline_expiry: seconds of event time after which an offline client's
            state is dropped. Defaults to 86400 (a day).

    Raises:
        ConfigurationError: an option that cannot work, naming it.
    """

    def __init__(self, *, offline_expiry: float = DEFAULT_OFFLINE_EXPIRY) -> None:
        super().__init__()
        self._offline_expiry = positive("offline_expiry", offline_expiry, unit=" seconds")

    def expand(self, events: beam.PCollection[ClientEvent]) -> beam.PCollection[TrackedStatus]:
        return (
            events
            | "Global" >> beam.WindowInto(GlobalWindows())
            | "ByClient" >> beam.Map(lambda event: (event.client_id, event)).with_output_types(tuple[str, ClientEvent])
            | "Track" >> beam.ParDo(_TrackFn(self._offline_expiry)).with_output_types(TrackedStatus)
        )

    def display_data(self) -> dict[str, Any]:
        return {"offline_expiry": self._offline_expiry}
