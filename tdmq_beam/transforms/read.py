"""`ReadFromTdmqMqtt`: an unbounded source of MQTT messages, acknowledged only after Beam commits them.

Built on Beam's `apache_beam.io.unbounded_source` (Beam 2.76+): each reader is
an `UnboundedSource` split of its own, read by Beam's splittable DoFn, which
ends a bundle when the reader has nothing ready, after
``max_records_per_bundle`` messages or after ``max_bundle_time`` seconds, and
registers the bundle's `CheckpointMark` with the runner's bundle finalizer.
The runner calls the mark's ``finalize_checkpoint`` once it has durably
committed the bundle's output, and only then does the reader's session
(`service.subscriber.MqttSubscriber`) acknowledge the bundle's messages to the
broker, in the order received.

The network session outlives any one reader object. Beam may build a new
reader for each bundle (from the restriction's mark) or keep one parked between
bundles; either way the process's one session per client id continues, as long
as the mark says exactly where the session stands (its connection and the last
message handed out). When it does not (a bundle failed after messages were
handed out, and Beam retries from the mark before it), the session reconnects
and the broker sends every unacknowledged message again, flagged DUP.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam import coders
from apache_beam.coders import BooleanCoder
from apache_beam.internal import pickler
from apache_beam.io.unbounded_source import CheckpointMark, ReadFromUnboundedSource, UnboundedReader, UnboundedSource
from apache_beam.metrics.metric import Lineage, Metrics
from apache_beam.transforms import userstate
from apache_beam.transforms.display import DisplayDataItem
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from tdmq_beam.errors import ConfigurationError
from tdmq_beam.mqtt.topics import topic_filter_error
from tdmq_beam.records.received_message import ReceivedMessage
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.service.subscriber import MqttSubscriber, SubscriptionSettings

__all__ = ["ReadFromTdmqMqtt"]

_LOGGER = logging.getLogger(__name__)

_NAMESPACE = "tdmq_beam.ReadFromTdmqMqtt"
_IDLE_WAIT = 0.05
"""Seconds a reader with nothing ready waits for a message before ending the bundle."""

# The process's sessions, by client id: they outlive the reader objects Beam makes and drops.
_SESSIONS: dict[str, MqttSubscriber] = {}
_SESSIONS_LOCK = threading.Lock()


@dataclass(frozen=True)
class _ReadSpec:
    """Everything a reader needs, picklable (the connection resolves its secrets on the worker)."""

    connection: TdmqConnection
    filters: tuple[str, ...]
    client_id_prefix: str
    num_readers: int
    qos: int
    protocol_level: int
    session_expiry_interval: int
    keepalive: int
    receive_maximum: int
    max_records: int | None
    max_read_time: float | None
    timestamp_fn: Callable[[ReceivedMessage], Any] | None
    event_time_delay: float

    def client_id(self, index: int) -> str:
        return f"{self.client_id_prefix}-{index}"

    def settings(self, index: int) -> SubscriptionSettings:
        return SubscriptionSettings(
            client_id=self.client_id(index),
            filters=self.filters,
            qos=self.qos,
            protocol_level=self.protocol_level,
            session_expiry_interval=self.session_expiry_interval,
            keepalive=self.keepalive,
            receive_maximum=self.receive_maximum,
        )

    def records_for(self, index: int) -> int | None:
        """Reader ``index``'s share of ``max_records``."""
        if self.max_records is None:
            return None
        share, extra = divmod(self.max_records, self.num_readers)
        return share + (1 if index < extra else 0)


class _AckMark(CheckpointMark):
    """Where a reader's session stands after a bundle; finalizing it acknowledges the bundle's messages.

    Attributes:
        client_id: the session.
        generation: its network connection when the mark was cut ("" before any).
        sequence: the last message handed out (0 before any).
        records_read, started_at: for bounded reads, across bundles.
        final: the read is over: acknowledge, then disconnect.
    """

    def __init__(
        self, client_id: str, generation: str, sequence: int, records_read: int, started_at: float, final: bool
    ) -> None:
        self.client_id = client_id
        self.generation = generation
        self.sequence = sequence
        self.records_read = records_read
        self.started_at = started_at
        self.final = final

    def finalize_checkpoint(self) -> None:
        with _SESSIONS_LOCK:
            session = _SESSIONS.pop(self.client_id, None) if self.final else _SESSIONS.get(self.client_id)
        if session is not None and self.generation:
            session.acknowledge_through(self.generation, self.sequence, then_close=self.final)
        elif session is not None and self.final:
            session.close()

    def as_json(self) -> bytes:
        return json.dumps(
            [self.client_id, self.generation, self.sequence, self.records_read, self.started_at, self.final]
        ).encode()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _AckMark) and self.as_json() == other.as_json()

    def __hash__(self) -> int:
        return hash(self.as_json())

    def __repr__(self) -> str:
        return f"_AckMark({self.client_id!r}, {self.generation!r}, {self.sequence})"


class _AckMarkCoder(coders.Coder):
    """Deterministic, so Beam can key its reader cache by the mark."""

    def encode(self, value: _AckMark) -> bytes:
        return value.as_json()

    def decode(self, encoded: bytes) -> _AckMark:
        return _AckMark(*json.loads(encoded))

    def is_deterministic(self) -> bool:
        return True


class _MqttReader(UnboundedReader):
    """Hands out one session's messages for Beam, and says where it stands."""

    def __init__(self, source: _MqttSource, session: MqttSubscriber, mark: _AckMark | None) -> None:
        self._spec = source.spec
        self._session = session
        self._client_id = source.client_id
        assert source.index is not None  # readers are made for one split
        self._limit = source.spec.records_for(source.index)
        self._records_read = mark.records_read if mark else 0
        self._started_at = mark.started_at if mark else time.time()
        self._current: ReceivedMessage | None = None
        self._done = False
        self._watermark = Timestamp(0)
        self._received = Metrics.counter(_NAMESPACE, "received")
        self._redelivered = Metrics.counter(_NAMESPACE, "redelivered")
        self._acknowledged = Metrics.counter(_NAMESPACE, "acknowledged")
        self._stale = Metrics.counter(_NAMESPACE, "stale_acknowledgements")
        self._reconnects = Metrics.counter(_NAMESPACE, "reconnects")
        self._ack_delay = Metrics.distribution(_NAMESPACE, "ack_delay_ms")

    def start(self) -> bool:
        self._report_session()
        return self.advance()

    def advance(self) -> bool:
        if self._finished():
            return False
        session = self._session
        delivery = session.next_delivery()
        if delivery is None and session.wait(_IDLE_WAIT):
            delivery = session.next_delivery()
        if delivery is None:
            return False
        message = ReceivedMessage.from_publish(delivery.packet, Timestamp(micros=int(delivery.receive_time * 1e6)))
        self._current = message
        self._records_read += 1
        self._received.inc()
        if message.dup:
            self._redelivered.inc()
        return True

    def _finished(self) -> bool:
        if not self._done:
            spec = self._spec
            self._done = (self._limit is not None and self._records_read >= self._limit) or (
                spec.max_read_time is not None and time.time() - self._started_at >= spec.max_read_time
            )
        return self._done

    def _report_session(self) -> None:
        """Beam metrics for what the session did since the last call: at a reader's start and at
        each bundle's end (acknowledgements happen at finalization, where no metrics context is
        open, so they are reported with the next bundle)."""
        stats = self._session.take_stats()
        if stats.acknowledged:
            self._acknowledged.inc(stats.acknowledged)
        if stats.stale_acknowledgements:
            self._stale.inc(stats.stale_acknowledgements)
        if stats.reconnects:
            self._reconnects.inc(stats.reconnects)
        for delay in stats.ack_delays_ms:
            self._ack_delay.update(delay)

    def get_current(self) -> ReceivedMessage:
        assert self._current is not None
        return self._current

    def get_current_timestamp(self) -> Timestamp:
        assert self._current is not None
        timestamp_fn = self._spec.timestamp_fn
        if timestamp_fn is None:
            return self._current.receive_time
        return Timestamp.of(timestamp_fn(self._current))

    def get_watermark(self) -> Timestamp:
        if self._finished():
            return MAX_TIMESTAMP
        # Future messages are the ones queued (oldest first) or yet to come (now):
        # the watermark advances with the clock while topics are quiet.
        oldest = self._session.oldest_ready_time()
        horizon = (oldest if oldest is not None else time.time()) - self._spec.event_time_delay
        self._watermark = max(self._watermark, Timestamp.of(horizon))
        return self._watermark

    def get_checkpoint_mark(self) -> _AckMark:
        self._report_session()
        session = self._session
        return _AckMark(
            self._client_id,
            session.generation,
            session.handed_out,
            self._records_read,
            self._started_at,
            self._finished(),
        )

    def close(self) -> None:
        if self._done or self._session.owner is not self:
            return  # the final mark's finalization disconnects; or another reader has the session now
        # Beam gives up on this reader (a failure, or the pipeline ends): disconnect, so
        # that whatever was not acknowledged goes back to the broker at once.
        with _SESSIONS_LOCK:
            if _SESSIONS.get(self._client_id) is self._session:
                del _SESSIONS[self._client_id]
        self._session.close()


class _MqttSource(UnboundedSource):
    """The read, or (after `split`) one reader of it."""

    def __init__(self, spec: _ReadSpec, index: int | None = None) -> None:
        self.spec = spec
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        # Beam encodes the source as an element with plain pickle: Beam's own pickler
        # carries what plain pickle cannot (a lambda as timestamp_fn).
        return _load_source, (pickler.dumps(self.spec), self.index)

    @property
    def client_id(self) -> str:
        assert self.index is not None
        return self.spec.client_id(self.index)

    def split(self, desired_num_splits: int, options: Any = None) -> Iterable[UnboundedSource]:
        if self.index is not None:
            return [self]
        return [_MqttSource(self.spec, index) for index in range(self.spec.num_readers)]

    def create_reader(self, options: Any, checkpoint_mark: CheckpointMark | None) -> _MqttReader:
        if self.index is None:  # a runner that does not split: one reader
            return _MqttSource(self.spec, 0).create_reader(options, checkpoint_mark)
        mark = checkpoint_mark if isinstance(checkpoint_mark, _AckMark) else None
        client_id = self.client_id
        with _SESSIONS_LOCK:
            session = _SESSIONS.get(client_id)
            if session is None:
                session = MqttSubscriber(self.spec.connection, self.spec.settings(self.index))
                try:
                    session.start()
                except Exception:
                    session.close()
                    raise
                _SESSIONS[client_id] = session
                _report_lineage(self.spec)
            elif not _continues(session, mark):
                _LOGGER.info("MQTT reader %s resumes from an earlier mark: reconnecting for redelivery", client_id)
                session.restart()
            reader = _MqttReader(self, session, mark)
            session.owner = reader
        return reader

    def get_checkpoint_mark_coder(self) -> coders.Coder:
        return _AckMarkCoder()

    def default_output_coder(self) -> coders.Coder:
        return coders.registry.get_coder(ReceivedMessage)


def _load_source(spec: bytes, index: int | None) -> _MqttSource:
    return _MqttSource(pickler.loads(spec), index)


def _continues(session: MqttSubscriber, mark: _AckMark | None) -> bool:
    """Whether ``mark`` is exactly where the live session stands (nothing handed out since)."""
    if mark is None:
        return session.handed_out == 0
    return bool(mark.generation) and mark.generation == session.generation and mark.sequence == session.handed_out


def _report_lineage(spec: _ReadSpec) -> None:
    host, port, _ = spec.connection.mqtt_address()
    for topic_filter in spec.filters:
        Lineage.sources().add("tdmq_mqtt", f"{host}:{port}", topic_filter, subtype="topic")


class _FirstPerKeyFn(beam.DoFn):
    """Passes the first value of each key, then drops the key's values until ``window`` seconds
    of event time later. Beam's `DeduplicatePerKey` also declares a processing-time timer,
    which sends a DirectRunner pipeline to the runner that cannot run this source."""

    SEEN = userstate.ReadModifyWriteStateSpec("seen", BooleanCoder())
    EXPIRY = userstate.TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, window: float) -> None:
        self._window = window

    def process(
        self,
        element: tuple[str, ReceivedMessage],
        timestamp=beam.DoFn.TimestampParam,
        seen=beam.DoFn.StateParam(SEEN),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterable[ReceivedMessage]:
        if seen.read():
            return
        seen.write(True)
        expiry.set(timestamp + self._window)
        yield element[1]

    @userstate.on_timer(EXPIRY)
    def forget(self, seen=beam.DoFn.StateParam(SEEN)) -> None:
        seen.clear()


def _by_idempotency_key(message: ReceivedMessage, partitions: int, property_name: str) -> int:
    return 0 if message.user_property(property_name) is not None else 1


class ReadFromTdmqMqtt(beam.PTransform):
    """Reads MQTT messages from a TDMQ for MQTT instance, at least once.

    A message is acknowledged to the broker only after the runner has committed
    the bundle that holds it (Beam's bundle finalization), in the order
    received. Sessions are persistent (clean start off, ``session_expiry_interval``)
    and reader *i* always has client id ``{client_id_prefix}-{i}``: a restarted
    pipeline, or a reader rescheduled to another worker, resumes its session
    and the broker sends again everything not acknowledged, flagged ``dup``.

    The output is a PCollection of `ReceivedMessage` (a schema'd NamedTuple:
    Beam SQL and YAML see Rows), timestamped by ``timestamp_fn`` or the receive
    time. The watermark follows the clock while topics are quiet, so windows close.

    Args:
        connection: the instance; needs ``mqtt_endpoint`` (``mqtts://`` for TLS
            with the connection's CA and client certificate). Username and
            password go in CONNECT.
        topics: a topic filter or a list of them (wildcards allowed; at most 30
            per client on the service).
        client_id_prefix: the readers' client ids are ``{prefix}-0`` ... Keep it
            stable across runs: that is how a run resumes the last one's sessions.
            Two pipelines must not share it.
        share_group: subscribe through ``$share/{share_group}/{filter}`` so that the
            broker splits the messages among the readers (and other members of the
            group). Defaults to None: every reader would get every message, so
            only one reader is allowed.
        num_readers: parallel readers, with ``share_group``. Defaults to 1.
        qos: the subscriptions' QoS: 0 (no acknowledgement: at most once), 1 or 2.
            Defaults to 1.
        mqtt_version: 5 (default) or 4 (MQTT 3.1.1: no properties, and the service
            holds at most 16 unacknowledged messages per reader).
        session_expiry_interval: seconds the broker keeps a reader's session (and
            its messages) after it disconnects (MQTT 5). Defaults to 86400.
        max_records: stop after this many messages in total (each reader reads its
            share: ``max_records`` split evenly). Defaults to None (unbounded).
        max_read_time: stop after this many seconds. Defaults to None (unbounded).
        timestamp_fn: the event time of a message (a `Timestamp`, or Unix seconds);
            defaults to the receive time.
        event_time_delay: seconds by which event times (from ``timestamp_fn``) may
            trail the receive time; the watermark is held back that much. Defaults to 0.
        deduplicate_window: drop a message whose ``idempotency-key`` user property
            (what `WriteToTdmqMqtt` adds with ``idempotency_key``) was seen within this
            many seconds of event time (state per key, forgotten once the watermark
            passes). Messages without the property pass. Defaults to None (no
            de-duplication).
        idempotency_property: the user property ``deduplicate_window`` reads.
            Defaults to ``idempotency-key``.
        keepalive: MQTT keep-alive seconds. Defaults to 60.
        receive_maximum: unacknowledged messages the broker may send each reader
            (MQTT 5). Defaults to 65535, so bundles, not the window, pace the read.
        max_records_per_bundle: a bundle ends after this many messages. Defaults to 10000.
        max_bundle_time: a bundle ends after this many seconds. Defaults to 1.

    Raises:
        ConfigurationError: a setting that cannot work, naming it.
    """

    def __init__(
        self,
        connection: TdmqConnection,
        topics: str | Sequence[str],
        *,
        client_id_prefix: str,
        share_group: str | None = None,
        num_readers: int = 1,
        qos: int = 1,
        mqtt_version: int = 5,
        session_expiry_interval: int = 86400,
        max_records: int | None = None,
        max_read_time: float | None = None,
        timestamp_fn: Callable[[ReceivedMessage], Any] | None = None,
        event_time_delay: float = 0.0,
        deduplicate_window: float | None = None,
        idempotency_property: str = "idempotency-key",
        keepalive: int = 60,
        receive_maximum: int = 65535,
        max_records_per_bundle: int = 10000,
        max_bundle_time: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(connection, TdmqConnection):
            raise ConfigurationError(f"connection must be a TdmqConnection, got {type(connection).__name__}")
        connection.mqtt_address()  # raises when there is no mqtt_endpoint
        filters = (topics,) if isinstance(topics, str) else tuple(topics)
        if not filters:
            raise ConfigurationError("topics must name at least one topic filter")
        for topic_filter in filters:
            if not isinstance(topic_filter, str) or (problem := topic_filter_error(topic_filter)):
                raise ConfigurationError(f"topics: {topic_filter!r} is not a valid topic filter ({problem})")
            if topic_filter.startswith("$share/"):
                raise ConfigurationError(f"topics: give the group as share_group=, not in {topic_filter!r}")
        if len(filters) > 30:
            raise ConfigurationError(f"topics: the service allows 30 topic filters per client, got {len(filters)}")
        if not isinstance(client_id_prefix, str) or not client_id_prefix or len(client_id_prefix) > 100:
            raise ConfigurationError("client_id_prefix must be a non-empty str of at most 100 characters")
        if share_group is not None and (
            not isinstance(share_group, str) or not share_group or any(c in share_group for c in "/+#")
        ):
            raise ConfigurationError(
                f"share_group must be a non-empty name without '/', '+' or '#', got {share_group!r}"
            )
        if not isinstance(num_readers, int) or num_readers < 1:
            raise ConfigurationError(f"num_readers must be a positive int, got {num_readers!r}")
        if num_readers > 1 and share_group is None:
            raise ConfigurationError(
                "num_readers > 1 needs share_group: without a shared subscription every reader gets every message"
            )
        if qos not in (0, 1, 2):
            raise ConfigurationError(f"qos must be 0, 1 or 2, got {qos!r}")
        if mqtt_version not in (4, 5):
            raise ConfigurationError(f"mqtt_version must be 5 or 4 (MQTT 3.1.1), got {mqtt_version!r}")
        if not isinstance(session_expiry_interval, int) or not 0 < session_expiry_interval <= 0xFFFFFFFF:
            raise ConfigurationError(
                f"session_expiry_interval must be an int within 1..4294967295 seconds, got {session_expiry_interval!r}"
            )
        if max_records is not None and (not isinstance(max_records, int) or max_records < num_readers):
            raise ConfigurationError(f"max_records must be an int of at least num_readers, got {max_records!r}")
        if max_read_time is not None and not max_read_time > 0:
            raise ConfigurationError(f"max_read_time must be positive seconds, got {max_read_time!r}")
        if timestamp_fn is not None and not callable(timestamp_fn):
            raise ConfigurationError("timestamp_fn must be callable")
        if event_time_delay < 0:
            raise ConfigurationError(f"event_time_delay must not be negative, got {event_time_delay}")
        if deduplicate_window is not None and not deduplicate_window > 0:
            raise ConfigurationError(f"deduplicate_window must be positive seconds, got {deduplicate_window!r}")
        if not isinstance(keepalive, int) or not 0 < keepalive <= 65535:
            raise ConfigurationError(f"keepalive must be an int within 1..65535, got {keepalive!r}")
        if not isinstance(receive_maximum, int) or not 0 < receive_maximum <= 65535:
            raise ConfigurationError(f"receive_maximum must be an int within 1..65535, got {receive_maximum!r}")
        if not isinstance(max_records_per_bundle, int) or max_records_per_bundle < 1:
            raise ConfigurationError(f"max_records_per_bundle must be a positive int, got {max_records_per_bundle!r}")
        if not max_bundle_time > 0:
            raise ConfigurationError(f"max_bundle_time must be positive seconds, got {max_bundle_time!r}")
        if share_group is not None:
            filters = tuple(f"$share/{share_group}/{topic_filter}" for topic_filter in filters)
        self._spec = _ReadSpec(
            connection=connection,
            filters=filters,
            client_id_prefix=client_id_prefix,
            num_readers=num_readers,
            qos=qos,
            protocol_level=mqtt_version,
            session_expiry_interval=session_expiry_interval,
            keepalive=keepalive,
            receive_maximum=receive_maximum,
            max_records=max_records,
            max_read_time=max_read_time,
            timestamp_fn=timestamp_fn,
            event_time_delay=float(event_time_delay),
        )
        self._deduplicate_window = deduplicate_window
        self._idempotency_property = idempotency_property
        self._max_records_per_bundle = max_records_per_bundle
        self._max_bundle_time = float(max_bundle_time)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[ReceivedMessage]:
        messages = pbegin | "Read" >> ReadFromUnboundedSource(
            _MqttSource(self._spec),
            poll_interval=_IDLE_WAIT,
            max_records_per_bundle=self._max_records_per_bundle,
            max_read_time_seconds=self._max_bundle_time,
        )
        messages.element_type = ReceivedMessage
        # A read with max_records or max_read_time ends: downstream may treat it as bounded (file
        # sinks, global-window aggregations), as Java's BoundedReadFromUnboundedSource does.
        messages.is_bounded = self._spec.max_records is not None or self._spec.max_read_time is not None
        if self._deduplicate_window is None:
            return messages
        key = self._idempotency_property
        keyed, unkeyed = messages | "HasIdempotencyKey" >> beam.Partition(_by_idempotency_key, 2, key)  # type: ignore[arg-type]
        unique = (
            keyed
            | "KeyByIdempotencyKey" >> beam.Map(lambda message: (message.user_property(key), message))
            | "Deduplicate" >> beam.ParDo(_FirstPerKeyFn(self._deduplicate_window)).with_output_types(ReceivedMessage)
        )
        return (unique, unkeyed) | "Merge" >> beam.Flatten().with_output_types(ReceivedMessage)

    def display_data(self) -> dict[str, Any]:
        spec = self._spec
        items: dict[str, Any] = dict(spec.connection.display_data())
        items.update(
            topic_filters=", ".join(spec.filters),
            client_id_prefix=spec.client_id_prefix,
            num_readers=spec.num_readers,
            qos=spec.qos,
            mqtt_version=spec.protocol_level,
            session_expiry_interval=spec.session_expiry_interval,
        )
        for key in ("max_records", "max_read_time"):
            if getattr(spec, key) is not None:
                items[key] = getattr(spec, key)
        if self._deduplicate_window is not None:
            items["deduplicate_window"] = self._deduplicate_window
        return {
            key: DisplayDataItem(
                value if isinstance(value, (str, int, float, bool)) else repr(value),
                label=key.replace("_", " ").capitalize(),
            )
            for key, value in items.items()
        }
