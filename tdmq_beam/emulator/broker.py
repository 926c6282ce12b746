"""The broker's state: sessions, subscriptions, retained messages, delivery and events.

Everything here runs on the emulator's one event loop; nothing is locked. MQTT
connections (`mqtt_server.MqttConnection`) and the HTTP APIs both publish
through `Broker.publish`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tdmq_beam.emulator.config import EmulatorConfig
from tdmq_beam.emulator.mqtt_codec import PacketType, Prop, encode_ack, encode_publish, encode_utf8
from tdmq_beam.emulator.subscription_tree import Match, Subscription, SubscriptionTree
from tdmq_beam.topics import topic_matches

if TYPE_CHECKING:
    from tdmq_beam.emulator.mqtt_server import MqttConnection

__all__ = ["NEVER_EXPIRES", "Broker", "Message", "Session"]

_LOGGER = logging.getLogger(__name__)

NEVER_EXPIRES = 0xFFFFFFFF
"""Session expiry interval of a session that never expires (MQTT 3.x clean session 0)."""

# The properties of a PUBLISH that travel with the message to every subscriber.
_FORWARDED = (
    Prop.PAYLOAD_FORMAT_INDICATOR,
    Prop.CONTENT_TYPE,
    Prop.RESPONSE_TOPIC,
    Prop.CORRELATION_DATA,
    Prop.USER_PROPERTY,
)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class Message:
    """An application message inside the broker.

    Attributes:
        properties: the forwarded MQTT 5 properties, without Message Expiry
            Interval, which is computed at each send from ``expires_at``.
        expires_at: the loop time at which the message expires, or None.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict
    expires_at: float | None = None
    publisher: str | None = None
    topic_bytes: bytes = b""

    @classmethod
    def create(
        cls,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: dict,
        publisher: str | None,
        loop_time: float,
    ) -> Message:
        forwarded = {key: properties[key] for key in _FORWARDED if key in properties}
        expiry = properties.get(Prop.MESSAGE_EXPIRY_INTERVAL)
        return cls(
            topic,
            payload,
            qos,
            retain,
            forwarded,
            loop_time + expiry if expiry is not None else None,
            publisher,
            encode_utf8(topic),
        )


@dataclass(slots=True)
class Delivery:
    """A message on its way to one session, at the QoS that session gets it."""

    message: Message
    qos: int
    retain: bool
    identifiers: list[int]


@dataclass
class Session:
    """A client's session; it outlives its connections when the client asks for that."""

    client_id: str
    created_ms: int
    expiry_interval: int = 0
    clean_start: bool = True
    protocol_level: int = 4
    keepalive: int = 0
    username: str | None = None
    address: str = ""
    connected_ms: int = 0
    disconnected_ms: int = 0
    connection: MqttConnection | None = None
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    queue: deque[Delivery] = field(default_factory=deque)
    # packet id -> [delivery, waiting for PUBCOMP]
    inflight: dict[int, list] = field(default_factory=dict)
    awaiting_release: set[int] = field(default_factory=set)
    window: int = 16
    max_packet_size: int = 0
    next_packet_id: int = 1
    # (direction, packet type, qos) -> count; direction "in" = server to client.
    packet_counts: dict[tuple[str, int, int], int] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    expiry_handle: asyncio.TimerHandle | None = None

    def count(self, direction: str, first_byte: int, size: int) -> None:
        key = (direction, first_byte >> 4, (first_byte >> 1) & 0x03)
        self.packet_counts[key] = self.packet_counts.get(key, 0) + 1
        if direction == "in":
            self.bytes_in += size
        else:
            self.bytes_out += size

    def allocate_packet_id(self) -> int:
        packet_id = self.next_packet_id
        while packet_id in self.inflight:
            packet_id = packet_id % 65535 + 1
        self.next_packet_id = packet_id % 65535 + 1
        return packet_id


class Broker:
    """Routes messages between sessions and keeps what outlives connections."""

    def __init__(self, config: EmulatorConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.sessions: dict[str, Session] = {}
        self.retained: dict[str, Message] = {}
        self.tree = SubscriptionTree()
        self.node = ""  # "ip:port" of the MQTT listener, set when it is bound
        self.counters: dict[str, int] = {
            "messages_received": 0,
            "messages_delivered": 0,
            "messages_dropped_expired": 0,
            "messages_dropped_queue_full": 0,
            "messages_dropped_too_large": 0,
        }

    # -- publishing ---------------------------------------------------------

    def publish(self, message: Message) -> int:
        """Routes one message to every matching session; returns how many got it."""
        self.counters["messages_received"] += 1
        if message.retain:
            if message.payload:
                self.retained[message.topic] = message
            else:
                self.retained.pop(message.topic, None)
        matches = self.tree.match(message.topic, message.publisher)
        for client_id, match in matches.items():
            session = self.sessions.get(client_id)
            if session is not None:
                self._deliver(session, message, match)
        return len(matches)

    def _deliver(self, session: Session, message: Message, match: Match) -> None:
        qos = min(message.qos, match.qos)
        retain = message.retain and match.retain_as_published
        delivery = Delivery(message, qos, retain, match.identifiers)
        if qos == 0:
            if session.connection is not None:
                self._send_publish(session, delivery, 0, False)
            return
        if len(session.queue) >= self.config.max_queued:
            session.queue.popleft()
            self.counters["messages_dropped_queue_full"] += 1
        session.queue.append(delivery)
        if session.connection is not None:
            self.drain(session)

    def drain(self, session: Session) -> None:
        """Sends queued QoS 1/2 messages while the session's in-flight window has room."""
        while session.queue and len(session.inflight) < session.window:
            delivery = session.queue.popleft()
            packet_id = session.allocate_packet_id()
            if self._send_publish(session, delivery, packet_id, False):
                session.inflight[packet_id] = [delivery, False]

    def _send_publish(self, session: Session, delivery: Delivery, packet_id: int, dup: bool) -> bool:
        message = delivery.message
        props = None
        connection = session.connection
        level = connection.level
        if level == 5:
            props = message.properties
            if message.expires_at is not None or delivery.identifiers:
                props = dict(props)
                if delivery.identifiers:
                    props[Prop.SUBSCRIPTION_IDENTIFIER] = delivery.identifiers
        if message.expires_at is not None:
            # Rounded to milliseconds first: (t + 3600) - t may be 3600.0000001 in floating point.
            remaining = math.ceil(round(message.expires_at - self.loop.time(), 3))
            if remaining <= 0 and not dup:
                self.counters["messages_dropped_expired"] += 1
                return False
            if props is not None:
                props[Prop.MESSAGE_EXPIRY_INTERVAL] = max(remaining, 1)
        packet = encode_publish(
            message.topic_bytes, message.payload, delivery.qos, delivery.retain, dup, packet_id, level, props
        )
        if session.max_packet_size and len(packet) > session.max_packet_size:
            self.counters["messages_dropped_too_large"] += 1
            return False
        connection.send(packet)
        self.counters["messages_delivered"] += 1
        return True

    def resend_inflight(self, session: Session) -> None:
        """On a resumed session: every unacknowledged PUBLISH again with DUP, every
        unfinished QoS 2 exchange with its PUBREL, then the queue."""
        for packet_id, (delivery, released) in list(session.inflight.items()):
            if released:
                session.connection.send(encode_ack(PacketType.PUBREL, packet_id, 0, session.connection.level))
            else:
                self._send_publish(session, delivery, packet_id, True)
        self.drain(session)

    def acknowledge(self, session: Session, packet_type: int, packet_id: int, reason_code: int) -> None:
        """Handles PUBACK, PUBREC and PUBCOMP from a subscriber."""
        entry = session.inflight.get(packet_id)
        if entry is None:
            if packet_type == PacketType.PUBREC:
                # MQTT 5 4.3.3: answer a PUBREC we do not know with PUBREL "not found".
                session.connection.send(encode_ack(PacketType.PUBREL, packet_id, 0x92, session.connection.level))
            return
        if packet_type == PacketType.PUBREC and reason_code < 0x80:
            entry[1] = True
            session.connection.send(encode_ack(PacketType.PUBREL, packet_id, 0, session.connection.level))
            return
        del session.inflight[packet_id]
        self.drain(session)

    # -- subscriptions ------------------------------------------------------

    def subscribe(self, session: Session, subscription: Subscription) -> None:
        existed = subscription.topic_filter in session.subscriptions
        session.subscriptions[subscription.topic_filter] = subscription
        self.tree.add(session.client_id, subscription)
        handling = subscription.retain_handling
        if handling == 2 or (handling == 1 and existed):
            return
        for topic, message in list(self.retained.items()):
            if topic_matches(subscription.topic_filter, topic):
                match = Match(subscription.qos, True, [subscription.identifier] if subscription.identifier else [])
                self._deliver(session, message, match)

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        if session.subscriptions.pop(topic_filter, None) is None:
            return False
        self.tree.remove(session.client_id, topic_filter)
        return True

    # -- sessions -----------------------------------------------------------

    def end_session(self, session: Session) -> None:
        if session.expiry_handle is not None:
            session.expiry_handle.cancel()
        for topic_filter in list(session.subscriptions):
            self.tree.remove(session.client_id, topic_filter)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    def detach(self, session: Session) -> None:
        """The session's connection is gone: keep the session for its expiry interval."""
        session.connection = None
        session.disconnected_ms = now_ms()
        if session.expiry_interval == 0:
            self.end_session(session)
        elif session.expiry_interval != NEVER_EXPIRES:
            session.expiry_handle = self.loop.call_later(
                session.expiry_interval, self._expire, session.client_id, session
            )

    def _expire(self, client_id: str, session: Session) -> None:
        if self.sessions.get(client_id) is session and session.connection is None:
            self.end_session(session)

    def connected_count(self) -> int:
        return sum(1 for session in self.sessions.values() if session.connection is not None)

    # -- events -------------------------------------------------------------

    def emit_event(self, name: str, fields: dict) -> None:
        """Publishes a client event as QoS 0 JSON on ``$events/{name}``."""
        topic = f"$events/{name}"
        payload = json.dumps(fields, separators=(",", ":")).encode()
        self.publish(Message.create(topic, payload, 0, False, {}, None, self.loop.time()))

    def new_client_id(self) -> str:
        return f"auto-{uuid.uuid4().hex}"
