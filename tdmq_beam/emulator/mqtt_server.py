"""One MQTT client connection: reads packets, answers them, and enforces keep-alive.

The connection knows the protocol (packets, flow control, topic aliases, reason
codes and strings, keep-alive); the broker (`broker.Broker`) knows sessions and
routing. The same connection serves TCP, TLS and WebSocket: it needs only an
asyncio transport.
"""

from __future__ import annotations

import asyncio
import logging

from tdmq_beam.emulator.broker import Broker
from tdmq_beam.emulator.message import Message
from tdmq_beam.emulator.session import Session
from tdmq_beam.emulator.subscription_tree import Subscription
from tdmq_beam.mqtt import codec
from tdmq_beam.mqtt.codec import MalformedPacket, PacketTooLarge, PacketType, Prop, ProtocolError, ReasonCode
from tdmq_beam.mqtt.topics import split_shared, topic_filter_error
from tdmq_beam.rules.client_events import EVENTS_ROOT

__all__ = ["CONNECT_TIMEOUT", "MqttConnection", "certificate_common_name"]

_LOGGER = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
"""Seconds a new connection has to send CONNECT."""

# CONNACK refusals: (MQTT 3.1.1 return code, MQTT 5 reason code)
_BAD_CREDENTIALS = (ReasonCode.V3_BAD_USER_NAME_OR_PASSWORD, ReasonCode.BAD_USER_NAME_OR_PASSWORD)
_NOT_AUTHORIZED = (ReasonCode.V3_NOT_AUTHORIZED, ReasonCode.NOT_AUTHORIZED)
_CLIENT_ID_REJECTED = (ReasonCode.V3_IDENTIFIER_REJECTED, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)
_QUOTA_EXCEEDED = (ReasonCode.V3_SERVER_UNAVAILABLE, ReasonCode.QUOTA_EXCEEDED)

# What the broker offers every MQTT 5 client, announced in CONNACK.
_AVAILABLE = {
    Prop.RETAIN_AVAILABLE: 1,
    Prop.WILDCARD_SUBSCRIPTION_AVAILABLE: 1,
    Prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE: 1,
    Prop.SHARED_SUBSCRIPTION_AVAILABLE: 1,
}


# Topic roots only the service publishes to: the client events, and the broker's own status tree.
# Other '$' topics are ordinary topics that wildcards at the first level do not match (MQTT 5, 4.7.2).
_RESERVED_ROOTS = (EVENTS_ROOT, "$SYS")


def _is_reserved(topic: str) -> bool:
    return topic.split("/", 1)[0] in _RESERVED_ROOTS


def certificate_common_name(transport: asyncio.BaseTransport | None) -> str | None:
    """The Common Name of the client certificate verified on a TLS transport, or None."""
    if transport is None:
        return None
    certificate = transport.get_extra_info("peercert")
    if not certificate:
        return None
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


class MqttConnection(asyncio.Protocol):
    """The broker's side of one MQTT network connection."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.config = broker.config
        self.loop = broker.loop
        self.transport: asyncio.Transport  # set by connection_made, before anything else
        self.framer = codec.PacketFramer(broker.config.max_packet_size)
        self.level = 4
        self.session: Session | None = None
        self.will: codec.Will | None = None
        self.keepalive = 0
        self.connect_keepalive = 0
        self.problem_information = True
        self.aliases: dict[int, str] = {}  # topic aliases the client set, towards the broker
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
        try:
            for first, body, size in self.framer.feed(data):
                if self.session is not None:
                    self.session.count("out", first, size)
                self._handle(first, body)
                if self.closed:
                    return
        except PacketTooLarge as exc:
            self.close("packet_too_large", exc.reason_code, str(exc))
        except MalformedPacket as exc:
            _LOGGER.info("closing MQTT connection %s: %s", self.peer, exc)
            self.close("protocol_error", exc.reason_code, str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish("sock_closed")

    # -- sending and closing ------------------------------------------------

    def send(self, packet: bytes) -> None:
        if self.closed:
            return
        if self.session is not None:
            self.session.count("in", packet[0], len(packet))
        self.transport.write(packet)

    def buffered_bytes(self) -> int:
        return self.transport.get_write_buffer_size()

    def close(self, reason: str, reason_code: int | None = None, reason_string: str | None = None) -> None:
        """Closes the connection from the server's side; the will is published."""
        if self.closed:
            return
        if reason_code is not None and self.level == 5 and self.session is not None:
            self._reply(codec.encode_disconnect, reason_code, reason=reason_string)
        self._finish(reason)
        self.transport.close()

    def _finish(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        session = self.session
        if session is not None and session.connection is self:
            will, self.will = self.will, None
            self.broker.close_session(session, reason, will)

    def _live_session(self) -> Session:
        """The session of a connection past CONNECT (every packet but the first)."""
        assert self.session is not None
        return self.session

    def _reason(self, text: str | None) -> dict | None:
        """A Reason String property, where the client allows one (MQTT 5 Request Problem Information)."""
        if text is None or self.level != 5:
            return None
        return {Prop.REASON_STRING: text[:1024]}

    def _reply(self, encode, *args, reason: str | None = None) -> None:
        """Sends a control packet, with a reason string unless the client refused them or it would
        make the packet larger than the client's Maximum Packet Size."""
        allowed = self.problem_information or encode is codec.encode_disconnect
        packet = encode(*args, self._reason(reason) if allowed else None)
        limit = self.session.max_packet_size if self.session is not None else 0
        if limit and len(packet) > limit:
            packet = encode(*args, None)
        self.send(packet)

    # -- keep-alive ---------------------------------------------------------

    def _connect_timeout(self) -> None:
        if self.session is None:
            self.close("connect_timeout")

    def set_keepalive(self, seconds: int) -> None:
        """Enforces a new keep-alive at once (the keep-alive API)."""
        self.keepalive = seconds
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
            _LOGGER.info("%s silent for %.1fs: keep-alive timeout", self.peer, idle)
            self.close("keepalive_timeout", ReasonCode.KEEP_ALIVE_TIMEOUT, "keep-alive timeout")
        else:
            self._watchdog = self.loop.call_later(limit - idle, self._check_keepalive)

    # -- packets --------------------------------------------------------------

    def _handle(self, first: int, body: bytes) -> None:
        packet_type = first >> 4
        session = self.session
        if session is None:
            if packet_type != PacketType.CONNECT:
                raise ProtocolError(f"first packet is {PacketType.NAMES[packet_type]}, not CONNECT")
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
            self.broker.acknowledge(session, packet_type, ack.packet_id, ack.reason_code)
        elif packet_type == PacketType.PUBREL:
            ack = codec.decode_packet_id(body, self.level)
            known = ack.packet_id in session.awaiting_release
            session.awaiting_release.discard(ack.packet_id)
            code = ReasonCode.SUCCESS if known else ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
            self.send(codec.encode_ack(PacketType.PUBCOMP, ack.packet_id, code, self.level))
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
            raise ProtocolError("second CONNECT on one connection")
        else:
            raise ProtocolError(f"clients do not send {PacketType.NAMES[packet_type]} here")

    def _refuse(self, codes: tuple[int, int], reason: str) -> None:
        """CONNACK with a refusal (MQTT 5: with its reason string, which CONNACK may always carry), then close."""
        code = codes[1] if self.level == 5 else codes[0]
        _LOGGER.info("refusing MQTT connection from %s: %s", self.peer, reason)
        self.transport.write(codec.encode_connack(False, code, self.level, self._reason(reason) or {}))
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        self.transport.close()

    def _authenticate(self, packet: codec.Connect) -> tuple[str | None, str | None] | None:
        """(username for ACL checks, client id a certificate imposes), or None after refusing.

        A verified client certificate authenticates and names the client id
        (its Common Name); Basic-style credentials, when also given, must be right.
        """
        config = self.config
        common_name = certificate_common_name(self.transport)
        username = packet.username
        if username is None and packet.password is None:
            if common_name is None and not config.allow_anonymous:
                self._refuse(_BAD_CREDENTIALS, "no username and anonymous access is off")
                return None
        elif not config.check_password(username, packet.password):
            self._refuse(_BAD_CREDENTIALS, f"bad username or password for {username!r}")
            return None
        return (username if username is not None else common_name), common_name

    def _on_connect(self, first: int, body: bytes) -> None:
        if first & 0x0F:
            raise MalformedPacket("CONNECT with reserved flags")
        try:
            packet = codec.decode_connect(body)
        except codec.UnsupportedProtocol as exc:
            self._refuse((ReasonCode.V3_UNACCEPTABLE_PROTOCOL_VERSION,) * 2, str(exc))  # answered as 3.1.1 does
            return
        self.level = packet.protocol_level
        props = packet.properties
        self.problem_information = props.get(Prop.REQUEST_PROBLEM_INFORMATION, 1) == 1
        if props.get(Prop.RECEIVE_MAXIMUM) == 0 or props.get(Prop.MAXIMUM_PACKET_SIZE) == 0:
            raise ProtocolError("Receive Maximum and Maximum Packet Size must not be 0")
        identity = self._authenticate(packet)
        if identity is None:
            return
        username, common_name = identity
        config = self.config
        connack_props: dict = {}
        client_id = packet.client_id
        if common_name is not None:
            if client_id and client_id != common_name:
                return self._refuse(_CLIENT_ID_REJECTED, "the client id must be the certificate's Common Name")
            if not client_id and self.level == 5:
                connack_props[Prop.ASSIGNED_CLIENT_IDENTIFIER] = common_name
            client_id = common_name
        elif not client_id:
            if self.level < 5 and not packet.clean_start:
                return self._refuse(_CLIENT_ID_REJECTED, "empty client id needs clean session")
            client_id = self.broker.new_client_id()
            if self.level == 5:
                connack_props[Prop.ASSIGNED_CLIENT_IDENTIFIER] = client_id
        if not config.acl.allows(username, "connect", client_id=client_id):
            return self._refuse(_NOT_AUTHORIZED, f"user {username!r} lacks CONNECT permission")
        existing = self.broker.sessions.get(client_id)
        taking_over = existing is not None and existing.connection is not None
        if not taking_over and self.broker.connected_count() >= config.max_connections:
            return self._refuse(_QUOTA_EXCEEDED, f"the instance allows {config.max_connections} connections")
        if not taking_over and config.max_connections_per_address:
            host = self.peer.rsplit(":", 1)[0]
            if self.broker.connected_count(from_host=host) >= config.max_connections_per_address:
                return self._refuse(_QUOTA_EXCEEDED, f"{config.max_connections_per_address} connections from {host}")
        if existing is not None and existing.username != username:
            # A session belongs to the user who made it, live or not: another user may neither
            # resume it (and read what it holds), take over its connection, nor end it with a
            # clean start, until it expires.
            return self._refuse(_NOT_AUTHORIZED, f"client id {client_id!r} is another user's session")

        keepalive = packet.keepalive
        if self.level == 5:
            expiry = props.get(Prop.SESSION_EXPIRY_INTERVAL, 0)
            if expiry > config.max_session_expiry:  # 0xFFFFFFFF (never) included
                expiry = connack_props[Prop.SESSION_EXPIRY_INTERVAL] = config.max_session_expiry
            cap = config.max_keepalive
            if cap and (keepalive == 0 or keepalive > cap):
                keepalive = cap
                connack_props[Prop.SERVER_KEEP_ALIVE] = cap
        else:
            expiry = 0 if packet.clean_start else config.max_session_expiry  # 3.1.1 asks for forever
        session, present = self.broker.open_session(
            self,
            client_id=client_id,
            clean_start=packet.clean_start,
            expiry_interval=expiry,
            username=username,
            address=self.peer,
            keepalive=keepalive,
            window=props.get(Prop.RECEIVE_MAXIMUM, 65535) if self.level == 5 else config.max_inflight,
            max_packet_size=props.get(Prop.MAXIMUM_PACKET_SIZE, 0),
            alias_maximum=props.get(Prop.TOPIC_ALIAS_MAXIMUM, 0),
        )
        self.session = session
        session.count("out", first, len(body) + 1 + len(codec.encode_varint(len(body))))
        self.will = packet.will
        self.keepalive = self.connect_keepalive = keepalive
        self._arm_watchdog()
        if self.level == 5:
            connack_props.update(_AVAILABLE)
            connack_props[Prop.RECEIVE_MAXIMUM] = config.max_inflight
            connack_props[Prop.MAXIMUM_PACKET_SIZE] = config.max_packet_size
            connack_props[Prop.TOPIC_ALIAS_MAXIMUM] = config.topic_alias_maximum
            if props.get(Prop.REQUEST_RESPONSE_INFORMATION) == 1:
                connack_props[Prop.RESPONSE_INFORMATION] = f"reply/{client_id}"
        self.send(codec.encode_connack(present, ReasonCode.SUCCESS, self.level, connack_props))
        self.broker.session_started(session, present)

    def _topic_of(self, packet: codec.Publish) -> str:
        """The publish's topic, resolving and recording MQTT 5 topic aliases."""
        alias = packet.properties.get(Prop.TOPIC_ALIAS)
        if alias is None:
            if not packet.topic:
                raise ProtocolError("PUBLISH with an empty topic and no topic alias")
            return packet.topic
        if not 1 <= alias <= self.config.topic_alias_maximum:
            raise _TopicAliasInvalid(f"topic alias {alias} is outside 1..{self.config.topic_alias_maximum}")
        if packet.topic:
            self.aliases[alias] = packet.topic
            return packet.topic
        topic = self.aliases.get(alias)
        if topic is None:
            raise ProtocolError(f"topic alias {alias} was never set on this connection")
        return topic

    def _on_publish(self, packet: codec.Publish) -> None:
        session = self._live_session()
        topic = self._topic_of(packet)
        if packet.qos == 2:
            if packet.packet_id in session.awaiting_release:
                # A retransmission of a message already received: acknowledge only.
                self.send(codec.encode_ack(PacketType.PUBREC, packet.packet_id, 0, self.level))
                return
            if self.level == 5 and len(session.awaiting_release) >= self.config.max_inflight:
                self.close("receive_maximum_exceeded", ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, "Receive Maximum exceeded")
                return
        problem = None
        if _is_reserved(topic):
            problem = f"clients may not publish to {topic!r}: {topic.split('/')[0]}/... belongs to the service"
        elif not self.config.acl.allows(session.username, "publish", topic, client_id=session.client_id):
            problem = f"user {session.username!r} is not allowed to publish to {topic!r}"
        if problem is None:
            self.broker.publish(
                Message.create(
                    topic, packet.payload, packet.qos, packet.retain, packet.properties,
                    session.client_id, self.loop.time(),
                )
            )  # fmt: skip
        reason = ReasonCode.SUCCESS if problem is None else ReasonCode.NOT_AUTHORIZED
        if packet.qos == 1:
            self._reply(codec.encode_ack, PacketType.PUBACK, packet.packet_id, reason, self.level, reason=problem)
        elif packet.qos == 2:
            if problem is None:
                session.awaiting_release.add(packet.packet_id)
            self._reply(codec.encode_ack, PacketType.PUBREC, packet.packet_id, reason, self.level, reason=problem)

    def _on_subscribe(self, packet: codec.Subscribe) -> None:
        session = self._live_session()
        identifiers = packet.properties.get(Prop.SUBSCRIPTION_IDENTIFIER)
        if identifiers is not None and (len(identifiers) > 1 or identifiers[0] == 0):
            raise ProtocolError("SUBSCRIBE carries a Subscription Identifier of 0 or more than one")
        identifier = identifiers[0] if identifiers else None
        v5 = self.level == 5
        acl = self.config.acl
        codes = []
        problems = []
        granted = []
        count = len(session.subscriptions)
        for topic_filter, options in packet.filters:
            qos = options & 0x03
            try:
                shared = split_shared(topic_filter)
            except ValueError as exc:
                codes.append(ReasonCode.TOPIC_FILTER_INVALID if v5 else ReasonCode.V3_SUBSCRIBE_FAILURE)
                problems.append(f"{topic_filter!r}: {exc}")
                continue
            group, match_filter = shared if shared else (None, topic_filter)
            problem = topic_filter_error(match_filter)
            if problem:
                codes.append(ReasonCode.TOPIC_FILTER_INVALID if v5 else ReasonCode.V3_SUBSCRIBE_FAILURE)
                problems.append(f"{topic_filter!r}: {problem}")
                continue
            if group is not None and options & 0x04:
                raise ProtocolError("No Local on a shared subscription")
            if topic_filter not in session.subscriptions:
                if count >= self.config.max_subscriptions:
                    codes.append(ReasonCode.QUOTA_EXCEEDED if v5 else ReasonCode.V3_SUBSCRIBE_FAILURE)
                    problems.append(f"{topic_filter!r}: more than {self.config.max_subscriptions} subscriptions")
                    continue
                count += 1
            if not acl.allows(session.username, "subscribe", match_filter, client_id=session.client_id):
                codes.append(ReasonCode.V3_SUBSCRIBE_FAILURE)
                problems.append(f"{topic_filter!r}: not allowed by the ACL")
                continue
            codes.append(qos)
            granted.append(
                Subscription(
                    topic_filter,
                    qos,
                    no_local=bool(options & 0x04),
                    retain_as_published=bool(options & 0x08),
                    retain_handling=(options >> 4) & 0x03,
                    identifier=identifier,
                    share_group=group,
                    filter=match_filter,
                )
            )
        self._reply(codec.encode_suback, packet.packet_id, codes, self.level, reason="; ".join(problems) or None)
        for subscription in granted:
            self.broker.subscribe(session, subscription)

    def _on_unsubscribe(self, packet: codec.Unsubscribe) -> None:
        session = self._live_session()
        codes = [
            ReasonCode.SUCCESS if self.broker.unsubscribe(session, topic_filter) else ReasonCode.NO_SUBSCRIPTION_EXISTED
            for topic_filter in packet.filters
        ]
        self.send(codec.encode_unsuback(packet.packet_id, codes, self.level))

    def _on_disconnect(self, packet: codec.Disconnect) -> None:
        session = self._live_session()
        expiry = packet.properties.get(Prop.SESSION_EXPIRY_INTERVAL)
        if expiry is not None:
            if session.expiry_interval == 0 and expiry != 0:
                raise ProtocolError("DISCONNECT sets a session expiry on a session that had none")
            session.expiry_interval = expiry
        if packet.reason_code != 0x04:  # 0x04: disconnect with will message
            self.will = None
        self._finish("normal")
        self.transport.close()


class _TopicAliasInvalid(ProtocolError):
    reason_code = ReasonCode.TOPIC_ALIAS_INVALID
