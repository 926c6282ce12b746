"""MQTT peers for tests: a paho-mqtt client wrapper and a raw-socket client for low-level cases."""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT = 10.0


class PahoClient:
    """A paho-mqtt client on its own network thread, with blocking helpers."""

    def __init__(
        self,
        port: int,
        client_id: str = "",
        *,
        protocol: int = 5,
        username: str | None = "user0",
        password: str | None = "secret0",
        clean: bool = True,
        session_expiry: int | None = None,
        keepalive: int = 60,
        will: tuple[str, bytes, int, bool] | None = None,
        websocket: bool = False,
    ) -> None:
        self.port = port
        self.protocol = protocol
        self.clean = clean
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311,
            clean_session=None if protocol == 5 else clean,
            transport="websockets" if websocket else "tcp",
        )
        if websocket:
            self.client.ws_set_options(path="/mqtt")
        # paho 2.x does not honour the broker's Receive Maximum (and cannot change its window once
        # connected): past it a broker rightly disconnects with 0x93. 16 is the emulator's (the
        # service's), the smallest of the brokers here.
        self.client.max_inflight_messages_set(16)
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(*will)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[tuple] = queue.Queue()
        self.subacks: queue.Queue[list] = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connack.put((flags, rc, props))
        self.client.on_message = lambda c, u, message: self.messages.put(message)
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.subacks.put(codes)
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)

    def connect(self) -> tuple:
        """Connects; returns (flags, reason code, properties) of the CONNACK."""
        props = None
        if self.protocol == 5 and self.session_expiry is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry
        self.client.connect(
            "127.0.0.1",
            self.port,
            keepalive=self.keepalive,
            clean_start=self.clean if self.protocol == 5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self.client.loop_start()
        return self.connack.get(timeout=WAIT)

    def subscribe(self, topic_filter: str, qos: int = 0, **options) -> list:
        if self.protocol == 5:
            opts = mqtt.SubscribeOptions(qos=qos, **options)
            self.client.subscribe(topic_filter, options=opts)
        else:
            self.client.subscribe(topic_filter, qos)
        return [getattr(code, "value", code) for code in self.subacks.get(timeout=WAIT)]

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, properties=None) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout=WAIT)

    def receive(self, count: int = 1, timeout: float = WAIT) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < count:
            out.append(self.messages.get(timeout=max(0.01, deadline - time.monotonic())))
        return out

    def nothing_more(self, wait: float = 0.5) -> bool:
        try:
            self.messages.get(timeout=wait)
        except queue.Empty:
            return True
        return False

    def disconnect(self, properties=None) -> None:
        self.client.disconnect(properties=properties)
        self.client.loop_stop()

    def drop(self) -> None:
        """Closes the socket without DISCONNECT, as a crashed device would."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


# -- a raw client, for what paho does not let a test do ---------------------------


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    clean: bool = True,
    keepalive: int = 60,
    username: str | None = "user0",
    password: str | None = "secret0",
    will: tuple[str, bytes] | None = None,
) -> bytes:
    """An MQTT 3.1.1 CONNECT."""
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    payload = _utf8(client_id)
    if will is not None:
        flags |= 0x04
        payload += _utf8(will[0]) + struct.pack(">H", len(will[1])) + will[1]
    if username is not None:
        payload += _utf8(username)
    if password is not None:
        payload += _utf8(password)
    return packet(0x10, _utf8("MQTT") + bytes((4, flags)) + struct.pack(">H", keepalive) + payload)


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    return packet(0x82, struct.pack(">H", packet_id) + _utf8(topic_filter) + bytes((qos,)))


@dataclass
class RawPacket:
    first: int
    body: bytes

    @property
    def type(self) -> int:
        return self.first >> 4


class RawClient:
    """A blocking socket speaking bytes; reads whole packets."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.buffer = b""
        self._lock = threading.Lock()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, timeout: float = WAIT) -> RawPacket | None:
        """The next packet, or None when the server closed the connection."""
        self.sock.settimeout(timeout)
        while True:
            if len(self.buffer) >= 2:
                length, shift, pos = 0, 0, 1
                while pos < len(self.buffer):
                    byte = self.buffer[pos]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    pos += 1
                    if not byte & 0x80:
                        if len(self.buffer) >= pos + length:
                            first, body = self.buffer[0], self.buffer[pos : pos + length]
                            self.buffer = self.buffer[pos + length :]
                            return RawPacket(first, body)
                        break
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk

    def quiet(self, wait: float = 0.5) -> bool:
        """Whether nothing arrives (and the connection stays open) for ``wait`` seconds."""
        try:
            self.read(timeout=wait)  # a packet, or the server closing: not quiet
        except TimeoutError:
            return True
        return False

    def closed_by_server(self, timeout: float = WAIT) -> bool:
        """Whether the server closes the connection (reading and dropping packets) within ``timeout``."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.read(timeout=max(0.01, deadline - time.monotonic())) is None:
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return False

    def close(self) -> None:
        self.sock.close()


# -- MQTT 5 on raw sockets: properties packed and read by paho, not by the code under test ----------


def properties(packet_type: int, **values) -> Properties:
    props = Properties(packet_type)
    for name, value in values.items():
        if name == "UserProperty":
            for pair in value:
                props.UserProperty = pair
        else:
            setattr(props, name, value)
    return props


def connect5_packet(
    client_id: str,
    *,
    clean: bool = True,
    keepalive: int = 60,
    username: str | None = "user0",
    password: str | None = "secret0",
    will: tuple[str, bytes, dict] | None = None,
    **props,
) -> bytes:
    """An MQTT 5 CONNECT; ``props`` are CONNECT properties by paho's names, ``will`` (topic, payload, properties)."""
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    payload = _utf8(client_id)
    if will is not None:
        flags |= 0x04
        topic, body, will_props = will
        payload += properties(PacketTypes.WILLMESSAGE, **will_props).pack() + _utf8(topic)
        payload += struct.pack(">H", len(body)) + body
    if username is not None:
        payload += _utf8(username)
    if password is not None:
        payload += _utf8(password)
    header = _utf8("MQTT") + bytes((5, flags)) + struct.pack(">H", keepalive)
    return packet(0x10, header + properties(PacketTypes.CONNECT, **props).pack() + payload)


def subscribe5_packet(packet_id: int, filters: list[tuple[str, int]], **props) -> bytes:
    """An MQTT 5 SUBSCRIBE of (topic filter, options byte) pairs."""
    body = struct.pack(">H", packet_id) + properties(PacketTypes.SUBSCRIBE, **props).pack()
    body += b"".join(_utf8(topic_filter) + bytes((options,)) for topic_filter, options in filters)
    return packet(0x82, body)


def publish5_packet(topic: str, payload: bytes, *, qos: int = 0, packet_id: int = 0, retain: bool = False, **props):
    body = _utf8(topic) + (struct.pack(">H", packet_id) if qos else b"")
    body += properties(PacketTypes.PUBLISH, **props).pack() + payload
    return packet(0x30 | (qos << 1) | int(retain), body)


def ack_packet(packet_type: int, packet_id: int) -> bytes:
    """PUBACK (4), PUBREC (5), PUBREL (6) or PUBCOMP (7)."""
    return packet((packet_type << 4) | (0x02 if packet_type == 6 else 0), struct.pack(">H", packet_id))


@dataclass
class Publish5:
    topic: str
    packet_id: int
    qos: int
    dup: bool
    retain: bool
    properties: Properties
    payload: bytes


def read_publish5(raw: RawPacket) -> Publish5:
    """Reads an MQTT 5 PUBLISH the broker sent, with paho's property reader."""
    assert raw.type == 3, f"expected PUBLISH, got packet type {raw.type}"
    body = raw.body
    (length,) = struct.unpack(">H", body[:2])
    topic = body[2 : 2 + length].decode()
    pos = 2 + length
    qos = (raw.first >> 1) & 3
    packet_id = 0
    if qos:
        (packet_id,) = struct.unpack(">H", body[pos : pos + 2])
        pos += 2
    props = Properties(PacketTypes.PUBLISH)
    _, used = props.unpack(body[pos:])
    return Publish5(topic, packet_id, qos, bool(raw.first & 0x08), bool(raw.first & 0x01), props, body[pos + used :])


def read_reason(raw: RawPacket, packet_type: int, offset: int) -> tuple[int, Properties]:
    """The reason code at ``offset`` of a packet's body and the properties after it."""
    props = Properties(packet_type)
    if len(raw.body) > offset + 1:
        props.unpack(raw.body[offset + 1 :])
    return raw.body[offset], props
