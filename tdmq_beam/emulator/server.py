"""The emulator process: one event loop serving MQTT over TCP and the HTTP(S) APIs."""

from __future__ import annotations

import asyncio
import logging
import ssl

from aiohttp import web

from tdmq_beam.emulator.broker import Broker
from tdmq_beam.emulator.cloud_api import CloudApi
from tdmq_beam.emulator.config import EmulatorConfig
from tdmq_beam.emulator.http_api import DataPlaneApi
from tdmq_beam.emulator.mqtt_server import MqttConnection

__all__ = ["Emulator"]

_LOGGER = logging.getLogger(__name__)

_MAX_REQUEST_LINE = 3 * 65535 + 64 * 1024


class Emulator:
    """A running TDMQ for MQTT emulator on the current event loop.

    Usage::

        emulator = Emulator(EmulatorConfig(http_port=0, mqtt_port=0))
        await emulator.start()
        print(emulator.http_url, emulator.mqtt_port)
        await emulator.stop()
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.broker: Broker | None = None
        self.data_plane: DataPlaneApi | None = None
        self.cloud: CloudApi | None = None
        self.http_port = 0
        self.mqtt_port = 0
        self._mqtt_server: asyncio.base_events.Server | None = None
        self._runner: web.AppRunner | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls_cert else "http"

    @property
    def http_url(self) -> str:
        return f"{self.scheme}://{self.config.host}:{self.http_port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.config.host}:{self.mqtt_port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        self.broker = broker = Broker(config, loop)
        self._mqtt_server = await loop.create_server(
            lambda: MqttConnection(broker), config.host, config.mqtt_port, reuse_address=True
        )
        self.mqtt_port = self._mqtt_server.sockets[0].getsockname()[1]
        broker.node = f"{config.host}:{self.mqtt_port}"

        self.data_plane = DataPlaneApi(broker)
        self.cloud = CloudApi(broker)
        app = web.Application(client_max_size=config.max_payload + 1)
        self.data_plane.add_routes(app)
        self.cloud.add_routes(app)
        app.router.add_get("/emulator/stats", self._stats)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            # A topic may be 65,535 bytes, percent-encoded to three times that.
            max_line_size=_MAX_REQUEST_LINE,
            max_field_size=65536,
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, config.host, config.http_port, ssl_context=self._ssl_context(), reuse_address=True
        )
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]
        _LOGGER.info("emulator serving %s and %s", self.http_url, self.mqtt_url)

    def _ssl_context(self) -> ssl.SSLContext | None:
        config = self.config
        if not config.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.client_ca:
            context.load_verify_locations(config.client_ca)
            # Optional: a client may authenticate with a certificate or with Basic credentials.
            context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def stats(self) -> dict:
        """Counts of requests by API and status, messages, and clients."""
        snapshot = self.data_plane.snapshot()
        snapshot["requests"].update(self.cloud.snapshot())
        return snapshot

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def stop(self) -> None:
        if self._mqtt_server is not None:
            self._mqtt_server.close()
            for session in list(self.broker.sessions.values()):
                if session.connection is not None:
                    session.connection.close("server_shutdown", 0x8B)
            self._mqtt_server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
