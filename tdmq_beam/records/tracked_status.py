"""`TrackedStatus`: a client's online status as its events tell it, and the rule that orders them.

The events are asynchronous: one can arrive after a newer one, or never. The
rule orders them by their own time, never by arrival, so a late
``client_connected`` cannot override a newer ``client_disconnected``. No I/O,
no Beam state: `TrackClientStatus` and the events join of
`EnrichWithClientStatus` keep one `TrackedStatus` per client in Beam state and
apply `next_status` to it.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.utils.timestamp import Timestamp

from tdmq_beam.records.client_event import ClientEvent

__all__ = ["TAKEOVER", "TrackedStatus", "next_status"]

TAKEOVER = "takeovered"
"""The ``reason`` of the disconnect the service reports when a new connection takes the client id over."""


class TrackedStatus(NamedTuple):
    """What the events say of one client (a schema'd NamedTuple).

    Attributes:
        client_id: the client.
        online: connected (True) or not (False), as of ``since``.
        since: the time of the event that set it (the service's clock).
        reason: why it disconnected (``normal``, ``takeovered``, ``keepalive_timeout``,
            ...); None while online.
        username: the username of that event, None when it had none.
    """

    client_id: str
    online: bool
    since: Timestamp
    reason: Optional[str]  # noqa: UP045 (Beam's schema inference reads typing.Optional)
    username: Optional[str]  # noqa: UP045


beam.coders.registry.register_coder(TrackedStatus, beam.coders.RowCoder)


def next_status(current: TrackedStatus | None, event: ClientEvent) -> TrackedStatus | None:
    """The status after ``event``, or None when the event leaves ``current`` as it is.

    An event that does not change a status (a subscription), or is older than
    ``current``, changes nothing. At the same millisecond the later arrival wins,
    except that a takeover's disconnect never overrides the connect beside it (the
    new connection's ``client_connected`` and the old one's ``client_disconnected``
    can carry the same time, in either order).
    """
    online = event.online
    if online is None:
        return None
    if current is not None:
        if event.timestamp < current.since:
            return None
        if event.timestamp == current.since and current.online and not online and event.reason == TAKEOVER:
            return None
    return TrackedStatus(event.client_id, online, event.timestamp, None if online else event.reason, event.username)
