"""The read side's Beam source: an `UnboundedSource` per reader, its reader and its checkpoint mark.

Built on Beam's `apache_beam.io.unbounded_source` (Beam 2.76+): each reader is
an `UnboundedSource` split of its own, read by Beam's splittable DoFn, which
ends a bundle when the reader has nothing ready, after
``max_records_per_bundle`` messages or after ``max_bundle_time`` seconds, and
registers the bundle's `CheckpointMark` with the runner's bundle finalizer.
The runner calls the mark's ``finalize_checkpoint`` once it has durably
committed the bundle's output, and only then does the reader's session
acknowledge the bundle's messages to the broker, in the order received.

The network session outlives any one reader object (`session_pool`). Beam may
build a new reader for each bundle (from the restriction's mark) or keep one
parked between bundles; either way the process's one session per client id
continues, as long as the mark says where the session stands. When it does
not (a bundle failed after messages were handed out, and Beam retries from
the mark before it), the session reconnects and the broker sends every
unacknowledged message again, flagged DUP. A mark that says the read is over
opens no session: its finalization acknowledges and closes the last one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from apache_beam import coders
from apache_beam.internal import pickler
from apache_beam.io.unbounded_source import CheckpointMark, UnboundedReader, UnboundedSource
from apache_beam.metrics.metric import Lineage, Metrics
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from tdmq_beam.records.received_message import ReceivedMessage
from tdmq_beam.service.backlog_watch import BACKLOG_WATCHES, BacklogSettings, SubscriptionBacklog
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.service.subscriber import MqttSubscriber, SubscriptionSettings
from tdmq_beam.transforms.graceful_stop import stop_requested
from tdmq_beam.transforms.session_pool import SESSIONS

__all__ = ["IDLE_WAIT", "METRICS_NAMESPACE", "MqttSource", "ReadSpec"]

_LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = "tdmq_beam.ReadFromTdmqMqtt"
IDLE_WAIT = 0.05
"""Seconds a reader with nothing ready waits for a message before ending the bundle."""


@dataclass(frozen=True)
class ReadSpec:
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
    max_packet_size: int
    max_records: int | None
    max_read_time: float | None
    timestamp_fn: Callable[[ReceivedMessage], Any] | None
    event_time_delay: float
    end_sessions: bool = False
    backlog: BacklogSettings | None = None

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
            max_packet_size=self.max_packet_size,
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
        client_id: the session's client id.
        session: the name of the session object in its process ("" before any).
        generation: its network connection when the mark was cut ("" if none).
        sequence: the last message handed out (0 before any).
        records_read, started_at: for bounded reads, across bundles.
        final: the read is over: acknowledge, then disconnect.
    """

    def __init__(
        self,
        client_id: str,
        session: str,
        generation: str,
        sequence: int,
        records_read: int,
        started_at: float,
        final: bool,
    ) -> None:
        self.client_id = client_id
        self.session = session
        self.generation = generation
        self.sequence = sequence
        self.records_read = records_read
        self.started_at = started_at
        self.final = final

    def finalize_checkpoint(self) -> None:
        if self.final:
            SESSIONS.finish(self.client_id, self.session, self.generation, self.sequence)
        elif (session := SESSIONS.session(self.client_id, self.session)) is not None:
            session.acknowledge_through(self.generation, self.sequence)

    def as_json(self) -> bytes:
        return json.dumps(
            [
                self.client_id,
                self.session,
                self.generation,
                self.sequence,
                self.records_read,
                self.started_at,
                self.final,
            ]
        ).encode()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _AckMark) and self.as_json() == other.as_json()

    def __hash__(self) -> int:
        return hash(self.as_json())

    def __repr__(self) -> str:
        return f"_AckMark({self.client_id!r}, {self.generation!r}, {self.sequence}{', final' if self.final else ''})"


class _AckMarkCoder(coders.Coder):
    """Deterministic, so Beam can key its reader cache by the mark."""

    def encode(self, value: _AckMark) -> bytes:
        return value.as_json()

    def decode(self, encoded: bytes) -> _AckMark:
        return _AckMark(*json.loads(encoded))

    def is_deterministic(self) -> bool:
        return True


class _MqttReader(UnboundedReader):
    """Hands out one session's messages for Beam, and says where it stands.

    With no session (``session`` None: made from a final mark), the read is
    over and the reader only says so.
    """

    def __init__(self, source: MqttSource, mark: _AckMark | None) -> None:
        assert source.index is not None  # readers are made for one split
        self._spec = source.spec
        self._client_id = source.client_id
        self._limit = source.spec.records_for(source.index)
        self._records_read = mark.records_read if mark else 0
        self._started_at = mark.started_at if mark else time.time()
        self._session: MqttSubscriber | None = None
        self._final_mark = mark if mark is not None and mark.final else None
        self._current: ReceivedMessage | None = None
        self._done = self._final_mark is not None
        self._watermark = Timestamp(0)
        self._received = Metrics.counter(METRICS_NAMESPACE, "received")
        self._redelivered = Metrics.counter(METRICS_NAMESPACE, "redelivered")
        self._acknowledged = Metrics.counter(METRICS_NAMESPACE, "acknowledged")
        self._stale = Metrics.counter(METRICS_NAMESPACE, "stale_acknowledgements")
        self._reconnects = Metrics.counter(METRICS_NAMESPACE, "reconnects")
        self._reconnect_attempts = Metrics.counter(METRICS_NAMESPACE, "reconnect_attempts")
        self._sessions_lost = Metrics.counter(METRICS_NAMESPACE, "sessions_lost")
        self._unexpected_topics = Metrics.counter(METRICS_NAMESPACE, "unexpected_topics")
        self._protocol_violations = Metrics.counter(METRICS_NAMESPACE, "protocol_violations")
        self._ack_delay = Metrics.distribution(METRICS_NAMESPACE, "ack_delay_ms")
        self._backlog: SubscriptionBacklog | None = None
        self._backlog_messages = Metrics.gauge(METRICS_NAMESPACE, "backlog_messages")
        self._split_backlog_bytes = Metrics.gauge(METRICS_NAMESPACE, "split_backlog_bytes")
        self._observed_at = (0, 0)  # (records read, session bytes handed out) when last told the backlog

    def attach(self, session: MqttSubscriber, backlog: SubscriptionBacklog | None) -> None:
        self._session = session
        self._backlog = backlog
        self._observed_at = (self._records_read, session.handed_out_bytes)

    def start(self) -> bool:
        self._report_session()
        return self.advance()

    def advance(self) -> bool:
        session = self._session
        if self._finished() or session is None:
            return False
        delivery = session.next_delivery()
        if delivery is None and session.wait(IDLE_WAIT):
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
            self._done = (
                (self._limit is not None and self._records_read >= self._limit)
                or (spec.max_read_time is not None and time.time() - self._started_at >= spec.max_read_time)
                or stop_requested()  # a job stopped by a signal: end the read after what was read
            )
        return self._done

    def _report_session(self) -> None:
        """Beam metrics for what the session did since the last call: at a reader's start and at
        each bundle's end (acknowledgements happen at finalization, where no metrics context is
        open, so they are reported with the next bundle)."""
        if self._session is None:
            return
        stats = self._session.take_stats()
        for counter, value in (
            (self._acknowledged, stats.acknowledged),
            (self._stale, stats.stale_acknowledgements),
            (self._reconnects, stats.reconnects),
            (self._reconnect_attempts, stats.reconnect_attempts),
            (self._sessions_lost, stats.sessions_lost),
            (self._unexpected_topics, stats.unexpected_topics),
            (self._protocol_violations, stats.protocol_violations),
        ):
            if value:
                counter.inc(value)
        for delay in stats.ack_delays_ms:
            self._ack_delay.update(delay)
        if (backlog := self._backlog) is not None:
            backlog.want()
            records, size = self._observed_at  # what this reader handed out since: the mean size's input
            self._observed_at = (self._records_read, self._session.handed_out_bytes)
            backlog.observe(self._records_read - records, self._session.handed_out_bytes - size)
            if backlog.messages is not None:
                self._backlog_messages.set(backlog.messages)
                self._split_backlog_bytes.set(backlog.split_bytes(self._spec.num_readers) or 0)

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
        if self._finished() or self._session is None:
            return MAX_TIMESTAMP
        # Future messages are the ones queued (oldest first) or yet to come (now):
        # the watermark advances with the clock while topics are quiet.
        oldest = self._session.oldest_ready_time()
        horizon = (oldest if oldest is not None else time.time()) - self._spec.event_time_delay
        self._watermark = max(self._watermark, Timestamp.of(horizon))
        return self._watermark

    def get_checkpoint_mark(self) -> _AckMark:
        if self._final_mark is not None:
            return self._final_mark
        self._report_session()
        session = self._session
        assert session is not None
        return _AckMark(
            self._client_id,
            session.name,
            session.generation,
            session.handed_out,
            self._records_read,
            self._started_at,
            self._finished(),
        )

    def close(self) -> None:
        if self._done:
            return  # the final mark's finalization acknowledges and disconnects
        # Beam gives up on this reader (a failure, or the pipeline ends): disconnect, so
        # that whatever was not acknowledged goes back to the broker at once.
        SESSIONS.release(self._client_id, self)


class MqttSource(UnboundedSource):
    """The read, or (after `split`) one reader of it."""

    def __init__(self, spec: ReadSpec, index: int | None = None) -> None:
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
        return [MqttSource(self.spec, index) for index in range(self.spec.num_readers)]

    def create_reader(self, options: Any, checkpoint_mark: CheckpointMark | None) -> _MqttReader:
        if self.index is None:  # a runner that does not split: one reader
            return MqttSource(self.spec, 0).create_reader(options, checkpoint_mark)
        mark = checkpoint_mark if isinstance(checkpoint_mark, _AckMark) else None
        reader = _MqttReader(self, mark)
        if mark is not None and mark.final:
            return reader  # the read is over: no session (a new one would take over the closing one)
        index = self.index
        session, opened = SESSIONS.acquire(
            self.client_id,
            reader,
            lambda: MqttSubscriber(self.spec.connection, self.spec.settings(index)),
            (mark.generation, mark.sequence) if mark is not None else None,
            end_when_finished=self.spec.end_sessions,
        )
        if opened:
            _report_lineage(self.spec)
        backlog = BACKLOG_WATCHES.watch(self.spec.backlog) if self.spec.backlog is not None else None
        reader.attach(session, backlog)
        return reader

    def split_backlog_bytes(self) -> int | None:
        """This reader's share of the subscription's backlog in bytes (`BacklogSizedSource`), as
        last polled in this process; None without cloud credentials or before the first poll."""
        if self.spec.backlog is None or (backlog := BACKLOG_WATCHES.get(self.spec.backlog)) is None:
            return None
        return backlog.split_bytes(self.spec.num_readers)

    def get_checkpoint_mark_coder(self) -> coders.Coder:
        return _AckMarkCoder()

    def default_output_coder(self) -> coders.Coder:
        return coders.registry.get_coder(ReceivedMessage)


def _load_source(spec: bytes, index: int | None) -> MqttSource:
    return MqttSource(pickler.loads(spec), index)


def _report_lineage(spec: ReadSpec) -> None:
    host, port, _ = spec.connection.mqtt_address()
    for topic_filter in spec.filters:
        Lineage.sources().add("tdmq_mqtt", f"{host}:{port}", topic_filter, subtype="topic")
