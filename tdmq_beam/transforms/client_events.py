"""`ReadClientEvents`: the service's client events (``$events/...``) as `ClientEvent`; malformed ones in ``failed``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics.metric import Metrics

from tdmq_beam.errors import ConfigurationError
from tdmq_beam.option_checks import non_negative
from tdmq_beam.records.client_event import ClientEvent, event_time
from tdmq_beam.records.payload import RecordError
from tdmq_beam.records.received_message import ReceivedMessage
from tdmq_beam.rules.client_events import CLIENT_EVENTS, STATUS_EVENTS, event_topic
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.transforms.batched_calls import FAILED
from tdmq_beam.transforms.outputs import output, par_do_with_outputs
from tdmq_beam.transforms.read import ReadFromTdmqMqtt
from tdmq_beam.transforms.results import FailedMessage

__all__ = ["ClientEventsResult", "ReadClientEvents"]

_NAMESPACE = "tdmq_beam.ReadClientEvents"


class ClientEventsResult(NamedTuple):
    """What `ReadClientEvents` returns; ``events, failed = p | ReadClientEvents(...)``.

    Attributes:
        events: a `ClientEvent` per event, timestamped by the event's own time.
        failed: a `FailedMessage` per message that is not an event (not JSON, no
            ``clientid``, no time): the `ReceivedMessage` as ``element``,
            ``error_kind`` ``invalid_event`` and the reason.
    """

    events: pvalue.PCollection[ClientEvent]
    failed: pvalue.PCollection[FailedMessage]


class _ParseEventsFn(beam.DoFn):
    def __init__(self, pairs: bool) -> None:
        self._pairs = pairs
        self._events = Metrics.counter(_NAMESPACE, "events")
        self._invalid = Metrics.counter(_NAMESPACE, "invalid_events")

    def process(self, message: ReceivedMessage) -> Iterator[Any]:
        try:
            event = ClientEvent.from_message(message)
        except RecordError as exc:
            self._invalid.inc()
            failure = FailedMessage(message, message.topic, None, "invalid_event", f"not a client event: {exc}", 0)
            yield output(FAILED, failure, self._pairs)
            return
        self._events.inc()
        yield output(None, event, self._pairs)


class ReadClientEvents(beam.PTransform):
    """Reads the client events the service publishes, as `ClientEvent`.

    The service publishes an event on ``$events/{name}`` when a client connects,
    disconnects, subscribes, ... (QoS 0 JSON). This source subscribes to the
    chosen events with `ReadFromTdmqMqtt` and parses each. The events are
    asynchronous (the online-status page's warning): they can come late, out of
    order, or not at all. Each element's event time is the event's own time, and
    the watermark trails the receive time by ``event_time_delay``, so late events
    within it are on time; `TrackClientStatus` orders them per client.

    A message that is not an event goes to ``failed``; fields the connector does
    not know are kept in ``ClientEvent.fields``.

    Args:
        connection: the instance; needs ``mqtt_endpoint``.
        events: the event names to read, from ``client_connected``,
            ``client_disconnected``, ``session_subscribed``, ``session_unsubscribed``,
            ``certificate_registered``, ``certificate_rejected``. Defaults to the two
            that change a client's status.
        client_id_prefix: the readers' client ids are ``{prefix}-0``, ... Defaults to
            ``tdmq-beam-events``; two pipelines must not share it.
        share_group: split the events among ``num_readers`` readers (and other
            members of the group) through a shared subscription. Defaults to None.
        num_readers: parallel readers, with ``share_group``. Defaults to 1.
        qos: the subscriptions' QoS. The service publishes events at QoS 0, which
            a higher QoS does not raise. Defaults to 0.
        session_expiry_interval: seconds the broker keeps a reader's session after
            it disconnects. Defaults to 300: QoS 0 events are not kept for an
            absent reader anyway.
        event_time_delay: seconds an event may arrive after its time and still be
            on time for event-time windows. Defaults to 5.
        **read_options: any other `ReadFromTdmqMqtt` option (``max_records``,
            ``max_read_time``, ``mqtt_version``, ``keepalive``, ...).

    Returns a `ClientEventsResult` (``events``, ``failed``).

    Raises:
        ConfigurationError: an option that cannot work, naming it.
    """

    def __init__(
        self,
        connection: TdmqConnection,
        *,
        events: Sequence[str] = STATUS_EVENTS,
        client_id_prefix: str = "tdmq-beam-events",
        share_group: str | None = None,
        num_readers: int = 1,
        qos: int = 0,
        session_expiry_interval: int = 300,
        event_time_delay: float = 5.0,
        **read_options: Any,
    ) -> None:
        super().__init__()
        names = (events,) if isinstance(events, str) else tuple(events)
        if not names:
            raise ConfigurationError("events must name at least one event")
        unknown = [name for name in names if name not in CLIENT_EVENTS]
        if unknown:
            raise ConfigurationError(f"events: unknown {unknown!r}; the service publishes {', '.join(CLIENT_EVENTS)}")
        non_negative("event_time_delay", event_time_delay, unit=" seconds")
        for reserved in ("topics", "timestamp_fn", "deduplicate_window"):
            if reserved in read_options:
                raise ConfigurationError(f"{reserved} is set by ReadClientEvents; it cannot be given")
        self._events = tuple(dict.fromkeys(names))
        self._read = ReadFromTdmqMqtt(
            connection,
            [event_topic(name) for name in self._events],
            client_id_prefix=client_id_prefix,
            share_group=share_group,
            num_readers=num_readers,
            qos=qos,
            session_expiry_interval=session_expiry_interval,
            timestamp_fn=event_time,
            event_time_delay=event_time_delay,
            **read_options,
        )

    def expand(self, pbegin: beam.pvalue.PBegin) -> ClientEventsResult:
        messages = pbegin | "Read" >> self._read
        outputs = par_do_with_outputs(
            messages,
            "Parse",
            _ParseEventsFn,
            "events",
            {"events": ClientEvent, FAILED: FailedMessage},
        )
        for parsed in outputs.values():
            parsed.is_bounded = messages.is_bounded
        return ClientEventsResult(outputs["events"], outputs[FAILED])

    def display_data(self) -> dict[str, Any]:
        return {**self._read.display_data(), "events": ", ".join(self._events)}
