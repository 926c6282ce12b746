"""The client events the service publishes, one row per event: shared by the reader and the emulator.

The service publishes each as a QoS 0 JSON message on ``$events/{name}``
(`../shared/reference/tdmq-api.md`, section 1.4; field names as EMQX's). The
online-status page warns that they are asynchronous: they can arrive late, out
of order, or not at all, so a status built from them is ordered by each event's
own time (``time_field``), never by arrival.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "CLIENT_EVENTS",
    "EVENTS_ROOT",
    "STATUS_EVENTS",
    "ClientEventKind",
    "event_topic",
]

EVENTS_ROOT = "$events"
"""The topic root of the events: only the service publishes under it."""


class ClientEventKind(NamedTuple):
    """One event the service publishes.

    Attributes:
        name: the last level of its topic, ``$events/{name}``.
        event: the value of its ``event`` field (``client.connected``).
        time_field: the field holding when it happened (Unix ms); ``timestamp``
            when that one is absent.
        online: the client's status after it: True, False, or None for an event
            that does not change it (a subscription, a certificate).
    """

    name: str
    event: str
    time_field: str
    online: bool | None


CLIENT_EVENTS: dict[str, ClientEventKind] = {
    kind.name: kind
    for kind in (
        ClientEventKind("client_connected", "client.connected", "connected_at", True),
        ClientEventKind("client_disconnected", "client.disconnected", "disconnected_at", False),
        ClientEventKind("session_subscribed", "session.subscribed", "timestamp", None),
        ClientEventKind("session_unsubscribed", "session.unsubscribed", "timestamp", None),
        ClientEventKind("certificate_registered", "certificate.registered", "timestamp", None),
        ClientEventKind("certificate_rejected", "certificate.rejected", "timestamp", None),
    )
}
"""Every event, by the name its topic ends with."""

STATUS_EVENTS = tuple(name for name, kind in CLIENT_EVENTS.items() if kind.online is not None)
"""The events that change a client's online status: connected and disconnected."""


def event_topic(name: str) -> str:
    """The topic event ``name`` is published on."""
    return f"{EVENTS_ROOT}/{name}"
