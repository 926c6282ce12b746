"""MQTT 3.1.1 and 5 packets, both ways: what clients send and what the broker sends.

Written for the emulator's broker, and used by the read side's subscriber
(`service.subscriber`) for the client's half. No library on PyPI offers a sans-I/O codec
for both protocol levels 4 and 5 (paho-mqtt is a client, amqtt speaks 3.1.1
only, mqttproto and mqtt5 speak 5 only), so the packet layouts of the two
specifications are written out here. Every decoder raises `MalformedPacket`
on input that breaks the specification; the connection that sent it is closed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PINGREQ",
    "PINGRESP",
    "PROPERTIES",
    "ConnAck",
    "Connect",
    "Disconnect",
    "MalformedPacket",
    "PacketFramer",
    "PacketId",
    "PacketTooLarge",
    "PacketType",
    "Prop",
    "PropertySpec",
    "ProtocolError",
    "Publish",
    "ReasonCode",
    "SubAck",
    "Subscribe",
    "Unsubscribe",
    "Will",
    "decode_connack",
    "decode_connect",
    "decode_disconnect",
    "decode_fixed_header",
    "decode_packet_id",
    "decode_publish",
    "decode_suback",
    "decode_subscribe",
    "decode_unsubscribe",
    "encode_ack",
    "encode_connack",
    "encode_connect",
    "encode_disconnect",
    "encode_properties",
    "encode_publish",
    "encode_suback",
    "encode_subscribe",
    "encode_unsuback",
    "encode_utf8",
    "encode_varint",
]


class PacketType:
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15

    NAMES = (
        "RESERVED", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP",
        "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT",
        "AUTH",
    )  # fmt: skip


class Prop:
    """MQTT 5 property identifiers (MQTT 5 section 2.2.2.2)."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class ReasonCode:
    """MQTT 5 reason codes the broker sends (MQTT 5 section 2.4); MQTT 3.1.1 CONNACK codes apart."""

    SUCCESS = 0x00
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_SHUTTING_DOWN = 0x8B
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    QUOTA_EXCEEDED = 0x97
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    # MQTT 3.1.1 CONNACK return codes (section 3.2.2.3) and its SUBACK failure.
    V3_UNACCEPTABLE_PROTOCOL_VERSION = 0x01
    V3_IDENTIFIER_REJECTED = 0x02
    V3_SERVER_UNAVAILABLE = 0x03
    V3_BAD_USER_NAME_OR_PASSWORD = 0x04
    V3_NOT_AUTHORIZED = 0x05
    V3_SUBSCRIBE_FAILURE = 0x80


@dataclass(frozen=True, slots=True)
class PropertySpec:
    """One MQTT 5 property: its wire type and the packets that may carry it.

    ``kind``: b byte, h uint16, i uint32, v varint, s UTF-8 string, d binary
    data, p UTF-8 string pair. ``packets``: packet names, ``WILL`` for the
    will properties of CONNECT.
    """

    name: str
    kind: str
    packets: frozenset[str]
    repeatable: bool = False


def _spec(name: str, kind: str, packets: str, repeatable: bool = False) -> PropertySpec:
    return PropertySpec(name, kind, frozenset(packets.split()), repeatable)


_ACKS = "PUBACK PUBREC PUBREL PUBCOMP SUBACK UNSUBACK"
_MESSAGE = "PUBLISH WILL"

# The one table of MQTT 5 properties (MQTT 5 table 2-4): everything below derives from it.
PROPERTIES: dict[int, PropertySpec] = {
    Prop.PAYLOAD_FORMAT_INDICATOR: _spec("PayloadFormatIndicator", "b", _MESSAGE),
    Prop.MESSAGE_EXPIRY_INTERVAL: _spec("MessageExpiryInterval", "i", _MESSAGE),
    Prop.CONTENT_TYPE: _spec("ContentType", "s", _MESSAGE),
    Prop.RESPONSE_TOPIC: _spec("ResponseTopic", "s", _MESSAGE),
    Prop.CORRELATION_DATA: _spec("CorrelationData", "d", _MESSAGE),
    Prop.SUBSCRIPTION_IDENTIFIER: _spec("SubscriptionIdentifier", "v", "PUBLISH SUBSCRIBE", repeatable=True),
    Prop.SESSION_EXPIRY_INTERVAL: _spec("SessionExpiryInterval", "i", "CONNECT CONNACK DISCONNECT"),
    Prop.ASSIGNED_CLIENT_IDENTIFIER: _spec("AssignedClientIdentifier", "s", "CONNACK"),
    Prop.SERVER_KEEP_ALIVE: _spec("ServerKeepAlive", "h", "CONNACK"),
    Prop.AUTHENTICATION_METHOD: _spec("AuthenticationMethod", "s", "CONNECT CONNACK AUTH"),
    Prop.AUTHENTICATION_DATA: _spec("AuthenticationData", "d", "CONNECT CONNACK AUTH"),
    Prop.REQUEST_PROBLEM_INFORMATION: _spec("RequestProblemInformation", "b", "CONNECT"),
    Prop.WILL_DELAY_INTERVAL: _spec("WillDelayInterval", "i", "WILL"),
    Prop.REQUEST_RESPONSE_INFORMATION: _spec("RequestResponseInformation", "b", "CONNECT"),
    Prop.RESPONSE_INFORMATION: _spec("ResponseInformation", "s", "CONNACK"),
    Prop.SERVER_REFERENCE: _spec("ServerReference", "s", "CONNACK DISCONNECT"),
    Prop.REASON_STRING: _spec("ReasonString", "s", f"CONNACK DISCONNECT AUTH {_ACKS}"),
    Prop.RECEIVE_MAXIMUM: _spec("ReceiveMaximum", "h", "CONNECT CONNACK"),
    Prop.TOPIC_ALIAS_MAXIMUM: _spec("TopicAliasMaximum", "h", "CONNECT CONNACK"),
    Prop.TOPIC_ALIAS: _spec("TopicAlias", "h", "PUBLISH"),
    Prop.MAXIMUM_QOS: _spec("MaximumQoS", "b", "CONNACK"),
    Prop.RETAIN_AVAILABLE: _spec("RetainAvailable", "b", "CONNACK"),
    Prop.USER_PROPERTY: _spec(
        "UserProperty", "p", f"CONNECT CONNACK PUBLISH WILL DISCONNECT AUTH SUBSCRIBE UNSUBSCRIBE {_ACKS}", True
    ),
    Prop.MAXIMUM_PACKET_SIZE: _spec("MaximumPacketSize", "i", "CONNECT CONNACK"),
    Prop.WILDCARD_SUBSCRIPTION_AVAILABLE: _spec("WildcardSubscriptionAvailable", "b", "CONNACK"),
    Prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE: _spec("SubscriptionIdentifierAvailable", "b", "CONNACK"),
    Prop.SHARED_SUBSCRIPTION_AVAILABLE: _spec("SharedSubscriptionAvailable", "b", "CONNACK"),
}


def _allowed_in(packet: str) -> frozenset[int]:
    return frozenset(prop_id for prop_id, spec in PROPERTIES.items() if packet in spec.packets)


_ALLOWED_IN_CONNECT = _allowed_in("CONNECT")
_ALLOWED_IN_WILL = _allowed_in("WILL")
_ALLOWED_IN_PUBLISH = _allowed_in("PUBLISH") - {Prop.SUBSCRIPTION_IDENTIFIER}  # only the server sends it
_ALLOWED_IN_ACK = _allowed_in("PUBACK")
_ALLOWED_IN_SUBSCRIBE = _allowed_in("SUBSCRIBE")
_ALLOWED_IN_UNSUBSCRIBE = _allowed_in("UNSUBSCRIBE")
_ALLOWED_IN_DISCONNECT = _allowed_in("DISCONNECT")
_ALLOWED_IN_CONNACK = _allowed_in("CONNACK")
_ALLOWED_IN_SUBACK = _allowed_in("SUBACK")

Properties = dict[int, Any]
"""Decoded properties: id -> value; repeatable ones (user property, subscription
identifier) -> list of values, user properties as (key, value) pairs in order."""


class MalformedPacket(ValueError):
    """A packet cannot be parsed as the specification says; its connection must be closed.

    Attributes:
        reason_code: the DISCONNECT reason code an MQTT 5 client is sent.
    """

    reason_code = ReasonCode.MALFORMED_PACKET


class PacketTooLarge(MalformedPacket):
    """A packet is larger than the receiver's Maximum Packet Size (MQTT 5 reason code 0x95)."""

    reason_code = ReasonCode.PACKET_TOO_LARGE


class ProtocolError(MalformedPacket):
    """A packet parses but breaks a rule of the protocol (MQTT 5 reason code 0x82)."""

    reason_code = ReasonCode.PROTOCOL_ERROR


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties = field(default_factory=dict)


@dataclass(slots=True)
class Connect:
    protocol_level: int
    clean_start: bool
    keepalive: int
    client_id: str
    will: Will | None
    username: str | None
    password: bytes | None
    properties: Properties


@dataclass(slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int
    properties: Properties


@dataclass(slots=True)
class Subscribe:
    packet_id: int
    # (topic filter, options byte): qos in bits 0-1, no local bit 2, retain as
    # published bit 3, retain handling bits 4-5.
    filters: list[tuple[str, int]]
    properties: Properties


@dataclass(slots=True)
class Unsubscribe:
    packet_id: int
    filters: list[str]
    properties: Properties


@dataclass(slots=True)
class PacketId:
    """PUBACK, PUBREC, PUBREL or PUBCOMP."""

    packet_id: int
    reason_code: int
    properties: Properties


@dataclass(slots=True)
class ConnAck:
    session_present: bool
    reason_code: int  # MQTT 3.1.1: the return code
    properties: Properties


@dataclass(slots=True)
class SubAck:
    packet_id: int
    reason_codes: list[int]  # granted QoS, or a failure code (0x80 and up)
    properties: Properties


@dataclass(slots=True)
class Disconnect:
    reason_code: int
    properties: Properties


class _Reader:
    """Reads MQTT data types from one packet body, raising MalformedPacket past its end."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise MalformedPacket("packet ends in the middle of a field")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise MalformedPacket("packet ends in the middle of a field")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uint16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def uint32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def varint(self) -> int:
        value = 0
        for shift in (0, 7, 14, 21):
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise MalformedPacket("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.uint16())

    def utf8(self) -> str:
        raw = self.take(self.uint16())
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPacket("string is not valid UTF-8") from exc
        if "\x00" in text:
            raise MalformedPacket("string contains U+0000")
        return text

    def properties(self, allowed: frozenset[int]) -> Properties:
        length = self.varint()
        end = self.pos + length
        if end > len(self.data):
            raise MalformedPacket("property length runs past the end of the packet")
        props: Properties = {}
        while self.pos < end:
            prop_id = self.varint()
            spec = PROPERTIES.get(prop_id)
            if spec is None or prop_id not in allowed:
                raise ProtocolError(f"property 0x{prop_id:02X} is not allowed here")
            kind = spec.kind
            if kind == "b":
                value: Any = self.byte()
            elif kind == "h":
                value = self.uint16()
            elif kind == "i":
                value = self.uint32()
            elif kind == "v":
                value = self.varint()
            elif kind == "s":
                value = self.utf8()
            elif kind == "d":
                value = self.binary()
            else:
                value = (self.utf8(), self.utf8())
            if spec.repeatable:
                props.setdefault(prop_id, []).append(value)
            elif prop_id in props:
                raise ProtocolError(f"property {spec.name} appears twice")
            else:
                props[prop_id] = value
        if self.pos != end:
            raise MalformedPacket("property length does not match its properties")
        return props

    def end(self) -> None:
        if self.pos != len(self.data):
            raise MalformedPacket("packet has bytes past its last field")


def decode_fixed_header(buffer: bytes | bytearray, start: int) -> tuple[int, int, int] | None:
    """Reads one fixed header at ``start``.

    Returns:
        (first byte, remaining length, offset of the body), or None when the
        buffer does not yet hold the whole header.
    """
    value = 0
    pos = start + 1
    for shift in (0, 7, 14, 21):
        if pos >= len(buffer):
            return None
        byte = buffer[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return buffer[start], value, pos
    raise MalformedPacket("remaining length longer than 4 bytes")


class PacketFramer:
    """Cuts whole packets out of a byte stream, however it arrives in pieces (sans-I/O).

    Args:
        max_packet_size: the largest packet accepted, fixed header included; 0 for no limit.
    """

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_packet_size: int = 0) -> None:
        self._buffer = bytearray()
        self._max = max_packet_size

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes, int]]:
        """Adds ``data``; yields (first byte, body, packet size) for each packet now whole.

        Raises:
            PacketTooLarge: a packet's header announces more than ``max_packet_size``
                (before its body arrives).
            MalformedPacket: a remaining length longer than 4 bytes.
        """
        buffer = self._buffer
        buffer += data
        start = 0
        try:
            while (header := decode_fixed_header(buffer, start)) is not None:
                first, length, body_start = header
                end = body_start + length
                if self._max and end - start > self._max:
                    raise PacketTooLarge(
                        f"a {PacketType.NAMES[first >> 4]} of {end - start} bytes, over the Maximum Packet Size "
                        f"of {self._max}"
                    )
                if end > len(buffer):
                    return
                body = bytes(buffer[body_start:end])
                size, start = end - start, end
                yield first, body, size
        finally:
            del buffer[:start]


def decode_connect(body: bytes) -> Connect:
    reader = _Reader(body)
    name = reader.utf8()
    level = reader.byte()
    if (name, level) not in (("MQTT", 4), ("MQTT", 5), ("MQIsdp", 3)):
        # Caller answers with "unacceptable protocol version".
        raise UnsupportedProtocol(level)
    flags = reader.byte()
    if flags & 0x01:
        raise MalformedPacket("CONNECT reserved flag is set")
    keepalive = reader.uint16()
    properties = reader.properties(_ALLOWED_IN_CONNECT) if level == 5 else {}
    client_id = reader.utf8()
    will = None
    will_qos = (flags >> 3) & 0x03
    if flags & 0x04:
        if will_qos == 3:
            raise MalformedPacket("will QoS 3")
        will_props = reader.properties(_ALLOWED_IN_WILL) if level == 5 else {}
        will_topic = reader.utf8()
        if not will_topic or "+" in will_topic or "#" in will_topic:
            raise MalformedPacket("will topic is not a valid topic name")
        will = Will(will_topic, reader.binary(), will_qos, bool(flags & 0x20), will_props)
    elif will_qos or flags & 0x20:
        raise MalformedPacket("will QoS or retain set without a will")
    username = reader.utf8() if flags & 0x80 else None
    password = reader.binary() if flags & 0x40 else None
    if password is not None and username is None and level < 5:
        raise MalformedPacket("password without username")
    reader.end()
    return Connect(level, bool(flags & 0x02), keepalive, client_id, will, username, password, properties)


class UnsupportedProtocol(MalformedPacket):
    """CONNECT names a protocol level this broker does not speak."""

    def __init__(self, level: int) -> None:
        super().__init__(f"unsupported protocol level {level}")
        self.level = level


def decode_publish(first: int, body: bytes, level: int) -> Publish:
    qos = (first >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    dup = bool(first & 0x08)
    if dup and qos == 0:
        raise MalformedPacket("PUBLISH with DUP set at QoS 0")
    reader = _Reader(body)
    topic = reader.utf8()
    if "+" in topic or "#" in topic:
        raise MalformedPacket("PUBLISH topic contains a wildcard")
    packet_id = 0
    if qos:
        packet_id = reader.uint16()
        if packet_id == 0:
            raise MalformedPacket("packet identifier 0")
    properties = reader.properties(_ALLOWED_IN_PUBLISH) if level == 5 else {}
    payload = body[reader.pos :]
    if properties.get(Prop.PAYLOAD_FORMAT_INDICATOR) == 1:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPacket("payload format indicator 1 but payload is not UTF-8") from exc
    return Publish(topic, bytes(payload), qos, bool(first & 0x01), dup, packet_id, properties)


def decode_packet_id(body: bytes, level: int) -> PacketId:
    """Decodes PUBACK, PUBREC, PUBREL and PUBCOMP."""
    reader = _Reader(body)
    packet_id = reader.uint16()
    reason = 0
    props: Properties = {}
    if level == 5 and reader.remaining():
        reason = reader.byte()
        if reader.remaining():
            props = reader.properties(_ALLOWED_IN_ACK)
    reader.end()
    return PacketId(packet_id, reason, props)


def decode_subscribe(body: bytes, level: int) -> Subscribe:
    reader = _Reader(body)
    packet_id = reader.uint16()
    if packet_id == 0:
        raise MalformedPacket("packet identifier 0")
    props = reader.properties(_ALLOWED_IN_SUBSCRIBE) if level == 5 else {}
    filters = []
    while reader.remaining():
        topic_filter = reader.utf8()
        options = reader.byte()
        if options & 0x03 == 3 or options & (0xC0 if level == 5 else 0xFC):
            raise MalformedPacket("SUBSCRIBE options have reserved bits set or QoS 3")
        if (options >> 4) & 0x03 == 3:
            raise MalformedPacket("retain handling 3")
        filters.append((topic_filter, options))
    if not filters:
        raise MalformedPacket("SUBSCRIBE without a topic filter")
    return Subscribe(packet_id, filters, props)


def decode_unsubscribe(body: bytes, level: int) -> Unsubscribe:
    reader = _Reader(body)
    packet_id = reader.uint16()
    if packet_id == 0:
        raise MalformedPacket("packet identifier 0")
    props = reader.properties(_ALLOWED_IN_UNSUBSCRIBE) if level == 5 else {}
    filters = []
    while reader.remaining():
        filters.append(reader.utf8())
    if not filters:
        raise MalformedPacket("UNSUBSCRIBE without a topic filter")
    return Unsubscribe(packet_id, filters, props)


def decode_disconnect(body: bytes, level: int) -> Disconnect:
    if level < 5:
        if body:
            raise MalformedPacket("DISCONNECT has a body")
        return Disconnect(0, {})
    reader = _Reader(body)
    reason = reader.byte() if reader.remaining() else 0
    props = reader.properties(_ALLOWED_IN_DISCONNECT) if reader.remaining() else {}
    reader.end()
    return Disconnect(reason, props)


def decode_connack(body: bytes, level: int) -> ConnAck:
    reader = _Reader(body)
    flags = reader.byte()
    if flags & 0xFE:
        raise MalformedPacket("CONNACK reserved flags are set")
    reason = reader.byte()
    props = reader.properties(_ALLOWED_IN_CONNACK) if level == 5 and reader.remaining() else {}
    reader.end()
    return ConnAck(bool(flags & 0x01), reason, props)


def decode_suback(body: bytes, level: int) -> SubAck:
    reader = _Reader(body)
    packet_id = reader.uint16()
    props = reader.properties(_ALLOWED_IN_SUBACK) if level == 5 else {}
    codes = list(body[reader.pos :])
    if not codes:
        raise MalformedPacket("SUBACK without a reason code")
    return SubAck(packet_id, codes, props)


# -- encoding -----------------------------------------------------------------

_UINT16 = struct.Struct(">H")


def encode_varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _UINT16.pack(len(raw)) + raw


def _binary(data: bytes) -> bytes:
    return _UINT16.pack(len(data)) + data


def encode_properties(props: Properties) -> bytes:
    out = bytearray()
    for prop_id, value in props.items():
        spec = PROPERTIES[prop_id]
        kind = spec.kind
        values = value if spec.repeatable else (value,)
        for item in values:
            out += encode_varint(prop_id)
            if kind == "b":
                out.append(item)
            elif kind == "h":
                out += _UINT16.pack(item)
            elif kind == "i":
                out += item.to_bytes(4, "big")
            elif kind == "v":
                out += encode_varint(item)
            elif kind == "s":
                out += _utf8(item)
            elif kind == "d":
                out += _binary(item)
            else:
                out += _utf8(item[0]) + _utf8(item[1])
    return encode_varint(len(out)) + bytes(out)


_EMPTY_PROPERTIES = b"\x00"


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def encode_connack(session_present: bool, reason_code: int, level: int, props: Properties) -> bytes:
    body = bytes((int(session_present), reason_code))
    if level == 5:
        body += encode_properties(props)
    return _packet(0x20, body)


def encode_publish(
    topic_bytes: bytes,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int,
    level: int,
    props: Properties | None,
) -> bytes:
    """Encodes one PUBLISH; ``topic_bytes`` is the topic already length-prefixed."""
    parts = [topic_bytes]
    if qos:
        parts.append(_UINT16.pack(packet_id))
    if level == 5:
        parts.append(encode_properties(props) if props else _EMPTY_PROPERTIES)
    parts.append(payload)
    body = b"".join(parts)
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    return bytes((first,)) + encode_varint(len(body)) + body


def encode_utf8(text: str) -> bytes:
    """A length-prefixed UTF-8 string, as topics are written in PUBLISH."""
    return _utf8(text)


def encode_ack(
    packet_type: int, packet_id: int, reason_code: int, level: int, props: Properties | None = None
) -> bytes:
    """Encodes PUBACK, PUBREC, PUBREL, PUBCOMP (MQTT 5: with a reason code and properties when needed)."""
    first = (packet_type << 4) | (0x02 if packet_type == PacketType.PUBREL else 0)
    body = _UINT16.pack(packet_id)
    if level == 5 and (reason_code or props):
        body += bytes((reason_code,))
        if props:
            body += encode_properties(props)
    return _packet(first, body)


def encode_suback(packet_id: int, codes: list[int], level: int, props: Properties | None = None) -> bytes:
    header = _UINT16.pack(packet_id)
    if level == 5:
        header += encode_properties(props) if props else _EMPTY_PROPERTIES
    return _packet(0x90, header + bytes(codes))


def encode_unsuback(packet_id: int, codes: list[int], level: int, props: Properties | None = None) -> bytes:
    if level == 5:
        properties = encode_properties(props) if props else _EMPTY_PROPERTIES
        return _packet(0xB0, _UINT16.pack(packet_id) + properties + bytes(codes))
    return _packet(0xB0, _UINT16.pack(packet_id))


def encode_disconnect(reason_code: int, props: Properties | None = None) -> bytes:
    """MQTT 5 DISCONNECT sent by the server."""
    return _packet(0xE0, bytes((reason_code,)) + encode_properties(props or {}))


PINGRESP = b"\xd0\x00"


# -- client side (the read side's subscriber, simulated devices, fuzzing) ------


def encode_connect(
    client_id: str,
    *,
    clean: bool = True,
    keepalive: int = 60,
    username: str | None = None,
    password: str | bytes | None = None,
    level: int = 4,
    properties: Properties | None = None,
) -> bytes:
    """A CONNECT without a will: MQTT 3.1.1 (``level`` 4) or 5 (with ``properties``)."""
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _utf8("MQTT") + bytes((level, flags)) + _UINT16.pack(keepalive)
    if level == 5:
        body += encode_properties(properties or {})
    body += _utf8(client_id)
    if username is not None:
        body += _utf8(username)
    if password is not None:
        body += _binary(password.encode() if isinstance(password, str) else password)
    return _packet(0x10, body)


def encode_subscribe(
    packet_id: int, filters: list[tuple[str, int]], level: int = 4, properties: Properties | None = None
) -> bytes:
    """A SUBSCRIBE of (topic filter, options) pairs; under MQTT 3.1.1 the options are just the QoS."""
    body = _UINT16.pack(packet_id)
    if level == 5:
        body += encode_properties(properties or {})
    body += b"".join(_utf8(topic_filter) + bytes((options,)) for topic_filter, options in filters)
    return _packet(0x82, body)


PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"
