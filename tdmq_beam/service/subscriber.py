"""`MqttSubscriber`: one persistent MQTT session that acknowledges a message only when told to.

The network half of the read side. It connects with a stable client id, clean
start off and a session expiry, so the broker keeps every message the reader
has not acknowledged; it subscribes; and it queues what arrives. Nothing is
acknowledged on arrival: the reader hands messages out in order and later
calls `acknowledge_through` once the runner has committed them, and only then
are PUBACK (QoS 1) or PUBREC (QoS 2) sent, in the order the messages came.
The bookkeeping (what each connection delivered, what is owed, QoS 2
completion, topic aliases) is the sans-I/O `tdmq_beam.mqtt.ack_ledger.AckLedger`;
this module is the I/O around it.

One task owns the connection: it connects, waits for the connection to end,
backs off (bounded, with jitter) and connects again, until the subscriber
closes or the broker refuses for good. Nothing else opens a connection;
`restart` only ends the current one and asks for the next at once. Each
connection is one *generation* of the ledger, with its own CONNACK and SUBACK
waiters, so two handshakes can never overwrite each other's answers.

The handshake waits for CONNACK within ``connect_timeout``, which is the
first packet a broker sends. Not so the SUBACK: a broker may send a resumed
session's queued messages first (mosquitto does), so the SUBACK deadline
counts silence, not time, and messages that come before it are taken.

Why not paho-mqtt: its manual acknowledgement sends PUBREC for a QoS 2
message on arrival (only PUBCOMP waits), after which the broker never sends
the message again, so a reader that dies before committing it loses it; and
an ``ack()`` after a reconnect would name a packet id of the old connection.
The codec the emulator already uses (`tdmq_beam.mqtt.codec`) has both halves
of the protocol, so the client is small.

The connection runs on its own event loop thread; `next_delivery`,
`acknowledge_through`, `start`, `restart` and `close` may be called from any
thread. Subscribers still open when the process exits are closed then
(bounded), so acknowledgements already asked for are sent, not lost with the
daemon thread.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import random
import ssl
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from tdmq_beam.errors import (
    AuthenticationError,
    ConfigurationError,
    PermissionDeniedError,
    ProtocolViolationError,
    TdmqError,
    TransportError,
)
from tdmq_beam.mqtt import codec
from tdmq_beam.mqtt.ack_ledger import AckLedger, Delivery
from tdmq_beam.mqtt.codec import MalformedPacket, PacketTooLarge, PacketType, Prop, ReasonCode
from tdmq_beam.mqtt.topics import split_shared, topic_matches
from tdmq_beam.service.connection import TdmqConnection, tls_failure

__all__ = ["DEFAULT_MAX_PACKET_SIZE", "Delivery", "MqttSubscriber", "SubscriberStats", "SubscriptionSettings"]

_LOGGER = logging.getLogger(__name__)

_PAUSE_AT = 50_000
"""Queued messages at which the socket stops being read (QoS 0 has no other flow control)."""
_RESUME_AT = 10_000
_PAUSE_AT_BYTES = 64 * 1024 * 1024
"""Queued payload bytes at which the socket stops being read: memory is bounded in bytes too."""
_RESUME_AT_BYTES = 16 * 1024 * 1024

DEFAULT_MAX_PACKET_SIZE = 16 * 1024 * 1024
"""The largest packet a reader takes (sent as Maximum Packet Size in an MQTT 5 CONNECT)."""

_NEVER_ZERO = ((Prop.RECEIVE_MAXIMUM, "Receive Maximum"), (Prop.MAXIMUM_PACKET_SIZE, "Maximum Packet Size"))
"""CONNACK properties whose value 0 is a protocol error (MQTT 5 sections 3.2.2.3.3 and 3.2.2.3.6)."""

_MAX_VIOLATIONS = 3
"""Connections in a row on which the broker broke the protocol before the reader gives up:
a broker that sends a malformed packet sends it again on every connection (a poison message)."""

_RECONNECT_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
"""Back-off before reconnect attempt n (the last repeats), each with up to 50% jitter added."""
_STABLE_AFTER = 10.0
"""Seconds a connection must last before the back-off starts again from the shortest delay."""

_CLOSE_TIMEOUT = 10.0
"""Seconds a close may take to send its acknowledgements, complete QoS 2 and disconnect. Not the
handshake timeout: a broker with a long in-flight list reads a burst of PUBACKs slowly, and a
close that gives up resets the connection, which discards what the broker has not read yet."""

_TOPIC_ALIAS_MAXIMUM = 1024
"""Topic aliases the broker may assign on one connection (MQTT 5): a bounded map per connection."""

# CONNACK refusals that trying again will not cure, by MQTT 5 reason code and MQTT 3.1.1 return code.
_REFUSALS: dict[int, type[TdmqError]] = {
    ReasonCode.BAD_USER_NAME_OR_PASSWORD: AuthenticationError,
    ReasonCode.NOT_AUTHORIZED: PermissionDeniedError,
    ReasonCode.CLIENT_IDENTIFIER_NOT_VALID: ConfigurationError,
}
_V3_REFUSALS: dict[int, type[TdmqError]] = {
    ReasonCode.V3_BAD_USER_NAME_OR_PASSWORD: AuthenticationError,
    ReasonCode.V3_NOT_AUTHORIZED: PermissionDeniedError,
    ReasonCode.V3_IDENTIFIER_REJECTED: ConfigurationError,
}


@dataclass(frozen=True)
class SubscriptionSettings:
    """What one reader's session subscribes to, and how.

    Attributes:
        client_id: the stable client id; the broker keeps the session under it.
        filters: topic filters, already with ``$share/{group}/`` when shared.
        qos: the subscription's maximum QoS.
        protocol_level: 5 (MQTT 5) or 4 (MQTT 3.1.1).
        session_expiry_interval: seconds the broker keeps the session after a
            disconnect (MQTT 5; MQTT 3.1.1 sessions without clean session never expire).
        keepalive: seconds between keep-alive pings when nothing else is sent.
        receive_maximum: MQTT 5 messages the broker may have unacknowledged at
            once (the service's window is 16 under MQTT 3.1.1).
        connect_timeout: seconds to connect and get the CONNACK; also the
            silence after which a SUBACK is given up on.
        max_packet_size: the largest packet taken, in bytes; sent as Maximum Packet
            Size (MQTT 5), so a broker discards larger messages for this session rather
            than send them. A larger packet breaks the connection as a protocol violation.
    """

    client_id: str
    filters: tuple[str, ...]
    qos: int = 1
    protocol_level: int = 5
    session_expiry_interval: int = 3600
    keepalive: int = 60
    receive_maximum: int = 65535
    connect_timeout: float = 10.0
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE


@dataclass
class SubscriberStats:
    """Counts since the last `MqttSubscriber.take_stats` (for the reader's metrics)."""

    acknowledged: int = 0
    stale_acknowledgements: int = 0  # marks whose connection ended before their commit
    ack_delays_ms: list[int] = field(default_factory=list)
    reconnects: int = 0
    reconnect_attempts: int = 0  # failed attempts included
    sessions_lost: int = 0  # reconnects where the broker no longer had the session
    unexpected_topics: int = 0  # messages on topics no filter of the session matches: acknowledged, not handed out
    protocol_violations: int = 0  # connections the broker broke the protocol on


_CLOSED_BY_BROKER = "closed by the broker"


class _Connection(asyncio.Protocol):
    """One network connection (one generation) of a subscriber, with its own handshake answers."""

    def __init__(self, subscriber: MqttSubscriber, generation: str) -> None:
        self.subscriber = subscriber
        self.generation = generation
        self.framer = codec.PacketFramer(subscriber.settings.max_packet_size)
        self.violation: str | None = None  # how the broker broke the protocol, when it did
        self.transport: asyncio.Transport | None = None
        loop = subscriber._loop
        self.connack: asyncio.Future[codec.ConnAck] = loop.create_future()
        self.suback: asyncio.Future[codec.SubAck] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.lost_because: str = _CLOSED_BY_BROKER
        self.opened_at = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        packet = "a packet header"
        try:
            for first, body, size in self.framer.feed(data):
                packet = f"a {PacketType.NAMES[first >> 4]} of {size} bytes"
                self.subscriber._on_packet(self, first, body)
        except PacketTooLarge as exc:
            self.broke_protocol(f"{exc} (max_packet_size)")
        except MalformedPacket as exc:
            self.broke_protocol(f"{packet}: {exc}")

    def broke_protocol(self, violation: str) -> None:
        self.violation = violation
        with self.subscriber._stats_lock:
            self.subscriber._stats.protocol_violations += 1
        self.abort(f"protocol violation by the broker: {violation}")

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.subscriber._last_sent = time.monotonic()

    def abort(self, because: str) -> None:
        self.lost_because = because
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.lost_because = _describe(exc)
        for future in (self.connack, self.suback):
            if not future.done():
                future.set_exception(ConnectionError(self.lost_because))
                future.exception()  # retrieved: nobody may be waiting any more
        if not self.closed.done():
            self.closed.set_result(None)


class MqttSubscriber:
    """A persistent MQTT session whose acknowledgements wait for `acknowledge_through`.

    Args:
        connection: the instance (``mqtt_endpoint``, credentials, certificates).
        settings: the session and its subscriptions.
        clock: wall-clock seconds, for receive times (a test seam).
    """

    def __init__(
        self, connection: TdmqConnection, settings: SubscriptionSettings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.connection = connection
        self.settings = settings
        self.name = uuid.uuid4().hex[:12]  # this session object, as checkpoint marks name it
        self._clock = clock
        self._host, self._port, tls = connection.mqtt_address()
        self._ssl: ssl.SSLContext | None = connection.mqtt_ssl_context() if tls else None
        self._ledger = AckLedger(settings.protocol_level, topic_alias_maximum=_TOPIC_ALIAS_MAXIMUM)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"tdmq-mqtt-{settings.client_id}", daemon=True
        )
        self._thread.start()
        self._live: _Connection | None = None  # the established connection, if any
        self._owner_task: asyncio.Task | None = None
        self._last_connection: _Connection | None = None  # of the last attempt, for its violation
        self._first_connection: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()  # cuts a back-off short (restart, close)
        self._arrived = threading.Event()
        self._paused = False
        self._closing = False
        self._closed = False
        self._failure: TdmqError | None = None
        self._had_session = False  # a connection of ours was accepted before: the broker has our session
        self._stats = SubscriberStats()
        self._stats_lock = threading.Lock()
        self._filters = tuple(_plain_filter(topic_filter) for topic_filter in settings.filters)
        self._topic_ok: dict[str, bool] = {}  # topics seen, whether a filter matches (bounded)
        self._acknowledged_in_all = 0  # logged at close: the last acknowledgements reach no metrics
        self._last_sent = 0.0
        self._last_received = 0.0
        self._keepalive = settings.keepalive
        _OPEN.add(self)

    def __repr__(self) -> str:
        return f"MqttSubscriber({self.settings.client_id!r} at {self._host}:{self._port})"

    # -- any thread ----------------------------------------------------------------------

    @property
    def generation(self) -> str:
        """The live connection's name; "" while not connected."""
        return self._ledger.generation

    @property
    def handed_out(self) -> int:
        """Sequence of the last message handed out (0 before any)."""
        return self._ledger.handed_out

    def start(self) -> None:
        """Connects and subscribes, waiting for the broker's answers; from then on reconnects by itself.

        Raises:
            AuthenticationError, PermissionDeniedError, ConfigurationError: the
                broker refused the connection or a subscription (the message
                says why; never with a credential).
            TransportError: nothing answered in time, or the connection failed.
        """
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        try:
            future.result()  # bounded by the handshake's own deadlines
        except TdmqError:
            raise
        except Exception as exc:  # OSError and the like
            raise TransportError(
                f"MQTT reader {self.settings.client_id}: could not connect to "
                f"{self._host}:{self._port} ({_describe(exc)})"
            ) from None

    def next_delivery(self) -> Delivery | None:
        """The next message received and not handed out yet, or None.

        Raises:
            TdmqError: the session cannot go on (refused on reconnecting, or taken over).
        """
        if self._failure is not None:
            raise self._failure
        delivery = self._ledger.hand_out()
        if delivery is None:
            self._arrived.clear()
            delivery = self._ledger.hand_out()  # raced with an arrival
        if self._paused and self._ledger.ready < _RESUME_AT and self._ledger.ready_bytes < _RESUME_AT_BYTES:
            self._loop.call_soon_threadsafe(self._resume_reading)
        return delivery

    @property
    def handed_out_bytes(self) -> int:
        """Payload bytes of every message handed out, in all."""
        return self._ledger.bytes_handed_out

    def wait(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for a message to be ready; whether one is."""
        return bool(self._ledger.ready) or self._arrived.wait(timeout)

    def oldest_ready_time(self) -> float | None:
        """Receive time (Unix seconds) of the oldest message not yet handed out, or None."""
        return self._ledger.oldest_ready_time()

    def resumes(self, generation: str, sequence: int) -> bool:
        """Whether a reader may go on from the mark (generation, sequence) on the live session
        (see `AckLedger.resumes`); if not, `restart` first."""
        return self._ledger.resumes(generation, sequence)

    def acknowledge_through(self, generation: str, sequence: int) -> None:
        """Acknowledges, in the order received, every message up to ``sequence`` of ``generation``.

        Messages of an ended connection are not acknowledged (the broker sends
        them again). Returns at once; `close` sends what was asked for before it.
        """
        if not self._closed:
            self._loop.call_soon_threadsafe(self._acknowledge_through, generation, sequence)

    def restart(self) -> None:
        """Ends the connection and connects again at once: the broker sends every unacknowledged
        message anew. For a reader that must start again from what was last committed (a bundle
        failed after messages were handed out). Returns once the old connection is gone."""
        asyncio.run_coroutine_threadsafe(self._restart(), self._loop).result(self.settings.connect_timeout)

    def take_stats(self) -> SubscriberStats:
        """The counts since the last call."""
        with self._stats_lock:
            stats, self._stats = self._stats, SubscriberStats()
        return stats

    def close(self, timeout: float | None = None, *, end_session: bool = False) -> None:
        """Sends what was acknowledged, completes QoS 2 handshakes, disconnects normally (the
        session stays on the broker until it expires) and stops the thread.

        Args:
            timeout: seconds it may take at most. Defaults to 10.
            end_session: the DISCONNECT sets the session expiry to 0 (MQTT 5), so the broker
                ends the session at once, with what it still holds for it. Defaults to False.
        """
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        limit = _CLOSE_TIMEOUT if timeout is None else timeout
        try:
            asyncio.run_coroutine_threadsafe(self._close(limit, end_session), self._loop).result(limit + 1)
        except Exception as exc:  # a broker that does not answer: the session stays as it is
            _LOGGER.warning("MQTT reader %s: did not close cleanly (%s)", self.settings.client_id, _describe(exc))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
        _LOGGER.info(
            "MQTT reader %s closed: %d messages acknowledged in all", self.settings.client_id, self._acknowledged_in_all
        )

    # -- the event loop thread: the one owner of the connection ------------------------------

    async def _start(self) -> None:
        if self._owner_task is None:
            self._first_connection = self._loop.create_future()
            self._owner_task = self._loop.create_task(self._own_connection())
        assert self._first_connection is not None
        await asyncio.shield(self._first_connection)

    async def _own_connection(self) -> None:
        """Connects, waits for the connection to end, backs off and connects again, until closed,
        refused, or the broker has broken the protocol on `_MAX_VIOLATIONS` connections in a row."""
        first = self._first_connection
        assert first is not None
        attempt = 0
        violations = 0
        while not self._closing:
            with self._stats_lock:
                self._stats.reconnect_attempts += first.done()
            self._last_connection = None
            try:
                connection = await self._connect()
            except TdmqError as error:
                failure = error
                violation = self._last_connection.violation if self._last_connection is not None else None
                violations = violations + 1 if violation else 0
                if violation and (not first.done() or violations >= _MAX_VIOLATIONS):
                    failure = self._violation_error(violation, violations)
                if not first.done():
                    first.set_exception(failure)
                    return
                if not failure.retryable:
                    self._fail(failure)  # refused, or broken: trying again will not help
                    return
                attempt += 1
                _LOGGER.warning("%s (attempt %d; trying again)", failure, attempt)
                await self._back_off(attempt)
                continue
            if first.done():
                with self._stats_lock:
                    self._stats.reconnects += 1
            else:
                first.set_result(None)
            await connection.closed
            self._connection_gone()
            if self._closing or self._failure is not None:
                return
            if violation := connection.violation:
                violations += 1
                if violations >= _MAX_VIOLATIONS:
                    self._fail(self._violation_error(violation, violations))
                    return
            else:
                violations = 0
                if time.monotonic() - connection.opened_at >= _STABLE_AFTER:
                    attempt = 0  # a broker that breaks the protocol never resets the back-off
            if self._wake.is_set():  # restart: at once
                self._wake.clear()
                continue
            attempt += 1
            hint = ""
            if connection.lost_because == _CLOSED_BY_BROKER:
                # MQTT 5 says DISCONNECT 0x8E on a takeover; mosquitto 2.0 closes without a word.
                hint = f" (if this repeats, check that no other client uses client id {self.settings.client_id!r})"
            _LOGGER.warning(
                "MQTT reader %s: connection lost (%s); reconnecting%s",
                self.settings.client_id,
                connection.lost_because,
                hint,
            )
            await self._back_off(attempt)

    def _connection_gone(self) -> None:
        """The live connection ended: what it delivered and was not acknowledged is the broker's again."""
        self._live = None
        self._ledger.connection_closed()
        self._paused = False

    def _violation_error(self, violation: str, times: int) -> ProtocolViolationError:
        where = "on its first connection" if times == 1 else f"on {times} connections in a row"
        hint = ""
        if "(max_packet_size)" in violation:
            hint = "; to read messages that large, raise max_packet_size"
        return ProtocolViolationError(
            f"MQTT reader {self.settings.client_id}: the broker at {self._host}:{self._port} broke the MQTT "
            f"protocol {where}: {violation}; reconnecting does not cure that{hint}"
        )

    async def _back_off(self, attempt: int) -> None:
        delay = _RECONNECT_DELAYS[min(attempt, len(_RECONNECT_DELAYS)) - 1]
        try:
            await asyncio.wait_for(self._wake.wait(), delay * (1 + random.random() / 2))
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    async def _connect(self) -> _Connection:
        settings = self.settings
        connection = _Connection(self, uuid.uuid4().hex[:12])
        try:
            await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                ),
                settings.connect_timeout,
            )
        except ssl.SSLError as exc:
            raise tls_failure(self._host, self._port, exc, who=f"MQTT reader {settings.client_id}: ") from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise TransportError(
                f"MQTT reader {settings.client_id}: cannot connect to {self._host}:{self._port} ({_describe(exc)})"
            ) from None
        self._ledger.connection_opened(connection.generation)
        self._live = connection
        try:
            await self._handshake(connection)
            if connection.closed.done():  # ended in the read that brought the last answer
                raise TransportError(
                    f"MQTT reader {settings.client_id}: the connection to {self._host}:{self._port} ended "
                    f"right after the handshake ({connection.lost_because})"
                )
        except BaseException:
            connection.abort("handshake failed")
            if self._live is connection:
                self._connection_gone()
            raise
        finally:
            self._last_connection = connection
        return connection

    async def _handshake(self, connection: _Connection) -> None:
        """CONNECT and SUBSCRIBE on a new connection, checking the broker's answers."""
        settings = self.settings
        level = settings.protocol_level
        properties: codec.Properties = {}
        if level == 5:
            properties = {
                Prop.SESSION_EXPIRY_INTERVAL: settings.session_expiry_interval,
                Prop.RECEIVE_MAXIMUM: settings.receive_maximum,
                Prop.TOPIC_ALIAS_MAXIMUM: _TOPIC_ALIAS_MAXIMUM,
                Prop.MAXIMUM_PACKET_SIZE: settings.max_packet_size,
            }
        password = self.connection.password.resolve() if self.connection.password is not None else None
        connection.write(
            codec.encode_connect(
                settings.client_id,
                clean=False,
                keepalive=settings.keepalive,
                username=self.connection.username,
                password=password,
                level=level,
                properties=properties,
            )
        )
        del password
        connack = await self._answer(connection, connection.connack, "CONNACK", counting_silence=False)
        if connack.reason_code:
            raise self._refusal(connack)
        for prop, name in _NEVER_ZERO:
            if connack.properties.get(prop) == 0:
                connection.broke_protocol(f"a CONNACK with {name} 0")
                raise TransportError(f"MQTT reader {settings.client_id}: the broker sent a CONNACK with {name} 0")
        self._note_connack(connection, connack)
        if level == 5 or not connack.session_present:
            # Retain handling 1: retained messages only for a new subscription, not on every
            # resume. MQTT 3.1.1 has no such option: a resumed session keeps its subscriptions.
            options = settings.qos | (0x10 if level == 5 else 0)
            subscribe = codec.encode_subscribe(1, [(f, options) for f in settings.filters], level)
            limit = connack.properties.get(Prop.MAXIMUM_PACKET_SIZE)
            if limit is not None and len(subscribe) > limit:
                raise ConfigurationError(
                    f"MQTT reader {settings.client_id}: the SUBSCRIBE for {len(settings.filters)} topic filter(s) "
                    f"is {len(subscribe)} bytes, over the broker's Maximum Packet Size of {limit}"
                )
            connection.write(subscribe)
            granted = await self._answer(connection, connection.suback, "SUBACK", counting_silence=True)
            if granted is not None:
                self._check_granted(granted)
        _LOGGER.info("MQTT reader %s connected (session present: %s)", settings.client_id, connack.session_present)

    async def _answer(self, connection: _Connection, answer: asyncio.Future, name: str, *, counting_silence: bool):
        """Waits for a handshake answer: within ``connect_timeout``, or, ``counting_silence``,
        until the broker has been silent that long (packets before the answer are taken). Returns
        None when reading pauses first (the queue is full: the answer is checked when it comes)."""
        timeout = self.settings.connect_timeout
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining > 0:
                try:
                    return await asyncio.wait_for(asyncio.shield(answer), min(remaining, 0.5))
                except asyncio.TimeoutError:
                    pass
                except ConnectionError as exc:
                    # Under TLS 1.3 a server that refuses the client certificate (or wanted one) says
                    # so after the client's handshake is done: the first read then fails.
                    hint = (
                        "; over TLS this is how a broker refuses a missing or untrusted client certificate"
                        if name == "CONNACK" and self._ssl is not None
                        else ""
                    )
                    raise TransportError(
                        f"MQTT reader {self.settings.client_id}: connection to {self._host}:{self._port} "
                        f"ended before the {name} ({exc}{hint})"
                    ) from None
            if counting_silence and self._paused:
                answer.add_done_callback(self._late_answer)
                return None
            if counting_silence:
                deadline = max(deadline, self._last_received + timeout)
            if time.monotonic() >= deadline:
                quiet = " of silence" if counting_silence else ""
                raise TransportError(
                    f"MQTT reader {self.settings.client_id}: no {name} from "
                    f"{self._host}:{self._port} within {timeout:g} s{quiet}"
                ) from None

    def _late_answer(self, answer: asyncio.Future) -> None:
        if not answer.cancelled() and answer.exception() is None:
            try:
                self._check_granted(answer.result())
            except TdmqError as exc:
                self._fail(exc)

    def _check_granted(self, granted: codec.SubAck) -> None:
        settings = self.settings
        refused = [(f, code) for f, code in zip(settings.filters, granted.reason_codes, strict=False) if code >= 0x80]
        if refused:
            reason = granted.properties.get(Prop.REASON_STRING)
            raise PermissionDeniedError(
                f"MQTT reader {settings.client_id}: the broker refused subscription(s) "
                + ", ".join(f"{f!r} (reason code 0x{code:02X})" for f, code in refused)
                + (f": {reason}" if reason else "")
            )

    def _note_connack(self, connection: _Connection, connack: codec.ConnAck) -> None:
        """What a broker's CONNACK says that the session must live with."""
        settings = self.settings
        if self._had_session and not connack.session_present:
            # Clean start is off: the broker lost the session (a restart without persistence,
            # or it expired), and with it whatever it held for us.
            with self._stats_lock:
                self._stats.sessions_lost += 1
            _LOGGER.warning(
                "MQTT reader %s: the broker no longer had this session (Session Present 0 on reconnecting): "
                "messages it held for the reader may have been lost at the broker",
                settings.client_id,
            )
        self._had_session = True
        assigned = connack.properties.get(Prop.ASSIGNED_CLIENT_IDENTIFIER)
        if assigned is not None and assigned != settings.client_id:
            _LOGGER.warning("MQTT reader %s: the broker assigned client id %r instead", settings.client_id, assigned)
        # Server Keep Alive 0 turns the broker's keep-alive off, not ours: the reader still pings
        # at its own interval and gives up on a silent broker (MQTT 5 section 3.12.4 allows a
        # PINGREQ at any time).
        self._keepalive = connack.properties.get(Prop.SERVER_KEEP_ALIVE) or settings.keepalive
        self._loop.create_task(self._keep_alive(connection))

    def _refusal(self, packet: codec.ConnAck) -> TdmqError:
        table = _REFUSALS if self.settings.protocol_level == 5 else _V3_REFUSALS
        error = table.get(packet.reason_code, TransportError)
        reason = packet.properties.get(Prop.REASON_STRING)
        return error(
            f"MQTT reader {self.settings.client_id}: the broker refused the connection "
            f"(reason code 0x{packet.reason_code:02X}{': ' + reason if reason else ''})"
        )

    def _fail(self, failure: TdmqError) -> None:
        self._failure = failure
        self._arrived.set()
        if self._live is not None:
            self._live.abort(str(failure))

    def _on_packet(self, connection: _Connection, first: int, body: bytes) -> None:
        if connection is not self._live:
            return  # a connection given up on
        self._last_received = time.monotonic()
        kind = first >> 4
        level = self.settings.protocol_level
        if kind == PacketType.PUBLISH:
            packet = codec.decode_publish(first, body, level)
            if self._ledger.receive(packet, self._last_received, self._clock(), expected=self._expected) is None:
                return
            self._arrived.set()
            if (
                (self._ledger.ready >= _PAUSE_AT or self._ledger.ready_bytes >= _PAUSE_AT_BYTES)
                and not self._paused
                and connection.transport is not None
            ):
                self._paused = True
                connection.transport.pause_reading()
        elif kind == PacketType.PUBREL:
            # The broker received our PUBREC, which was sent only after the commit.
            connection.write(self._ledger.release(codec.decode_packet_id(body, level).packet_id))
        elif kind == PacketType.CONNACK:
            _settle(connection.connack, codec.decode_connack(body, level))
        elif kind == PacketType.SUBACK:
            _settle(connection.suback, codec.decode_suback(body, level))
        elif kind == PacketType.DISCONNECT:
            self._on_disconnect(connection, codec.decode_disconnect(body, level))
        # PINGRESP, and anything else a broker may send a subscriber, needs no answer.

    def _expected(self, topic: str) -> bool:
        """Whether a filter of the session matches ``topic``. A persistent session may keep
        subscriptions of an earlier run with other topics; their messages are acknowledged with
        the next ones handed out, never handed out."""
        known = self._topic_ok.get(topic)
        if known is None:
            if len(self._topic_ok) >= 10_000:
                self._topic_ok.clear()
            known = self._topic_ok[topic] = any(topic_matches(f, topic) for f in self._filters)
            if not known:
                _LOGGER.warning(
                    "MQTT reader %s: the broker sent a message on %r, which none of the read's topic filters "
                    "matches (a subscription an earlier run with this client id left in the session?): "
                    "acknowledged, not read",
                    self.settings.client_id,
                    topic,
                )
        if not known:
            with self._stats_lock:
                self._stats.unexpected_topics += 1
        return known

    def _on_disconnect(self, connection: _Connection, disconnect: codec.Disconnect) -> None:
        reason = disconnect.properties.get(Prop.REASON_STRING)
        text = f"reason code 0x{disconnect.reason_code:02X}{': ' + reason if reason else ''}"
        connection.lost_because = f"the broker disconnected ({text})"
        if disconnect.reason_code == ReasonCode.SESSION_TAKEN_OVER:
            # Reconnecting would take the session back, and the other connection would too.
            self._fail(
                ConfigurationError(
                    f"MQTT reader {self.settings.client_id}: another connection with client id "
                    f"{self.settings.client_id!r} took the session over ({text}); two readers (or "
                    "pipelines) share a client id: give each its own client_id_prefix"
                )
            )

    def _acknowledge_through(self, generation: str, sequence: int) -> None:
        acks = self._ledger.acknowledge(generation, sequence, time.monotonic())
        if acks.data and self._live is not None:
            self._live.write(acks.data)
        with self._stats_lock:
            self._stats.acknowledged += acks.count
            self._acknowledged_in_all += acks.count
            self._stats.stale_acknowledgements += acks.stale
            self._stats.ack_delays_ms.extend(acks.delays_ms)

    def _resume_reading(self) -> None:
        if self._paused and self._live is not None and self._live.transport is not None:
            self._paused = False
            self._live.transport.resume_reading()

    async def _keep_alive(self, connection: _Connection) -> None:
        """Pings while the connection is quiet, and gives it up when the broker falls silent."""
        if not self._keepalive:
            return
        interval = self._keepalive / 2
        while not connection.closed.done():
            try:
                await asyncio.wait_for(asyncio.shield(connection.closed), interval)
                return
            except asyncio.TimeoutError:
                pass
            now = time.monotonic()
            if not self._paused and now - self._last_received > self._keepalive * 1.5:
                connection.abort(f"the broker has been silent for {now - self._last_received:.0f} s")
                return
            if now - self._last_sent >= interval:
                connection.write(codec.PINGREQ)

    async def _restart(self) -> None:
        live = self._live
        if live is not None:
            self._wake.set()  # the owner connects again at once
            live.abort("restarted for redelivery")
            self._connection_gone()

    async def _close(self, timeout: float, end_session: bool) -> None:
        self._closing = True
        self._wake.set()
        live = self._live
        deadline = time.monotonic() + timeout
        if live is not None and self._failure is None:
            # QoS 2: let the broker's PUBRELs come and be answered, or it keeps the messages in flight.
            self._resume_reading()
            while self._ledger.owes_completion and not live.closed.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if self.settings.protocol_level < 5:
                live.write(codec.DISCONNECT)
            else:
                ending = {Prop.SESSION_EXPIRY_INTERVAL: 0} if end_session else None
                live.write(codec.encode_disconnect(ReasonCode.SUCCESS, ending))
            # The broker closes the connection once it has processed the DISCONNECT, and so everything
            # before it: until then our acknowledgements may still sit unread in its socket, and a
            # takeover by the next connection with this client id (mosquitto) would discard them.
            try:
                await asyncio.wait_for(asyncio.shield(live.closed), max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                if live.transport is not None:
                    live.transport.close()  # flushes what is written, then closes: no reset
                try:
                    await asyncio.wait_for(asyncio.shield(live.closed), 1.0)
                except asyncio.TimeoutError:
                    live.abort("closing")
        elif end_session:
            _LOGGER.warning(
                "MQTT reader %s: not connected at its end, so its session stays on the broker until it expires",
                self.settings.client_id,
            )
        if self._owner_task is not None and not self._owner_task.done():
            self._owner_task.cancel()


def _plain_filter(topic_filter: str) -> str:
    """The topic filter a subscription matches, without its ``$share/{group}/``."""
    shared = split_shared(topic_filter)
    return topic_filter if shared is None else shared[1]


def _settle(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no reason given"
    text = str(exc) or type(exc).__name__
    return text if not isinstance(exc, OSError) or not exc.strerror else exc.strerror


_OPEN: weakref.WeakSet[MqttSubscriber] = weakref.WeakSet()


@atexit.register
def _close_open_subscribers() -> None:
    """At exit, sends the acknowledgements asked for and disconnects (the loop threads are daemons)."""
    for subscriber in list(_OPEN):
        subscriber.close(timeout=5.0)
