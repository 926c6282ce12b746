"""A scripted malicious MQTT broker on loopback, for the reader's hostile-peer tests.

It answers CONNECT with a scripted CONNACK and SUBSCRIBE with a SUBACK followed,
in the same write, by scripted packets (the case where a malformed packet
arrives in the same read as the SUBACK); it answers PINGREQ unless told to be
silent. It counts connections and keeps every packet it received, so tests
can check what the reader sent (CONNECT properties) and how often it came back.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from tdmq_beam.mqtt import codec
from tdmq_beam.mqtt.codec import PacketType


def publish_packet(topic: str, payload: bytes, *, qos: int = 1, packet_id: int = 1, level: int = 5,
                   properties: codec.Properties | None = None) -> bytes:  # fmt: skip
    """A PUBLISH as a broker would send it (packet id 0 allowed, for the hostile cases)."""
    return codec.encode_publish(codec.encode_utf8(topic), payload, qos, False, False, packet_id, level, properties)


class HostileBroker:
    """Loopback MQTT endpoint that follows a script.

    Args:
        after_suback: packets sent in the same write as the SUBACK, or a function of the
            connection's number (1-based) returning them.
        connack_properties: properties of the CONNACK (MQTT 5).
        answer_pings: answer PINGREQ with PINGRESP.
    """

    def __init__(
        self,
        *,
        after_suback: list[bytes] | Callable[[int], list[bytes]] = (),
        connack_properties: codec.Properties | None = None,
        answer_pings: bool = True,
        level: int = 5,
    ) -> None:
        self._after_suback = after_suback
        self._connack_properties = connack_properties or {}
        self._answer_pings = answer_pings
        self._level = level
        self.connections = 0
        self.connect_times: list[float] = []
        self.received: list[tuple[int, bytes]] = []  # (first byte, body) of every packet, all connections
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._sessions: list[_Session] = []
        self.port = 0

    def __enter__(self) -> HostileBroker:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            self._loop.create_server(lambda: _Session(self), "127.0.0.1", 0), self._loop
        ).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc_info: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def inject(self, *packets: bytes) -> None:
        """Sends ``packets`` on every open connection, now."""

        def send() -> None:
            for session in self._sessions:
                if not session.transport.is_closing():
                    session.transport.write(b"".join(packets))

        self._loop.call_soon_threadsafe(send)

    def acknowledged(self) -> list[int]:
        """Packet ids of the PUBACKs received, in order."""
        return [int.from_bytes(body[:2], "big") for first, body in self.received if first >> 4 == PacketType.PUBACK]

    def connect_packets(self) -> list[codec.Connect]:
        return [codec.decode_connect(body) for first, body in self.received if first >> 4 == PacketType.CONNECT]

    def packets_after_suback(self, connection: int) -> list[bytes]:
        script = self._after_suback
        return list(script(connection) if callable(script) else script)


class _Session(asyncio.Protocol):
    def __init__(self, broker: HostileBroker) -> None:
        self.broker = broker
        self.framer = codec.PacketFramer()
        self.number = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.broker.connections += 1
        self.broker.connect_times.append(time.monotonic())
        self.number = self.broker.connections
        self.broker._sessions.append(self)

    def data_received(self, data: bytes) -> None:
        broker = self.broker
        for first, body, _ in self.framer.feed(data):
            broker.received.append((first, body))
            kind = first >> 4
            if kind == PacketType.CONNECT:
                self.transport.write(codec.encode_connack(False, 0, broker._level, broker._connack_properties))
            elif kind == PacketType.SUBSCRIBE:
                subscribe = codec.decode_subscribe(body, broker._level)
                suback = codec.encode_suback(subscribe.packet_id, [1] * len(subscribe.filters), broker._level)
                self.transport.write(suback + b"".join(broker.packets_after_suback(self.number)))
            elif kind == PacketType.PINGREQ and broker._answer_pings:
                self.transport.write(b"\xd0\x00")
