"""Test helpers: the emulator in a background thread, for this project's tests and yours.

Usage::

    from tdmq_beam.testing import TdmqEmulator

    with TdmqEmulator() as emulator:
        print(emulator.http_url, emulator.mqtt_port, emulator.username)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from tdmq_beam.emulator.config import EmulatorConfig, FaultConfig
from tdmq_beam.emulator.server import Emulator
from tdmq_beam.mqtt.codec import DISCONNECT, encode_connect, encode_publish, encode_subscribe, encode_utf8
from tdmq_beam.service.client import new_event_loop
from tdmq_beam.service.cloud_api import CloudApiConfig
from tdmq_beam.service.connection import TdmqConnection

__all__ = ["SimulatedClients", "TdmqEmulator"]

T = TypeVar("T")

_START_TIMEOUT = 30.0


class TdmqEmulator:
    """Runs the emulator on free ports of 127.0.0.1 in a daemon thread.

    Args:
        **config: `EmulatorConfig` fields; ``http_port`` and ``mqtt_port``
            default to 0 (free ports) here.

    Attributes:
        config: the emulator's configuration.
        username, password: the first configured user (``user0``/``secret0``
            unless ``users`` is given).
    """

    def __init__(self, **config: Any) -> None:
        config.setdefault("http_port", 0)
        config.setdefault("mqtt_port", 0)
        self.config = EmulatorConfig(**config)
        first: tuple[str | None, str | None] = next(iter(self.config.users.items()), (None, None))
        self.username, self.password = first
        self._emulator = Emulator(self.config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = self.http_url if self._loop is not None else "stopped"
        return f"TdmqEmulator({state})"

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> TdmqEmulator:
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._loop = loop = new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._emulator.start())
            except BaseException as exc:  # reported to start()
                ready.set_exception(exc)
                loop.close()
                return
            ready.set_result(None)
            loop.run_forever()
            loop.run_until_complete(self._emulator.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="tdmq-emulator", daemon=True)
        self._thread.start()
        try:
            ready.result(timeout=_START_TIMEOUT)
        except BaseException:
            self._thread = None
            self._loop = None
            raise
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=_START_TIMEOUT)
        self._thread = None
        self._loop = None

    def __enter__(self) -> TdmqEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def http_url(self) -> str:
        return self._emulator.http_url

    @property
    def http_port(self) -> int:
        return self._emulator.http_port

    @property
    def mqtt_port(self) -> int:
        return self._emulator.mqtt_port

    @property
    def mqtts_port(self) -> int:
        """MQTT over TLS, when ``mqtts_port`` was given (0 asks for a free port)."""
        return self._emulator.mqtts_port

    @property
    def ws_port(self) -> int:
        """MQTT over WebSocket (path ``/mqtt``), when ``ws_port`` was given."""
        return self._emulator.ws_port

    @property
    def wss_port(self) -> int:
        """MQTT over secure WebSocket (path ``/mqtt``), when ``wss_port`` was given."""
        return self._emulator.wss_port

    @property
    def cloud_endpoint(self) -> str:
        """``host:port`` of the cloud API, as the official SDK's HttpProfile takes it."""
        return f"{self.host}:{self.http_port}"

    @property
    def secret_id(self) -> str:
        return self.config.secret_id

    @property
    def secret_key(self) -> str:
        return self.config.secret_key

    @property
    def instance_id(self) -> str:
        return self.config.instance_id

    # -- connector configuration -------------------------------------------------

    def connection(self, **options: Any) -> TdmqConnection:
        """A `TdmqConnection` to this emulator (HTTP and MQTT) as its first user; ``options`` override."""
        options.setdefault("username", self.username)
        options.setdefault("mqtt_endpoint", f"mqtt://{self.host}:{self.mqtt_port}")
        options.setdefault("password", self.password)
        return TdmqConnection(self.http_url, **options)

    def cloud_config(self, **options: Any) -> CloudApiConfig:
        """A `CloudApiConfig` for this emulator's cloud API; ``options`` override."""
        options.setdefault("secret_id", self.secret_id)
        options.setdefault("secret_key", self.secret_key)
        options.setdefault("region", "ap-guangzhou")
        options.setdefault("instance_id", self.instance_id)
        options.setdefault("endpoint", self.http_url)
        return CloudApiConfig(**options)

    def environment(self) -> dict[str, str]:
        """The variables `TdmqConnection.from_env` and `CloudApiConfig.from_env` read, pointing
        at this emulator: ``os.environ.update(emulator.environment())`` and code written for the
        service runs against it unchanged."""
        environment = {
            "TDMQ_ENDPOINT": self.http_url,
            "TDMQ_MQTT_ENDPOINT": f"mqtt://{self.host}:{self.mqtt_port}",
            "TENCENTCLOUD_SECRET_ID": self.secret_id,
            "TENCENTCLOUD_SECRET_KEY": self.secret_key,
            "TENCENTCLOUD_REGION": "ap-guangzhou",
            "TDMQ_INSTANCE_ID": self.instance_id,
            "TDMQ_CLOUD_ENDPOINT": self.http_url,
        }
        if self.username is not None and self.password is not None:
            environment.update(TDMQ_USERNAME=self.username, TDMQ_PASSWORD=self.password)
        return environment

    # -- inspection and control -------------------------------------------------

    def call(self, function: Callable[[], T]) -> T:
        """Runs ``function`` on the emulator's loop thread and returns its result."""

        async def run() -> T:
            return function()

        if self._loop is None:
            raise RuntimeError("the emulator is not running")
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=_START_TIMEOUT)

    def stats(self) -> dict:
        """What ``GET /emulator/stats`` returns."""
        return self.call(self._emulator.stats)

    def session_state(self, client_id: str) -> dict[str, Any] | None:
        """What the broker holds for ``client_id``'s session (`Session.state`), or None when it has none."""

        def read() -> dict[str, Any] | None:
            broker = self._emulator.broker
            session = broker.sessions.get(client_id) if broker is not None else None
            return session.state() if session is not None else None

        return self.call(read)

    def set_faults(self, rate: float, kinds: tuple[str, ...] | None = None, **options: Any) -> None:
        """Replaces the faults injected into HTTP publish requests."""
        if kinds:
            options["kinds"] = kinds
        faults = FaultConfig(rate=rate, **options)

        def apply() -> None:
            self.config.faults = faults

        self.call(apply)

    def simulated_clients(self) -> SimulatedClients:
        """Simulated MQTT clients to connect to this emulator; close them when done."""
        return SimulatedClients(self.host, self.mqtt_port, self.username, self.password)

    def online_clients(self) -> set[str]:
        broker = self._emulator.broker
        assert broker is not None
        return self.call(lambda: {cid for cid, s in broker.sessions.items() if s.connection is not None})


class SimulatedClients:
    """Simulated devices: MQTT 3.1.1 clients that are online, or offline with a persistent session.

    Each is a plain socket that sends CONNECT (and SUBSCRIBE) and then stays
    quiet, so thousands are cheap; online clients use a long keep-alive (600 s
    by default) and stay connected until `disconnect` or `close`.

    Usage::

        with emulator.simulated_clients() as devices:
            devices.online("dev-1", subscriptions=["devices/dev-1/commands"])
            devices.offline("dev-2")   # a persistent session, disconnected
    """

    def __init__(self, host: str, port: int, username: str | None, password: str | None) -> None:
        self._address = (host, port)
        self._credentials = (username, password)
        self._sockets: dict[str, socket.socket] = {}
        self._next_packet_id: dict[str, int] = {}

    def _connect(self, client_id: str, *, persistent: bool, keepalive: int, subscriptions) -> socket.socket:
        sock = socket.create_connection(self._address, timeout=_START_TIMEOUT)
        username, password = self._credentials
        sock.sendall(
            encode_connect(client_id, clean=not persistent, keepalive=keepalive, username=username, password=password)
        )
        connack = _read_exactly(sock, 4)
        if connack[0] != 0x20 or connack[3] != 0:
            sock.close()
            raise RuntimeError(f"{client_id} was refused (CONNACK {connack.hex()})")
        if subscriptions:
            sock.sendall(encode_subscribe(1, [(topic_filter, 1) for topic_filter in subscriptions]))
            header = _read_exactly(sock, 2)
            granted = _read_exactly(sock, header[1])[2:]
            if header[0] != 0x90 or 0x80 in granted:
                sock.close()
                raise RuntimeError(f"{client_id} could not subscribe to {list(subscriptions)}")
        return sock

    def online(self, client_id: str, *, persistent: bool = False, keepalive: int = 600, subscriptions=()) -> None:
        """Connects ``client_id`` and keeps it connected."""
        self._sockets[client_id] = self._connect(
            client_id, persistent=persistent, keepalive=keepalive, subscriptions=subscriptions
        )

    def publish(self, client_id: str, messages: list[tuple[str, bytes]]) -> int:
        """Publishes ``(topic, payload)`` pairs at QoS 1 from online client ``client_id``, all
        sent before the PUBACKs are read; returns how many the broker acknowledged."""
        sock = self._sockets[client_id]
        start = self._next_packet_id.get(client_id, 1)
        ids = [(start + offset - 1) % 65535 + 1 for offset in range(len(messages))]
        self._next_packet_id[client_id] = ids[-1] % 65535 + 1 if ids else start
        sock.sendall(b"".join(
            encode_publish(encode_utf8(topic), payload, 1, False, False, packet_id, 4, None)
            for (topic, payload), packet_id in zip(messages, ids, strict=True)
        ))  # fmt: skip
        acknowledged = 0
        for _ in ids:
            header = _read_exactly(sock, 2)
            _read_exactly(sock, header[1])  # the packet id: PUBACKs come in order
            if header[0] >> 4 == 4:  # PUBACK (the device subscribes to nothing that is published here)
                acknowledged += 1
        return acknowledged

    def offline(self, client_id: str, *, subscriptions=()) -> None:
        """Leaves a persistent session for ``client_id``, disconnected."""
        sock = self._connect(client_id, persistent=True, keepalive=600, subscriptions=subscriptions)
        sock.sendall(DISCONNECT)
        sock.close()

    def disconnect(self, client_id: str) -> None:
        sock = self._sockets.pop(client_id)
        try:
            sock.sendall(DISCONNECT)
        finally:
            sock.close()

    def close(self) -> None:
        for client_id in list(self._sockets):
            self.disconnect(client_id)

    def __enter__(self) -> SimulatedClients:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise RuntimeError("the emulator closed the connection")
        data += chunk
    return data
