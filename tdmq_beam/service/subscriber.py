"""`MqttSubscriber`: one persistent MQTT session that acknowledges a message only when told to.

The network half of the read side. It connects with a stable client id, clean
start off and a session expiry, so the broker keeps every message the reader
has not acknowledged; it subscribes; and it queues what arrives. Nothing is
acknowledged on arrival: the reader hands messages out in order and later
calls `acknowledge_through` once the runner has committed them, and only then
are PUBACK (QoS 1) or PUBREC (QoS 2) sent, in the order the messages came.

Each network connection is one *generation*, named by a random token. When a
connection ends, the messages it delivered and that were not acknowledged
belong to the broker again (it sends them anew, flagged DUP, on the next
connection), so acknowledgements naming an old generation are dropped: a
packet id of an old connection means nothing on a new one.

Why not paho-mqtt: its manual acknowledgement sends PUBREC for a QoS 2
message on arrival (only PUBCOMP waits), after which the broker never sends
the message again, so a reader that dies before committing it loses it; and
an ``ack()`` after a reconnect would name a packet id of the old connection.
The codec the emulator already uses (`tdmq_beam.mqtt.codec`) has both halves
of the protocol, so the client is small.

The connection runs on its own event loop thread; `next_delivery`,
`acknowledge_through`, `start` and `close` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from tdmq_beam.errors import AuthenticationError, ConfigurationError, PermissionDeniedError, TdmqError, TransportError
from tdmq_beam.mqtt import codec
from tdmq_beam.mqtt.codec import MalformedPacket, PacketType, Prop, ReasonCode
from tdmq_beam.service.connection import TdmqConnection

__all__ = ["Delivery", "MqttSubscriber", "SubscriberStats", "SubscriptionSettings"]

_LOGGER = logging.getLogger(__name__)

_PAUSE_AT = 50_000
"""Queued messages at which the socket stops being read (QoS 0 has no other flow control)."""
_RESUME_AT = 10_000

_RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

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
        connect_timeout: seconds to connect and be answered.
    """

    client_id: str
    filters: tuple[str, ...]
    qos: int = 1
    protocol_level: int = 5
    session_expiry_interval: int = 3600
    keepalive: int = 60
    receive_maximum: int = 65535
    connect_timeout: float = 10.0


class Delivery(NamedTuple):
    """A message handed out, with where it stands in its session."""

    generation: str
    sequence: int
    packet: codec.Publish
    receive_time: float  # Unix seconds


@dataclass
class SubscriberStats:
    """Counts since the last `MqttSubscriber.take_stats` (for the reader's metrics)."""

    acknowledged: int = 0
    stale_acknowledgements: int = 0  # messages whose connection ended before their commit
    ack_delays_ms: list[int] = field(default_factory=list)
    reconnects: int = 0


class _Protocol(asyncio.Protocol):
    """Frames packets for one connection (one generation) of a subscriber."""

    def __init__(self, subscriber: MqttSubscriber, generation: str) -> None:
        self.subscriber = subscriber
        self.generation = generation
        self.framer = codec.PacketFramer()
        self.transport: asyncio.Transport | None = None
        self.established = False  # connected and subscribed: worth reconnecting when lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            for first, body, _ in self.framer.feed(data):
                self.subscriber._on_packet(self, first, body)
        except MalformedPacket as exc:
            _LOGGER.warning("MQTT reader %s: malformed packet from the broker (%s); reconnecting", self.subscriber, exc)
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.subscriber._on_connection_lost(self, exc)


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
        self._clock = clock
        self._host, self._port, tls = connection.mqtt_address()
        self._ssl: ssl.SSLContext | None = connection.mqtt_ssl_context() if tls else None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"tdmq-mqtt-{settings.client_id}", daemon=True
        )
        self._thread.start()
        self.generation = ""  # the current connection's token; "" while not connected
        self._protocol: _Protocol | None = None
        self._ready: collections.deque[Delivery] = collections.deque()  # received, not yet handed out
        self._arrived = threading.Event()
        self._unacked: collections.deque[tuple[int, int, int, float]] = collections.deque()  # seq, packet id, qos, t
        self._awaiting_release: set[int] = set()  # QoS 2 packet ids we sent PUBREC for
        self._sequence = 0  # of the last message received
        self.handed_out = 0  # sequence of the last message handed out
        self._paused = False
        self._closing = False
        self._failure: TdmqError | None = None
        self._waiters: dict[str, asyncio.Future] = {}
        self._stats = SubscriberStats()
        self._stats_lock = threading.Lock()
        self._last_sent = 0.0
        self._last_received = 0.0
        self._keepalive = settings.keepalive
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._reconnect_attempt = 0
        self.owner: object = None  # the reader that hands out its messages (see transforms.read)

    def __repr__(self) -> str:
        return f"MqttSubscriber({self.settings.client_id!r} at {self._host}:{self._port})"

    # -- any thread ----------------------------------------------------------------------

    def start(self) -> None:
        """Connects and subscribes, waiting for the broker's answers.

        Raises:
            AuthenticationError, PermissionDeniedError, ConfigurationError: the
                broker refused the connection or a subscription (the message
                says why; never with a credential).
            TransportError: nothing answered in time, or the connection failed.
        """
        future = asyncio.run_coroutine_threadsafe(self._connect(), self._loop)
        try:
            future.result(self.settings.connect_timeout + 1)
        except TdmqError:
            raise
        except Exception as exc:  # concurrent TimeoutError, OSError
            future.cancel()
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
        ready = self._ready
        while True:
            try:
                delivery = ready.popleft()
            except IndexError:
                self._arrived.clear()
                if not ready:
                    return None
                continue  # raced with an arrival
            if delivery.generation == self.generation:
                break
            # Its connection ended: the broker sends it again on the new one.
        self.handed_out = delivery.sequence
        if self._paused and len(ready) < _RESUME_AT:
            self._loop.call_soon_threadsafe(self._resume_reading)
        return delivery

    def wait(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for a message to be ready; whether one is."""
        return bool(self._ready) or self._arrived.wait(timeout)

    def oldest_ready_time(self) -> float | None:
        """Receive time (Unix seconds) of the oldest message not yet handed out, or None."""
        try:
            return self._ready[0].receive_time
        except IndexError:
            return None

    def acknowledge_through(self, generation: str, sequence: int, *, then_close: bool = False) -> None:
        """Acknowledges, in the order received, every message up to ``sequence`` of ``generation``.

        Messages of an ended connection are not acknowledged (the broker sends
        them again). With ``then_close``, disconnects once the acknowledgements
        are written.
        """
        self._loop.call_soon_threadsafe(self._acknowledge_through, generation, sequence, then_close)

    def restart(self) -> None:
        """Drops the connection and connects again: the broker sends every unacknowledged message anew.

        For a reader that must start again from what was last committed (a
        bundle failed after messages were handed out).
        """
        asyncio.run_coroutine_threadsafe(self._drop(), self._loop).result(self.settings.connect_timeout)
        self._failure = None
        self.start()

    def take_stats(self) -> SubscriberStats:
        """The counts since the last call."""
        with self._stats_lock:
            stats, self._stats = self._stats, SubscriberStats()
        return stats

    def close(self) -> None:
        """Disconnects normally (the session stays on the broker until it expires) and stops the thread."""
        if self._closing:
            return
        self._closing = True
        try:
            asyncio.run_coroutine_threadsafe(self._disconnect(), self._loop).result(5)
        except Exception:  # already gone: nothing to say goodbye to
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # -- the event loop thread --------------------------------------------------------------

    async def _connect(self) -> None:
        settings = self.settings
        generation = uuid.uuid4().hex[:12]
        protocol = _Protocol(self, generation)
        try:
            await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: protocol,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                ),
                settings.connect_timeout,
            )
        except ssl.SSLError as exc:
            raise TransportError(
                f"MQTT reader {settings.client_id}: TLS handshake with {self._host}:{self._port} "
                f"failed ({exc.reason or exc})"
            ) from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise TransportError(
                f"MQTT reader {settings.client_id}: cannot connect to {self._host}:{self._port} ({_describe(exc)})"
            ) from None
        self._protocol = protocol
        self.generation = generation
        try:
            await self._handshake(protocol)
        except BaseException:
            if self._protocol is protocol:
                self._protocol = None
                self._forget_connection()
            if protocol.transport is not None:
                protocol.transport.abort()
            raise

    async def _handshake(self, protocol: _Protocol) -> None:
        """CONNECT and SUBSCRIBE on a new connection, checking the broker's answers."""
        settings = self.settings
        level = settings.protocol_level
        properties: codec.Properties = {}
        if level == 5:
            properties = {
                Prop.SESSION_EXPIRY_INTERVAL: settings.session_expiry_interval,
                Prop.RECEIVE_MAXIMUM: settings.receive_maximum,
            }
        password = self.connection.password.resolve() if self.connection.password is not None else None
        connack = self._expect("connack")
        self._send(
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
        packet: codec.ConnAck = await self._answer(connack, "CONNACK")
        if packet.reason_code:
            raise self._refusal(packet)
        self._keepalive = packet.properties.get(Prop.SERVER_KEEP_ALIVE, settings.keepalive)
        self._arm_keepalive()
        # Retain handling 1: retained messages only for a new subscription, not on every resume.
        options = settings.qos | (0x10 if level == 5 else 0)
        suback = self._expect("suback")
        self._send(codec.encode_subscribe(1, [(f, options) for f in settings.filters], level))
        granted: codec.SubAck = await self._answer(suback, "SUBACK")
        refused = [(f, code) for f, code in zip(settings.filters, granted.reason_codes, strict=False) if code >= 0x80]
        if refused:
            reason = granted.properties.get(Prop.REASON_STRING)
            raise PermissionDeniedError(
                f"MQTT reader {settings.client_id}: the broker refused subscription(s) "
                + ", ".join(f"{f!r} (reason code 0x{code:02X})" for f, code in refused)
                + (f": {reason}" if reason else "")
            )
        self._reconnect_attempt = 0
        protocol.established = True
        _LOGGER.info("MQTT reader %s connected (session present: %s)", settings.client_id, packet.session_present)

    def _refusal(self, packet: codec.ConnAck) -> TdmqError:
        table = _REFUSALS if self.settings.protocol_level == 5 else _V3_REFUSALS
        error = table.get(packet.reason_code, TransportError)
        reason = packet.properties.get(Prop.REASON_STRING)
        return error(
            f"MQTT reader {self.settings.client_id}: the broker refused the connection "
            f"(reason code 0x{packet.reason_code:02X}{': ' + reason if reason else ''})"
        )

    def _expect(self, name: str) -> asyncio.Future:
        future = self._loop.create_future()
        self._waiters[name] = future
        return future

    async def _answer(self, future: asyncio.Future, name: str):
        try:
            return await asyncio.wait_for(future, self.settings.connect_timeout)
        except asyncio.TimeoutError:
            self._drop_transport()
            raise TransportError(
                f"MQTT reader {self.settings.client_id}: no {name} from "
                f"{self._host}:{self._port} within {self.settings.connect_timeout:g} s"
            ) from None

    def _send(self, data: bytes) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.write(data)
            self._last_sent = time.monotonic()

    def _on_packet(self, protocol: _Protocol, first: int, body: bytes) -> None:
        if protocol is not self._protocol:
            return
        self._last_received = time.monotonic()
        kind = first >> 4
        level = self.settings.protocol_level
        if kind == PacketType.PUBLISH:
            packet = codec.decode_publish(first, body, level)
            self._sequence += 1
            if packet.qos:
                self._unacked.append((self._sequence, packet.packet_id, packet.qos, self._last_received))
            self._ready.append(Delivery(protocol.generation, self._sequence, packet, self._clock()))
            self._arrived.set()
            if len(self._ready) >= _PAUSE_AT and not self._paused and protocol.transport is not None:
                self._paused = True
                protocol.transport.pause_reading()
        elif kind == PacketType.PUBREL:
            # The broker received our PUBREC, which was sent only after the commit.
            packet_id = codec.decode_packet_id(body, level).packet_id
            self._awaiting_release.discard(packet_id)
            self._send(codec.encode_ack(PacketType.PUBCOMP, packet_id, 0, level))
        elif kind == PacketType.CONNACK:
            self._resolve("connack", codec.decode_connack(body, level))
        elif kind == PacketType.SUBACK:
            self._resolve("suback", codec.decode_suback(body, level))
        elif kind == PacketType.DISCONNECT:
            disconnect = codec.decode_disconnect(body, level)
            if disconnect.reason_code == ReasonCode.SESSION_TAKEN_OVER:
                self._failure = TransportError(
                    f"MQTT reader {self.settings.client_id}: another connection took the session over "
                    "(two readers with the same client id; check client_id_prefix)"
                )
                self._arrived.set()
            _LOGGER.warning(
                "MQTT reader %s: the broker disconnected (reason code 0x%02X%s)",
                self.settings.client_id,
                disconnect.reason_code,
                f": {disconnect.properties[Prop.REASON_STRING]}" if Prop.REASON_STRING in disconnect.properties else "",
            )
        # PINGRESP, and anything else a broker may send a subscriber, needs no answer.

    def _resolve(self, name: str, packet: object) -> None:
        future = self._waiters.pop(name, None)
        if future is not None and not future.done():
            future.set_result(packet)

    def _acknowledge_through(self, generation: str, sequence: int, then_close: bool) -> None:
        acked = stale = 0
        delays = []
        if generation == self.generation and self._protocol is not None:
            now = time.monotonic()
            level = self.settings.protocol_level
            packets = []
            unacked = self._unacked
            while unacked and unacked[0][0] <= sequence:
                _, packet_id, qos, received = unacked.popleft()
                if qos == 2:
                    self._awaiting_release.add(packet_id)
                packets.append(
                    codec.encode_ack(PacketType.PUBACK if qos == 1 else PacketType.PUBREC, packet_id, 0, level)
                )
                delays.append(int((now - received) * 1000))
            if packets:
                self._send(b"".join(packets))
            acked = len(packets)
        else:
            stale = 1
        with self._stats_lock:
            self._stats.acknowledged += acked
            self._stats.stale_acknowledgements += stale
            self._stats.ack_delays_ms.extend(delays)
        if then_close:
            self._loop.create_task(self._close_soon())

    async def _close_soon(self) -> None:
        # QoS 2: let the broker's PUBRELs come and be answered, or it keeps the messages in flight.
        deadline = time.monotonic() + self.settings.connect_timeout
        while self._awaiting_release and self._protocol is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await self._disconnect()
        self._closing = True
        self._loop.stop()

    def _resume_reading(self) -> None:
        if self._paused and self._protocol is not None and self._protocol.transport is not None:
            self._paused = False
            self._protocol.transport.resume_reading()

    def _arm_keepalive(self) -> None:
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
        if self._keepalive:
            self._keepalive_timer = self._loop.call_later(self._keepalive / 2, self._keepalive_tick)

    def _keepalive_tick(self) -> None:
        now = time.monotonic()
        if now - self._last_received > self._keepalive * 1.5:
            _LOGGER.warning(
                "MQTT reader %s: the broker has been silent for %.0f s; reconnecting",
                self.settings.client_id,
                now - self._last_received,
            )
            self._drop_transport()
            return
        if now - self._last_sent >= self._keepalive / 2:
            self._send(codec.PINGREQ)
        self._arm_keepalive()

    def _drop_transport(self) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()

    async def _drop(self) -> None:
        """Ends the connection without reconnecting (`restart` connects again)."""
        protocol, self._protocol = self._protocol, None
        self._forget_connection()
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()

    def _forget_connection(self) -> None:
        self.generation = ""
        self._ready.clear()
        self._unacked.clear()
        self._awaiting_release.clear()
        self._paused = False
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(TransportError(f"MQTT reader {self.settings.client_id}: connection lost"))
        self._waiters.clear()

    async def _disconnect(self) -> None:
        protocol, self._protocol = self._protocol, None
        self._forget_connection()
        if protocol is not None and protocol.transport is not None:
            protocol.transport.write(
                codec.DISCONNECT if self.settings.protocol_level < 5 else codec.encode_disconnect(ReasonCode.SUCCESS)
            )
            protocol.transport.close()

    def _on_connection_lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is not self._protocol:
            return  # dropped on purpose
        self._protocol = None
        self._forget_connection()
        if self._closing or self._failure is not None or not protocol.established:
            return  # closing, or failed for good, or `_connect` reports the failure itself
        _LOGGER.warning(
            "MQTT reader %s: connection lost (%s); reconnecting",
            self.settings.client_id,
            _describe(exc) if exc else "closed by the broker",
        )
        self._loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while not self._closing and self._protocol is None:
            delay = _RECONNECT_DELAYS[min(self._reconnect_attempt, len(_RECONNECT_DELAYS) - 1)]
            self._reconnect_attempt += 1
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except TransportError as exc:
                _LOGGER.warning("%s (attempt %d; trying again)", exc, self._reconnect_attempt)
            except TdmqError as exc:
                self._failure = exc  # refused: trying again will not help
                self._arrived.set()
                return
            else:
                with self._stats_lock:
                    self._stats.reconnects += 1


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no reason given"
    text = str(exc) or type(exc).__name__
    return text if not isinstance(exc, OSError) or not exc.strerror else exc.strerror
