"""`ClientEvent`: one client event of the service, read from its ``$events/...`` message."""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Optional

import apache_beam as beam
from apache_beam.utils.timestamp import Timestamp

from tdmq_beam.json_documents import load_json
from tdmq_beam.records.payload import RecordError
from tdmq_beam.records.received_message import ReceivedMessage
from tdmq_beam.rules.client_events import CLIENT_EVENTS, EVENTS_ROOT, ClientEventKind

__all__ = ["ClientEvent", "event_time"]


class ClientEvent(NamedTuple):
    """A client event (a schema'd NamedTuple: Beam SQL and YAML see Rows).

    Attributes:
        client_id: the client it is about (``clientid``).
        event: its name, as its topic ends: ``client_connected``, ``client_disconnected``, ...
        timestamp: when it happened by the service's clock (``connected_at``,
            ``disconnected_at``, else ``timestamp``); the element's event time.
        username: the client's username, None when absent.
        reason: why the client disconnected (``normal``, ``takeovered``, ``kicked``,
            ``keepalive_timeout``, ...); None for other events.
        fields: the event's whole JSON object as received, unknown fields included.
        receive_time: when the reader received it; how late it came is
            ``receive_time - timestamp``.
    """

    client_id: str
    event: str
    timestamp: Timestamp
    username: Optional[str]  # noqa: UP045 (Beam's schema inference reads typing.Optional)
    reason: Optional[str]  # noqa: UP045
    fields: str
    receive_time: Timestamp

    @property
    def kind(self) -> ClientEventKind:
        return CLIENT_EVENTS[self.event]

    @property
    def online(self) -> bool | None:
        """The client's status after the event; None for one that does not change it."""
        return CLIENT_EVENTS[self.event].online

    def field(self, name: str) -> Any:
        """One field of the event's JSON object (``keepalive``, ``proto_ver``, ``node``, ...), None when absent."""
        return json.loads(self.fields).get(name)

    @classmethod
    def from_message(cls, message: ReceivedMessage) -> ClientEvent:
        """The event a ``$events/{name}`` message carries.

        Raises:
            RecordError: not an event topic, not a JSON object, no client id, or
                no time; the message names the field.
        """
        kind = _kind_of(message.topic)
        values = _json_object(message.payload)
        client_id = values.get("clientid")
        if not isinstance(client_id, str) or not client_id:
            raise RecordError("clientid", f"must be a non-empty string, got {client_id!r}")
        return cls(
            client_id=client_id,
            event=kind.name,
            timestamp=Timestamp(micros=_time_ms(kind, values) * 1000),
            username=_optional_text(values, "username"),
            reason=_optional_text(values, "reason"),
            fields=message.payload.decode("utf-8"),
            receive_time=message.receive_time,
        )


beam.coders.registry.register_coder(ClientEvent, beam.coders.RowCoder)


def event_time(message: ReceivedMessage) -> Timestamp:
    """The event time of an event message: its own time, or the receive time when it has none
    (a malformed event, which then goes to ``failed``)."""
    try:
        return ClientEvent.from_message(message).timestamp
    except RecordError:
        return message.receive_time


def _kind_of(topic: str) -> ClientEventKind:
    root, _, name = topic.partition("/")
    kind = CLIENT_EVENTS.get(name) if root == EVENTS_ROOT else None
    if kind is None:
        raise RecordError(None, f"{topic!r} is not a client event topic ({EVENTS_ROOT}/{'|'.join(CLIENT_EVENTS)})")
    return kind


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        values = load_json(payload)
    except ValueError as exc:  # not UTF-8, not JSON, or nested too deep
        raise RecordError(None, f"the event is not JSON: {exc}") from None
    if not isinstance(values, dict):
        raise RecordError(None, f"the event must be a JSON object, got {type(values).__name__}")
    return values


def _time_ms(kind: ClientEventKind, values: dict[str, Any]) -> int:
    name = kind.time_field if kind.time_field in values else "timestamp"
    value = values.get(name)
    if type(value) is not int or value < 0:
        raise RecordError(name, f"must be Unix milliseconds (a non-negative integer), got {value!r}")
    return value


def _optional_text(values: dict[str, Any], name: str) -> str | None:
    value = values.get(name)
    if value is not None and not isinstance(value, str):
        raise RecordError(name, f"must be a string, got {value!r}")
    return value
