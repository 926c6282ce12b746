"""The emulator process: one event loop serving MQTT (TCP, TLS, WebSocket) and the HTTP(S) APIs."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiohttp import WSMsgType, web

from tdmq_beam.emulator.broker import Broker
from tdmq_beam.emulator.cloud_api import CloudApi
from tdmq_beam.emulator.config import EmulatorConfig
from tdmq_beam.emulator.http_api import DataPlaneApi
from tdmq_beam.emulator.mqtt_server import MqttConnection
from tdmq_beam.hosts import is_loopback
from tdmq_beam.mqtt.codec import ReasonCode

__all__ = ["WEBSOCKET_PATH", "Emulator"]

_LOGGER = logging.getLogger(__name__)

_MAX_REQUEST_LINE = 3 * 65535 + 64 * 1024
WEBSOCKET_PATH = "/mqtt"
"""Where MQTT over WebSocket is served (subprotocol ``mqtt``)."""


class Emulator:
    """A running TDMQ for MQTT emulator on the current event loop.

    Usage::

        emulator = Emulator(EmulatorConfig(http_port=0, mqtt_port=0))
        await emulator.start()
        print(emulator.http_url, emulator.mqtt_port)
        await emulator.stop()

    Attributes:
        mqtt_port, mqtts_port, ws_port, wss_port, http_port: the bound ports
            (0 for a listener that is not configured).
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.broker: Broker | None = None
        self.data_plane: DataPlaneApi | None = None
        self.cloud: CloudApi | None = None
        self.http_port = 0
        self.mqtt_port = 0
        self.mqtts_port = 0
        self.ws_port = 0
        self.wss_port = 0
        self._servers: list[asyncio.base_events.Server] = []
        self._runners: list[web.AppRunner] = []

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls_cert else "http"

    @property
    def http_url(self) -> str:
        return f"{self.scheme}://{self.config.host}:{self.http_port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.config.host}:{self.mqtt_port}"

    def urls(self) -> dict[str, str]:
        """Every listener's URL, by name (``http``, ``mqtt``, and ``mqtts``, ``ws``, ``wss`` where served)."""
        host = self.config.host
        urls = {"http": self.http_url, "mqtt": self.mqtt_url}
        if self.mqtts_port:
            urls["mqtts"] = f"mqtts://{host}:{self.mqtts_port}"
        if self.ws_port:
            urls["ws"] = f"ws://{host}:{self.ws_port}{WEBSOCKET_PATH}"
        if self.wss_port:
            urls["wss"] = f"wss://{host}:{self.wss_port}{WEBSOCKET_PATH}"
        return urls

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        self.broker = broker = Broker(config, loop)
        tls = self._ssl_context()
        self.mqtt_port = await self._serve_mqtt(config.mqtt_port, None)
        broker.node = f"{config.host}:{self.mqtt_port}"
        if config.mqtts_port is not None:
            self.mqtts_port = await self._serve_mqtt(config.mqtts_port, tls)

        self.data_plane = DataPlaneApi(broker)
        self.cloud = CloudApi(broker)
        app = web.Application(client_max_size=config.max_cloud_body)
        self.data_plane.add_routes(app)
        self.cloud.add_routes(app)
        app.router.add_get("/emulator/stats", self._stats)
        self.data_plane.add_fallback_route(app)
        # A topic may be 65,535 bytes, percent-encoded to three times that.
        self.http_port = await self._serve_http(app, config.http_port, tls, max_line_size=_MAX_REQUEST_LINE)

        if config.ws_port is not None or config.wss_port is not None:
            ws_app = web.Application()
            ws_app.router.add_get(WEBSOCKET_PATH, self._websocket)
            if config.ws_port is not None:
                self.ws_port = await self._serve_http(ws_app, config.ws_port, None)
            if config.wss_port is not None:
                self.wss_port = await self._serve_http(ws_app, config.wss_port, tls)
        _LOGGER.info("emulator serving %s", " ".join(self.urls().values()))
        if not is_loopback(config.host) and config.has_default_credentials():
            _LOGGER.warning(
                "the emulator listens on %s with its default, published credentials: anyone who reaches it can "
                "use it; give your own users (--user NAME:PASSWORD) and cloud secret, or listen on 127.0.0.1",
                config.host,
            )

    async def _serve_mqtt(self, port: int, tls: ssl.SSLContext | None) -> int:
        broker = self.broker
        assert broker is not None
        server = await asyncio.get_running_loop().create_server(
            lambda: MqttConnection(broker), self.config.host, port, ssl=tls, reuse_address=True
        )
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def _serve_http(self, app: web.Application, port: int, tls: ssl.SSLContext | None, **limits: Any) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, max_field_size=65536, **limits)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.config.host, port, ssl_context=tls, reuse_address=True)
        await site.start()
        return runner.addresses[-1][1]

    def _ssl_context(self) -> ssl.SSLContext | None:
        config = self.config
        if not config.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.client_ca:
            context.load_verify_locations(config.client_ca)
            # Optional: a client may authenticate with a certificate or with credentials.
            context.verify_mode = ssl.CERT_OPTIONAL
        return context

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        """MQTT over WebSocket: binary frames carry the MQTT byte stream (MQTT 5 section 6)."""
        ws = web.WebSocketResponse(protocols=("mqtt",), max_msg_size=self.config.max_packet_size + 8)
        await ws.prepare(request)
        assert self.broker is not None
        transport = _WebSocketTransport(ws, request.transport)
        connection = MqttConnection(self.broker)
        connection.connection_made(transport)
        try:
            async for frame in ws:
                if frame.type != WSMsgType.BINARY:
                    connection.close("protocol_error", ReasonCode.MALFORMED_PACKET, "MQTT travels in binary frames")
                    break
                connection.data_received(frame.data)
                if connection.closed:
                    break
        finally:
            connection.connection_lost(None)
            await transport.finish()
        return ws

    def stats(self) -> dict:
        """Counts of requests by API and status, messages, and clients."""
        if self.data_plane is None or self.cloud is None:
            raise RuntimeError("the emulator is not started")
        snapshot = self.data_plane.snapshot()
        snapshot["requests"].update(self.cloud.snapshot())
        return snapshot

    async def _stats(self, request: web.Request) -> web.Response:
        # The stats name clients and topics: for the emulator's users only, like every other API.
        assert self.data_plane is not None
        refusal = self.data_plane.refusal(request)
        return refusal if refusal is not None else web.json_response(self.stats())

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        self._servers = []
        if self.broker is not None:
            for session in list(self.broker.sessions.values()):
                if session.connection is not None:
                    session.connection.close("server_shutdown", ReasonCode.SERVER_SHUTTING_DOWN)
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []


class _WebSocketTransport(asyncio.Transport):
    """Lets an `MqttConnection` write to a WebSocket as to a socket: packets go out as binary
    frames, in order, from one writer task."""

    def __init__(self, ws: web.WebSocketResponse, underlying: asyncio.BaseTransport | None) -> None:
        super().__init__()
        self._ws = ws
        self._underlying = underlying
        self._outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._buffered = 0  # bytes queued for the writer task
        self._closing = False
        self._writer = asyncio.get_running_loop().create_task(self._write_frames())

    async def _write_frames(self) -> None:
        try:
            while (data := await self._outgoing.get()) is not None:
                await self._ws.send_bytes(data)
                self._buffered -= len(data)
            await self._ws.close()
        except (ConnectionError, RuntimeError):
            pass  # the peer went away first

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._underlying is None:
            return default
        return self._underlying.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self._buffered += len(data)
            self._outgoing.put_nowait(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._outgoing.put_nowait(None)

    def abort(self) -> None:
        self.close()

    async def finish(self) -> None:
        self.close()
        await self._writer
