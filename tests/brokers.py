"""Brokers we did not write, for the read tests: Debian's mosquitto, and a TCP proxy that cuts connections.

Each `Mosquitto` is its own process on a free loopback port, with a config file
written for it (user0/secret0, no queue or in-flight limits, optionally
persistence and a TLS listener), so tests never share a broker's state.
"""

from __future__ import annotations

import asyncio
import getpass
import random
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Self

import pytest

from tdmq_beam import TdmqConnection
from tdmq_beam.mqtt import codec
from tdmq_beam.mqtt.codec import PacketType

INSTALL = "apt-get install -y mosquitto mosquitto-clients"
USERNAME, PASSWORD = "user0", "secret0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def need_mosquitto() -> None:
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip(f"mosquitto is not installed ({INSTALL})")


def connection_to(port: int, *, tls: bool = False, **options) -> TdmqConnection:
    """A connection whose MQTT endpoint is a broker on ``port`` (the read side uses no HTTP endpoint)."""
    options.setdefault("username", USERNAME)
    options.setdefault("password", PASSWORD)
    options.setdefault("mqtt_endpoint", f"{'mqtts' if tls else 'mqtt'}://127.0.0.1:{port}")
    return TdmqConnection("http://127.0.0.1:9", **options)


class Mosquitto:
    """A mosquitto broker process of this test's own.

    Args:
        directory: where its config, password file, log and persistence go.
        persistence: keep sessions and messages on disk across `restart`.
        tls: (CA, server certificate, server key) paths for a TLS listener.
        require_certificate: the TLS listener also asks for a client certificate, and
            takes its Common Name as the username (no password then, as on the service).
    """

    def __init__(
        self,
        directory: Path,
        *,
        persistence: bool = False,
        tls: tuple[str, str, str] | None = None,
        require_certificate: bool = False,
    ) -> None:
        need_mosquitto()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        passwords = directory / "passwords"
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), USERNAME, PASSWORD], check=True)
        lines = [
            f"user {getpass.getuser()}",  # mosquitto started as root would switch to user mosquitto
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {passwords}",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            "log_dest file " + str(directory / "mosquitto.log"),
            "log_type error",
            "log_type warning",
            "log_type notice",  # "New client connected ... as ID": `has_connected` reads it
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {directory}/",
            "autosave_interval 1",
            f"listener {self.port} 127.0.0.1",
        ]
        if tls:
            ca, cert, key = tls
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {ca}",
                f"certfile {cert}",
                f"keyfile {key}",
                f"require_certificate {'true' if require_certificate else 'false'}",
                f"use_identity_as_username {'true' if require_certificate else 'false'}",
            ]
        self.config = directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Mosquitto:
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    error = self.process.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
                    raise RuntimeError(f"mosquitto did not start: {error}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: mosquitto saves its persistence file
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def has_connected(self, client_id: str) -> bool:
        """Whether a client with ``client_id`` was ever accepted by this broker (from its log)."""
        log = self.directory / "mosquitto.log"
        return log.exists() and f" as {client_id} (" in log.read_text(errors="replace")

    def connection(self, *, port: int | None = None, tls: bool = False, **options) -> TdmqConnection:
        """A connection whose MQTT endpoint is this broker (the HTTP endpoint is unused by the read side)."""
        return connection_to(port or (self.tls_port if tls else self.port), tls=tls, **options)


class _LoopbackServer:
    """A TCP server on a free loopback port, run by its own event loop thread while in a ``with``;
    subclasses serve each connection in ``_serve``."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()


class CuttingProxy(_LoopbackServer):
    """A loopback TCP proxy that cuts every connection through it at random moments.

    Each connection is aborted (both sides, no goodbye) after a random 0.5-2 s,
    for as long as `cutting` is set; `cuts` counts them. Runs its own event loop thread.
    """

    def __init__(self, target_port: int, *, low: float = 0.5, high: float = 2.0, seed: int = 7) -> None:
        super().__init__()
        self.target_port = target_port
        self.low, self.high = low, high
        self.cutting = True
        self.cuts = 0
        self._random = random.Random(seed)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.transport.abort()
            return

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.transport.abort()

        pumps = [self._loop.create_task(pump(client_reader, broker_writer)),
                 self._loop.create_task(pump(broker_reader, client_writer))]  # fmt: skip
        lifetime = self._random.uniform(self.low, self.high)
        done, _ = await asyncio.wait(pumps, timeout=lifetime)
        if not done and self.cutting:
            self.cuts += 1
        elif not done:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        client_writer.transport.abort()
        broker_writer.transport.abort()
        await asyncio.gather(*pumps, return_exceptions=True)


class ScriptedBroker(_LoopbackServer):
    """An MQTT 5 broker of a few lines, for CONNACK answers a real broker gives only in its own setting.

    Answers CONNECT with a CONNACK carrying ``connack_properties``, SUBSCRIBE with
    a SUBACK granting QoS 1, then sends ``after_suback`` (encoded packets). Records
    the type and body of every packet the client sends in `received`.
    """

    def __init__(self, connack_properties: codec.Properties, after_suback: list[bytes] = ()) -> None:  # type: ignore[assignment]
        self.connack_properties = connack_properties
        self.after_suback = list(after_suback)
        self.received: list[tuple[int, bytes]] = []
        super().__init__()

    def types(self) -> list[int]:
        return [kind for kind, _ in self.received]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = codec.PacketFramer()
        while data := await reader.read(65536):
            for first, body, _ in framer.feed(data):
                kind = first >> 4
                self.received.append((kind, body))
                if kind == PacketType.CONNECT:
                    writer.write(codec.encode_connack(False, 0, 5, self.connack_properties))
                elif kind == PacketType.SUBSCRIBE:
                    packet_id = int.from_bytes(body[:2], "big")
                    writer.write(codec.encode_suback(packet_id, [1], 5))
                    writer.write(b"".join(self.after_suback))
                elif kind == PacketType.PINGREQ:
                    writer.write(codec.PINGRESP)
                elif kind == PacketType.DISCONNECT:
                    writer.close()
                    return
