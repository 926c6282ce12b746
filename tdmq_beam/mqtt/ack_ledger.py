"""`AckLedger`: what a subscriber received, handed out and owes the broker, with no I/O.

The read side acknowledges a message only once the runner has committed it,
so between a PUBLISH arriving and its PUBACK (QoS 1) or PUBREC (QoS 2) going
out, the message is in this ledger. The rules it keeps, from MQTT 5 section
4.4 and 4.3.3:

- A packet identifier names a message on one network connection only. When
  a connection ends, whatever it delivered and was not acknowledged belongs
  to the broker again, which sends it anew (flagged DUP) on the next
  connection. So the ledger's state is per connection (a *generation*),
  and an acknowledgement naming an ended generation acknowledges nothing.
- A QoS 2 message whose PUBREC went out is the client's: what is left is the
  broker's PUBREL and our PUBCOMP. That part is session state (the broker
  sends PUBREL again after a reconnect), so it outlives a connection, and a
  subscriber that closes waits for it (`owes_completion`).
- Topic aliases the broker assigns (MQTT 5 section 3.3.2.3.4) are per
  connection too.

Packets in (`receive`, `release`), acknowledgement bytes out (`acknowledge`,
the PUBCOMP that `release` returns), and the redelivery decision
(`resumes`): the session in `tdmq_beam.service.subscriber` does the I/O.

Threads: the network thread calls `connection_opened`, `connection_closed`,
`receive`, `release` and `acknowledge`; the reader's thread calls
`hand_out`, `resumes` and `oldest_ready_time`. The queue between them is a
deque (append and popleft are atomic); a delivery of a connection that ended
meanwhile is skipped, not handed out.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from tdmq_beam.mqtt import codec
from tdmq_beam.mqtt.codec import PacketType, Prop, ProtocolError

__all__ = ["AckLedger", "Acknowledgements", "Delivery"]


class Delivery(NamedTuple):
    """A message received, with where it stands in its session."""

    generation: str  # the connection it came on
    sequence: int  # its place among every message the session received
    packet: codec.Publish
    receive_time: float  # Unix seconds


class _Unacked(NamedTuple):
    sequence: int
    packet_id: int
    qos: int
    received: float  # monotonic seconds


@dataclass
class Acknowledgements:
    """What one `AckLedger.acknowledge` call owes the broker.

    Attributes:
        data: the PUBACK and PUBREC packets, in the order the messages came.
        count: how many messages they acknowledge.
        delays_ms: for each, milliseconds from its arrival to now.
        stale: the mark named an ended connection, so nothing was
            acknowledged (the broker sends those messages again).
    """

    data: bytes = b""
    count: int = 0
    delays_ms: list[int] = field(default_factory=list)
    stale: bool = False


class AckLedger:
    """The acknowledgement bookkeeping of one persistent MQTT session.

    Args:
        level: the protocol level, 5 or 4 (MQTT 3.1.1): it shapes the acknowledgement packets.
        topic_alias_maximum: the Topic Alias Maximum the client sent in CONNECT
            (aliases above it are a protocol error). Defaults to 0 (none allowed).
    """

    def __init__(self, level: int, *, topic_alias_maximum: int = 0) -> None:
        self.level = level
        self.topic_alias_maximum = topic_alias_maximum
        self.generation = ""  # the live connection's name; "" between connections
        self.handed_out = 0  # sequence of the last message handed out
        self._sequence = 0  # of the last message received
        self._opened_at = 0  # `_sequence` when the live connection opened
        self._ready: collections.deque[Delivery] = collections.deque()
        self._unacked: collections.deque[_Unacked] = collections.deque()
        self._aliases: dict[int, str] = {}
        self._completing: set[int] = set()  # QoS 2 packet ids whose PUBREC went out, PUBREL to come
        # Payload bytes queued and handed out, in all: each written by one thread only (see the
        # module docstring), so their difference is what waits, with no lock.
        self._bytes_in = 0
        self.bytes_handed_out = 0

    # -- connections -------------------------------------------------------------------

    def connection_opened(self, generation: str) -> None:
        """A new network connection, named ``generation``, delivers from now on."""
        self.connection_closed()
        self.generation = generation

    def connection_closed(self) -> None:
        """The live connection ended: what it delivered and was not acknowledged is the broker's again."""
        self.generation = ""
        self._opened_at = self._sequence  # what is handed out from here on came on a new connection
        self._ready.clear()
        self._unacked.clear()
        self._aliases.clear()
        self._bytes_in = self.bytes_handed_out  # what was queued is the broker's again

    # -- packets in --------------------------------------------------------------------

    def receive(
        self, packet: codec.Publish, now: float, wall_time: float, *, expected: Callable[[str], bool] | None = None
    ) -> Delivery | None:
        """Takes a PUBLISH of the live connection and queues it to be handed out.

        Args:
            packet: the decoded PUBLISH; a topic alias is resolved in place
                (and the alias property removed).
            now: monotonic seconds, for acknowledgement delays.
            wall_time: Unix seconds, the message's receive time.
            expected: whether the session subscribed to the (resolved) topic; a message
                it did not is never handed out, and is acknowledged with the next one
                that is (it keeps its place in the order). Defaults to every topic.

        Returns:
            The delivery queued, or None for a message not expected.

        Raises:
            ProtocolError: an alias out of range or never defined, or a PUBLISH with no topic.
        """
        if not self.generation:
            raise ProtocolError("PUBLISH outside a connection")
        alias = packet.properties.pop(Prop.TOPIC_ALIAS, None) if self.level == 5 else None
        if alias is not None:
            if not 0 < alias <= self.topic_alias_maximum:
                raise ProtocolError(f"topic alias {alias} outside 1..{self.topic_alias_maximum}")
            if packet.topic:
                self._aliases[alias] = packet.topic
            elif (topic := self._aliases.get(alias)) is not None:
                packet.topic = topic
            else:
                raise ProtocolError(f"topic alias {alias} was never defined on this connection")
        elif not packet.topic:
            raise ProtocolError("PUBLISH without a topic name or alias")
        self._sequence += 1
        if packet.qos:
            # A QoS 2 message sent again after a reconnect: our PUBREC never reached the
            # broker, so it is a new delivery to commit, not one to complete.
            self._completing.discard(packet.packet_id)
            self._unacked.append(_Unacked(self._sequence, packet.packet_id, packet.qos, now))
        if expected is not None and not expected(packet.topic):
            return None
        delivery = Delivery(self.generation, self._sequence, packet, wall_time)
        self._ready.append(delivery)
        self._bytes_in += len(packet.payload)
        return delivery

    def release(self, packet_id: int) -> bytes:
        """The broker's PUBREL for a QoS 2 message: returns the PUBCOMP to send.

        Always a success: a PUBREC goes out only after the commit, so the message
        is the reader's whether or not this connection sent that PUBREC.
        """
        self._completing.discard(packet_id)
        return codec.encode_ack(PacketType.PUBCOMP, packet_id, 0, self.level)

    # -- the reader's side -------------------------------------------------------------

    def hand_out(self) -> Delivery | None:
        """The next message received and not handed out yet, or None."""
        ready = self._ready
        while ready:
            try:
                delivery = ready.popleft()
            except IndexError:  # cleared by the network thread meanwhile
                return None
            if delivery.generation == self.generation:
                self.handed_out = delivery.sequence
                self.bytes_handed_out += len(delivery.packet.payload)
                return delivery
        return None

    @property
    def ready(self) -> int:
        """Messages received and not handed out yet."""
        return len(self._ready)

    @property
    def ready_bytes(self) -> int:
        """Payload bytes of the messages received and not handed out yet."""
        return self._bytes_in - self.bytes_handed_out

    def oldest_ready_time(self) -> float | None:
        """Receive time (Unix seconds) of the oldest message not handed out yet, or None."""
        try:
            return self._ready[0].receive_time
        except IndexError:
            return None

    def resumes(self, generation: str, sequence: int) -> bool:
        """Whether a reader may go on from a mark without the broker sending anything again.

        It may when the mark is exactly where the live connection stands, or
        when nothing the live connection delivered has been handed out yet:
        then everything after the mark is unacknowledged at the broker and
        comes on this connection anyway. Otherwise messages after the mark
        were handed out (to a bundle that failed) and only a new connection
        brings them again.

        Args:
            generation, sequence: the mark (``""``, 0 for a reader's first start).
        """
        if self.handed_out <= self._opened_at:
            return True
        return generation == self.generation and sequence == self.handed_out

    # -- acknowledgements out ----------------------------------------------------------

    def acknowledge(self, generation: str, sequence: int, now: float) -> Acknowledgements:
        """Acknowledges, in the order received, every message of ``generation`` up to ``sequence``.

        Only messages of the live connection that were handed out are
        acknowledged: a packet id of an ended connection means nothing on this one.
        """
        if not generation or generation != self.generation:
            return Acknowledgements(stale=bool(generation))
        through = min(sequence, self.handed_out)
        unacked = self._unacked
        packets: list[bytes] = []
        delays: list[int] = []
        level = self.level
        while unacked and unacked[0].sequence <= through:
            entry = unacked.popleft()
            if entry.qos == 2:
                self._completing.add(entry.packet_id)
                packets.append(codec.encode_ack(PacketType.PUBREC, entry.packet_id, 0, level))
            else:
                packets.append(codec.encode_ack(PacketType.PUBACK, entry.packet_id, 0, level))
            delays.append(int((now - entry.received) * 1000))
        return Acknowledgements(b"".join(packets), len(packets), delays)

    @property
    def owes_completion(self) -> bool:
        """Whether QoS 2 messages wait for the broker's PUBREL (a closing subscriber waits for them)."""
        return bool(self._completing)

    @property
    def unacknowledged(self) -> int:
        """Messages of the live connection not acknowledged yet."""
        return len(self._unacked)
