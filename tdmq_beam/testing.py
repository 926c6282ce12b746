"""Test helpers: the emulator in a background thread, for this project's tests and yours.

Usage::

    from tdmq_beam.testing import TdmqEmulator

    with TdmqEmulator() as emulator:
        print(emulator.http_url, emulator.mqtt_port, emulator.username)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tdmq_beam.cloud_api import CloudApiConfig
from tdmq_beam.connection import TdmqConnection
from tdmq_beam.emulator.config import EmulatorConfig, FaultConfig
from tdmq_beam.emulator.server import Emulator

__all__ = ["SimulatedClients", "TdmqEmulator"]

T = TypeVar("T")

_START_TIMEOUT = 30.0


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


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
        self.username, self.password = next(iter(self.config.users.items()), (None, None))
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
        self._loop = loop = _new_event_loop()

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
        """A `TdmqConnection` to this emulator as its first user; ``options`` override."""
        options.setdefault("username", self.username)
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

    # -- inspection and control -------------------------------------------------

    def call(self, function: Callable[[], T]) -> T:
        """Runs ``function`` on the emulator's loop thread and returns its result."""

        async def run() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=_START_TIMEOUT)

    def stats(self) -> dict:
        """What ``GET /emulator/stats`` returns."""
        return self.call(self._emulator.stats)

    def set_faults(self, rate: float, kinds: tuple[str, ...] | None = None, **options: Any) -> None:
        """Replaces the faults injected into HTTP publish requests."""
        faults = FaultConfig(rate=rate, **({"kinds": kinds} if kinds else {}), **options)

        def apply() -> None:
            self.config.faults = faults

        self.call(apply)

    def simulated_clients(self) -> SimulatedClients:
        """MQTT clients (paho-mqtt) to connect to this emulator; close them when done."""
        return SimulatedClients(self.host, self.mqtt_port, self.username, self.password)

    def online_clients(self) -> set[str]:
        broker = self._emulator.broker
        return self.call(lambda: {cid for cid, s in broker.sessions.items() if s.connection is not None})


class SimulatedClients:
    """Simulated devices: MQTT 3.1.1 clients (paho-mqtt) that are online, or offline with a persistent session.

    No thread per client: each is driven only while it connects, subscribes or
    disconnects, so hundreds are cheap. Online clients use a long keep-alive
    (600 s by default) and stay connected until `close`.

    Usage::

        with emulator.simulated_clients() as devices:
            devices.online("dev-1", subscriptions=["devices/dev-1/commands"])
            devices.offline("dev-2")   # a persistent session, disconnected
    """

    def __init__(self, host: str, port: int, username: str | None, password: str | None) -> None:
        self._address = (host, port)
        self._credentials = (username, password)
        self._clients: dict[str, Any] = {}

    def _connect(self, client_id: str, *, persistent: bool, keepalive: int, subscriptions) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=not persistent
        )
        if self._credentials[0] is not None:
            client.username_pw_set(*self._credentials)
        acknowledged: list[Any] = []
        client.on_connect = lambda c, u, flags, rc, props: acknowledged.append(rc)
        client.on_subscribe = lambda c, u, mid, codes, props: acknowledged.append(codes)
        client.connect(*self._address, keepalive=keepalive)
        self._drive(client, acknowledged, 1, f"{client_id} was not accepted")
        if acknowledged[0].is_failure:
            raise RuntimeError(f"{client_id} was refused: {acknowledged[0]}")
        for topic_filter in subscriptions:
            client.subscribe(topic_filter, qos=1)
            self._drive(client, acknowledged, len(acknowledged) + 1, f"{client_id} could not subscribe")
        return client

    @staticmethod
    def _drive(client: Any, acknowledged: list[Any], count: int, problem: str) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while len(acknowledged) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(problem)
            client.loop(timeout=0.05)

    def online(self, client_id: str, *, persistent: bool = False, keepalive: int = 600, subscriptions=()) -> None:
        """Connects ``client_id`` and keeps it connected."""
        self._clients[client_id] = self._connect(
            client_id, persistent=persistent, keepalive=keepalive, subscriptions=subscriptions
        )

    def offline(self, client_id: str, *, subscriptions=()) -> None:
        """Leaves a persistent session for ``client_id``, disconnected."""
        client = self._connect(client_id, persistent=True, keepalive=600, subscriptions=subscriptions)
        client.disconnect()
        client.loop(timeout=0.05)
        client.socket() and client.socket().close()

    def disconnect(self, client_id: str) -> None:
        client = self._clients.pop(client_id)
        client.disconnect()
        client.loop(timeout=0.05)

    def close(self) -> None:
        for client_id in list(self._clients):
            self.disconnect(client_id)

    def __enter__(self) -> SimulatedClients:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
