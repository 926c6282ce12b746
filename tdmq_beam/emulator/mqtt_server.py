"""One MQTT client connection: reads packets, answers them, and enforces keep-alive."""

from __future__ import annotations

import asyncio
import logging

from tdmq_beam.emulator import mqtt_codec as codec
from tdmq_beam.emulator.broker import NEVER_EXPIRES, Broker, Message, Session, now_ms
from tdmq_beam.emulator.mqtt_codec import MalformedPacket, PacketType, Prop
from tdmq_beam.emulator.subscription_tree import Subscription
from tdmq_beam.topics import topic_filter_error

__all__ = ["CONNECT_TIMEOUT", "MqttConnection"]

_LOGGER = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
"""Seconds a new connection has to send CONNECT."""

# CONNACK codes: (MQTT 3.1.1, MQTT 5)
_BAD_CREDENTIALS = (4, 0x86)
_NOT_AUTHORIZED = (5, 0x87)
_CLIENT_ID_REJECTED = (2, 0x85)


class MqttConnection(asyncio.Protocol):
    """The broker's side of one MQTT network connection."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.loop = broker.loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.level = 4
        self.session: Session | None = None
        self.will: codec.Will | None = None
        self.keepalive = 0
        self.connect_keepalive = 0
        self.last_received = 0.0
        self.peer = ""
        self.closed = False
        self._watchdog: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else ""
        self.last_received = self.loop.time()
        self._watchdog = self.loop.call_later(CONNECT_TIMEOUT, self._connect_timeout)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_received = self.loop.time()
        buffer = self.buffer
        buffer += data
        start = 0
        try:
            while True:
                header = codec.decode_fixed_header(buffer, start)
                if header is None:
                    break
                first, length, body_start = header
                if body_start - start + length > self.broker.config.max_packet_size:
                    self.close("packet_too_large", 0x95)
                    return
                end = body_start + length
                if end > len(buffer):
                    break
                body = bytes(buffer[body_start:end])
                if self.session is not None:
                    self.session.count("out", first, end - start)
                start = end
                self._handle(first, body)
                if self.closed:
                    return
        except MalformedPacket as exc:
            _LOGGER.info("closing MQTT connection %s: %s", self.peer, exc)
            self.close("protocol_error", 0x81)
            return
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish("sock_closed")

    # -- sending and closing ------------------------------------------------

    def send(self, packet: bytes) -> None:
        if self.closed:
            return
        if self.session is not None:
            self.session.count("in", packet[0], len(packet))
        self.transport.write(packet)

    def close(self, reason: str, reason_code: int | None = None) -> None:
        """Closes the connection from the server's side; the will is published."""
        if self.closed:
            return
        if reason_code is not None and self.level == 5 and self.session is not None:
            self.send(codec.encode_disconnect(reason_code))
        self._finish(reason)
        self.transport.close()

    def _finish(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        session = self.session
        if session is None or session.connection is not self:
            return
        if self.will is not None:
            self._publish_will()
        self.broker.detach(session)
        self.broker.emit_event(
            "client_disconnected",
            {
                "clientid": session.client_id,
                "username": session.username,
                "event": "client.disconnected",
                "reason": reason,
                "node": self.broker.node,
                "peername": self.peer,
                "disconnected_at": session.disconnected_ms,
                "timestamp": session.disconnected_ms,
            },
        )

    def _publish_will(self) -> None:
        will, self.will = self.will, None
        username = self.session.username
        if not self.broker.config.acl.allows(username, "publish", will.topic):
            return
        self.broker.publish(
            Message.create(
                will.topic, will.payload, will.qos, will.retain, will.properties,
                self.session.client_id, self.loop.time(),
            )
        )  # fmt: skip

    # -- keep-alive ---------------------------------------------------------

    def _connect_timeout(self) -> None:
        if self.session is None:
            self.close("connect_timeout")

    def set_keepalive(self, seconds: int) -> None:
        """Enforces a new keep-alive at once (the keep-alive API)."""
        self.keepalive = seconds
        self.session.keepalive = seconds
        self._arm_watchdog()

    def _arm_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.keepalive:
            deadline = self.last_received + self.keepalive * 1.5
            self._watchdog = self.loop.call_at(deadline, self._check_keepalive)

    def _check_keepalive(self) -> None:
        limit = self.keepalive * 1.5
        idle = self.loop.time() - self.last_received
        if idle >= limit:
            _LOGGER.info("client %s silent for %.1fs: keep-alive timeout", self.session.client_id, idle)
            self.close("keepalive_timeout", 0x8D)
        else:
            self._watchdog = self.loop.call_later(limit - idle, self._check_keepalive)

    # -- packets --------------------------------------------------------------

    def _handle(self, first: int, body: bytes) -> None:
        packet_type = first >> 4
        if self.session is None:
            if packet_type != PacketType.CONNECT:
                raise MalformedPacket(f"first packet is {PacketType.NAMES[packet_type]}, not CONNECT")
            self._on_connect(first, body)
            return
        flags = first & 0x0F
        if packet_type == PacketType.PUBLISH:
            self._on_publish(codec.decode_publish(first, body, self.level))
            return
        expected_flags = 0x02 if packet_type in (PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE) else 0
        if flags != expected_flags:
            raise MalformedPacket(f"{PacketType.NAMES[packet_type]} with reserved flags {flags:#x}")
        if packet_type in (PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBCOMP):
            ack = codec.decode_packet_id(body, self.level)
            self.broker.acknowledge(self.session, packet_type, ack.packet_id, ack.reason_code)
        elif packet_type == PacketType.PUBREL:
            ack = codec.decode_packet_id(body, self.level)
            known = ack.packet_id in self.session.awaiting_release
            self.session.awaiting_release.discard(ack.packet_id)
            self.send(codec.encode_ack(PacketType.PUBCOMP, ack.packet_id, 0 if known else 0x92, self.level))
        elif packet_type == PacketType.SUBSCRIBE:
            self._on_subscribe(codec.decode_subscribe(body, self.level))
        elif packet_type == PacketType.UNSUBSCRIBE:
            self._on_unsubscribe(codec.decode_unsubscribe(body, self.level))
        elif packet_type == PacketType.PINGREQ:
            if body:
                raise MalformedPacket("PINGREQ has a body")
            self.send(codec.PINGRESP)
        elif packet_type == PacketType.DISCONNECT:
            self._on_disconnect(codec.decode_disconnect(body, self.level))
        elif packet_type == PacketType.CONNECT:
            raise MalformedPacket("second CONNECT on one connection")
        else:
            raise MalformedPacket(f"clients do not send {PacketType.NAMES[packet_type]} here")

    def _refuse(self, codes: tuple[int, int], reason: str) -> None:
        code = codes[1] if self.level == 5 else codes[0]
        _LOGGER.info("refusing MQTT connection from %s: %s", self.peer, reason)
        self.transport.write(codec.encode_connack(False, code, self.level, {}))
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        self.transport.close()

    def _on_connect(self, first: int, body: bytes) -> None:
        if first & 0x0F:
            raise MalformedPacket("CONNECT with reserved flags")
        try:
            packet = codec.decode_connect(body)
        except codec.UnsupportedProtocol:
            self.transport.write(codec.encode_connack(False, 0x01, 4, {}))
            self.closed = True
            self.transport.close()
            return
        self.level = packet.protocol_level
        config = self.broker.config
        username = packet.username
        if username is None and packet.password is None:
            if not config.allow_anonymous:
                return self._refuse(_BAD_CREDENTIALS, "no username and anonymous access is off")
        elif not config.check_password(username, packet.password):
            return self._refuse(_BAD_CREDENTIALS, f"bad username or password for {username!r}")
        if not config.acl.allows(username, "connect"):
            return self._refuse(_NOT_AUTHORIZED, f"user {username!r} lacks CONNECT permission")

        props = packet.properties
        connack_props: dict = {}
        client_id = packet.client_id
        if not client_id:
            if self.level < 5 and not packet.clean_start:
                return self._refuse(_CLIENT_ID_REJECTED, "empty client id needs clean session")
            client_id = self.broker.new_client_id()
            if self.level == 5:
                connack_props[Prop.ASSIGNED_CLIENT_IDENTIFIER] = client_id
        if self.level == 5:
            expiry = props.get(Prop.SESSION_EXPIRY_INTERVAL, 0)
        else:
            expiry = 0 if packet.clean_start else NEVER_EXPIRES

        broker = self.broker
        session = broker.sessions.get(client_id)
        if session is not None and session.connection is not None:
            session.connection.close("takeovered", 0x8E)
        if session is not None and packet.clean_start:
            broker.end_session(session)
            session = None
        session_present = session is not None
        if session is None:
            session = Session(client_id, created_ms=now_ms())
            broker.sessions[client_id] = session
        elif session.expiry_handle is not None:
            session.expiry_handle.cancel()
            session.expiry_handle = None

        session.expiry_interval = expiry
        session.clean_start = packet.clean_start
        session.protocol_level = self.level
        session.keepalive = packet.keepalive
        session.username = username
        session.address = self.peer
        session.connected_ms = now_ms()
        session.disconnected_ms = 0
        session.connection = self
        session.window = props.get(Prop.RECEIVE_MAXIMUM, 65535) if self.level == 5 else config.max_inflight
        session.max_packet_size = props.get(Prop.MAXIMUM_PACKET_SIZE, 0)
        self.session = session
        session.count("out", first, len(body) + 1 + len(codec.encode_varint(len(body))))
        self.will = packet.will
        self.keepalive = self.connect_keepalive = packet.keepalive
        self._arm_watchdog()

        if self.level == 5:
            connack_props[Prop.MAXIMUM_PACKET_SIZE] = config.max_packet_size
            connack_props[Prop.TOPIC_ALIAS_MAXIMUM] = 0
            connack_props[Prop.SHARED_SUBSCRIPTION_AVAILABLE] = 0
        self.send(codec.encode_connack(session_present, 0, self.level, connack_props))
        broker.emit_event(
            "client_connected",
            {
                "clientid": client_id,
                "username": username,
                "clean_start": packet.clean_start,
                "connected_at": session.connected_ms,
                "event": "client.connected",
                "keepalive": packet.keepalive,
                "node": broker.node,
                "peername": self.peer,
                "proto_ver": self.level,
                "timestamp": session.connected_ms,
            },
        )
        if session_present:
            broker.resend_inflight(session)

    def _on_publish(self, packet: codec.Publish) -> None:
        session = self.session
        if Prop.TOPIC_ALIAS in packet.properties:
            raise MalformedPacket("topic alias used, but Topic Alias Maximum is 0")
        allowed = self.broker.config.acl.allows(session.username, "publish", packet.topic)
        if packet.qos == 2:
            if packet.packet_id in session.awaiting_release:
                # A retransmission of a message already received: acknowledge only.
                self.send(codec.encode_ack(PacketType.PUBREC, packet.packet_id, 0, self.level))
                return
        if allowed:
            self.broker.publish(
                Message.create(
                    packet.topic, packet.payload, packet.qos, packet.retain, packet.properties,
                    session.client_id, self.loop.time(),
                )
            )  # fmt: skip
        reason = 0 if allowed else 0x87
        if packet.qos == 1:
            self.send(codec.encode_ack(PacketType.PUBACK, packet.packet_id, reason, self.level))
        elif packet.qos == 2:
            if allowed:
                session.awaiting_release.add(packet.packet_id)
            self.send(codec.encode_ack(PacketType.PUBREC, packet.packet_id, reason, self.level))

    def _on_subscribe(self, packet: codec.Subscribe) -> None:
        session = self.session
        identifiers = packet.properties.get(Prop.SUBSCRIPTION_IDENTIFIER)
        identifier = identifiers[0] if identifiers else None
        acl = self.broker.config.acl
        codes = []
        granted = []
        for topic_filter, options in packet.filters:
            qos = options & 0x03
            if topic_filter_error(topic_filter) or topic_filter.startswith("$share/"):
                codes.append(0x80 if self.level < 5 else 0x8F)
            elif not acl.allows(session.username, "subscribe", topic_filter):
                codes.append(0x80)
            else:
                codes.append(qos)
                granted.append(
                    Subscription(
                        topic_filter,
                        qos,
                        no_local=bool(options & 0x04),
                        retain_as_published=bool(options & 0x08),
                        retain_handling=(options >> 4) & 0x03,
                        identifier=identifier,
                    )
                )
        self.send(codec.encode_suback(packet.packet_id, codes, self.level))
        for subscription in granted:
            self.broker.subscribe(session, subscription)
            self.broker.emit_event(
                "session_subscribed",
                {
                    "clientid": session.client_id,
                    "username": session.username,
                    "topic": subscription.topic_filter,
                    "subopts": {"qos": subscription.qos},
                    "event": "session.subscribed",
                    "timestamp": now_ms(),
                },
            )

    def _on_unsubscribe(self, packet: codec.Unsubscribe) -> None:
        session = self.session
        codes = []
        for topic_filter in packet.filters:
            removed = self.broker.unsubscribe(session, topic_filter)
            codes.append(0x00 if removed else 0x11)
            if removed:
                self.broker.emit_event(
                    "session_unsubscribed",
                    {
                        "clientid": session.client_id,
                        "username": session.username,
                        "topic": topic_filter,
                        "event": "session.unsubscribed",
                        "timestamp": now_ms(),
                    },
                )
        self.send(codec.encode_unsuback(packet.packet_id, codes, self.level))

    def _on_disconnect(self, packet: codec.Disconnect) -> None:
        session = self.session
        expiry = packet.properties.get(Prop.SESSION_EXPIRY_INTERVAL)
        if expiry is not None:
            if session.expiry_interval == 0 and expiry != 0:
                raise MalformedPacket("DISCONNECT sets a session expiry on a session that had none")
            session.expiry_interval = expiry
        if packet.reason_code != 0x04:  # 0x04: disconnect with will message
            self.will = None
        self._finish("normal")
        self.transport.close()
