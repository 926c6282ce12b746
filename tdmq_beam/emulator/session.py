"""What the broker keeps for a client: deliveries, sessions, and the connection a session talks through.

The broker never imports the MQTT server: it talks to a live connection through
the small `ClientConnection` protocol, so the transport (TCP, TLS, WebSocket)
stays the server's business.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from tdmq_beam.emulator.message import Message
from tdmq_beam.emulator.message_queue import MessageQueue
from tdmq_beam.emulator.subscription_tree import SharedGroup, Subscription
from tdmq_beam.mqtt.codec import PacketType, Will

__all__ = ["NEVER_EXPIRES", "ClientConnection", "Delivery", "Inflight", "Session", "now_ms"]

NEVER_EXPIRES = 0xFFFFFFFF
"""Session expiry interval of a session that never expires (MQTT 3.x clean session 0)."""


def now_ms() -> int:
    return int(time.time() * 1000)


class ClientConnection(Protocol):
    """What the broker needs of a live MQTT connection."""

    level: int
    """Protocol level: 3 or 4 (MQTT 3.x) or 5."""
    connect_keepalive: int
    """The keep-alive the client asked for in CONNECT."""

    def send(self, packet: bytes) -> None:
        """Writes one encoded packet."""

    def close(self, reason: str, reason_code: int | None = None, reason_string: str | None = None) -> None:
        """Closes from the server's side (MQTT 5: DISCONNECT with ``reason_code`` first)."""

    def set_keepalive(self, seconds: int) -> None:
        """Enforces a new keep-alive at once."""

    def buffered_bytes(self) -> int:
        """Bytes written and not yet sent."""


@dataclass(slots=True)
class Delivery:
    """A message on its way to one session, at the QoS that session gets it.

    Attributes:
        group: the shared subscription group it came through, or None.
    """

    message: Message
    qos: int
    retain: bool
    identifiers: list[int]
    group: SharedGroup | None = None

    @property
    def payload_size(self) -> int:
        return len(self.message.payload)


@dataclass(slots=True)
class Inflight:
    """An unacknowledged outgoing QoS 1/2 message."""

    delivery: Delivery
    released: bool = False  # QoS 2: PUBREC received, PUBREL sent, waiting for PUBCOMP
    sent_at: float = 0.0  # loop time of the last send, for resending while connected


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
    connection: ClientConnection | None = None
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    groups: list[SharedGroup] = field(default_factory=list)
    queue: MessageQueue[Delivery] = field(default_factory=MessageQueue)
    inflight: dict[int, Inflight] = field(default_factory=dict)
    awaiting_release: set[int] = field(default_factory=set)
    # Limits of the current connection (MQTT 5 CONNECT properties).
    window: int = 16
    max_packet_size: int = 0
    alias_maximum: int = 0
    aliases: dict[str, int] = field(default_factory=dict)
    next_packet_id: int = 1
    # (direction, packet type, qos) -> count; direction "in" = server to client.
    packet_counts: dict[tuple[str, int, int], int] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    expiry_handle: asyncio.TimerHandle | None = None
    resend_handle: asyncio.TimerHandle | None = None
    delayed_will: tuple[Will, asyncio.TimerHandle] | None = None

    def count(self, direction: str, first_byte: int, size: int) -> None:
        key = (direction, first_byte >> 4, (first_byte >> 1) & 0x03)
        self.packet_counts[key] = self.packet_counts.get(key, 0) + 1
        if direction == "in":
            self.bytes_in += size
        else:
            self.bytes_out += size

    def state(self) -> dict[str, Any]:
        """What the session holds, for tests: ``connected``, ``delivered`` (PUBLISH packets sent
        to it), ``unacknowledged`` (in flight) and ``queued`` (waiting to be sent)."""
        return {
            "connected": self.connection is not None,
            "delivered": sum(
                n for (way, kind, _), n in self.packet_counts.items() if (way, kind) == ("in", PacketType.PUBLISH)
            ),
            "unacknowledged": len(self.inflight),
            "queued": len(self.queue),
        }

    def allocate_packet_id(self) -> int:
        packet_id = self.next_packet_id
        while packet_id in self.inflight:
            packet_id = packet_id % 65535 + 1
        self.next_packet_id = packet_id % 65535 + 1
        return packet_id

    def has_room(self) -> bool:
        """Connected, with room in its in-flight window and nothing of its own waiting."""
        return self.connection is not None and len(self.inflight) < self.window and not self.queue
