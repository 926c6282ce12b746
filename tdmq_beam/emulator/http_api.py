"""The data-plane HTTP API (publish, online status, keep-alive) and ``/emulator/stats``.

Routes, parameters and status codes follow ``tdmq-api.md`` section 1. Handlers
return their error responses instead of raising, so one wrapper counts every
answer by API and status for ``/emulator/stats``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import logging
import os
from collections import defaultdict
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

from aiohttp import web

from tdmq_beam.emulator.broker import Broker, Message
from tdmq_beam.emulator.mqtt_codec import Prop
from tdmq_beam.token_bucket import TokenBucket
from tdmq_beam.topics import topic_name_error

__all__ = ["KEEPALIVE_RANGE", "DataPlaneApi"]

_LOGGER = logging.getLogger(__name__)

KEEPALIVE_RANGE = (30, 1200)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(status: int, document: dict, headers: dict | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(document).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _error(status: int, message: str, headers: dict | None = None) -> web.Response:
    return _json(status, {"error": message}, headers)


_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Basic realm="tdmq-emulator"'}


class _Reset(Exception):
    """An injected fault closed the connection; there is no response to send."""


class _Denied(Exception):
    """Authentication failed; carries the response to send."""

    def __init__(self, response: web.Response) -> None:
        self.response = response


class DataPlaneApi:
    """The instance access point's HTTP API, served from the broker's live state."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.config = broker.config
        self.requests: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._quota = TokenBucket(self.config.tps) if self.config.tps else None
        self._id_prefix = os.urandom(8).hex().upper()
        self._ids = itertools.count(1)
        self._http_connections = itertools.count(1)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/topics/{topic:.*}", self._counted("publish", self.publish))
        app.router.add_route("*", "/client-id/{client_id:.+}/status", self._counted("status", self.status))
        app.router.add_route("*", "/keep-alive", self._counted("keep_alive", self.keep_alive))

    def _counted(self, api: str, handler: Handler) -> Handler:
        counts = self.requests[api]

        async def counted(request: web.Request) -> web.StreamResponse:
            try:
                response = await handler(request)
            except _Reset:
                counts["reset"] += 1
                raise web.HTTPInternalServerError() from None  # written to a closed transport: never seen
            except ConnectionResetError:
                counts["client_gone"] += 1  # the client closed first (e.g. timed out during a delay fault)
                raise web.HTTPInternalServerError() from None
            except web.HTTPException as exc:
                counts[str(exc.status)] += 1
                raise
            except Exception:
                _LOGGER.exception("internal fault in %s", api)
                counts["500"] += 1
                return _error(500, "internal error")
            counts[str(response.status)] += 1
            return response

        return counted

    # -- shared checks --------------------------------------------------------

    def _authenticate(self, request: web.Request, *, connect_denied_status: int) -> tuple[str | None, str | None]:
        """Returns (username, certificate common name) or raises `_Denied`.

        A client certificate verified by the instance CA authenticates; its
        Common Name is the client id and the user for ACL checks.
        """
        common_name = _certificate_common_name(request)
        if common_name is not None:
            username = common_name
        else:
            header = request.headers.get("Authorization", "")
            scheme, _, encoded = header.partition(" ")
            if scheme.lower() != "basic" or not encoded:
                raise _Denied(_error(401, "missing Basic credentials", headers=_UNAUTHORIZED_HEADERS))
            try:
                username, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise _Denied(_error(401, "malformed Basic credentials")) from None
            if not sep or not self.config.check_password(username, password):
                raise _Denied(_error(401, "bad username or password", headers=_UNAUTHORIZED_HEADERS))
        if not self.config.acl.allows(username, "connect"):
            raise _Denied(_error(connect_denied_status, f"user {username!r} lacks CONNECT permission"))
        if self._quota is not None and not self._quota.try_take():
            raise _Denied(_error(429, "instance TPS quota exceeded", headers={"Retry-After": "1"}))
        return username, common_name

    # -- publish --------------------------------------------------------------

    async def publish(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return _error(405, "publish takes POST", headers={"Allow": "POST"})
        fault = self.config.faults.draw()
        if fault is not None:
            injected = await self._inject(request, fault)
            if injected is not None:
                return injected
        try:
            username, common_name = self._authenticate(request, connect_denied_status=401)
        except _Denied as denied:
            return denied.response

        raw_topic = request.raw_path.partition("?")[0][len("/topics/") :]
        try:
            topic = unquote(raw_topic, errors="strict")
        except UnicodeDecodeError:
            return _error(400, "topic is not valid percent-encoded UTF-8")
        problem = topic_name_error(topic)
        if problem:
            return _error(400, problem)

        query = request.query
        qos_text = query.get("qos", "1")
        if qos_text not in ("0", "1", "2"):
            return _error(400, f"invalid qos {qos_text!r}: must be 0, 1 or 2")
        retained_text = query.get("retained", "false").lower()
        if retained_text not in ("true", "false"):
            return _error(400, f"invalid retained {query.get('retained')!r}: must be true or false")
        properties, problem = _publish_properties(query)
        if problem:
            return _error(400, problem)

        if common_name is not None and "username" in query:
            username = query["username"]  # Basic credentials name the user; a certificate does not
        client_id = common_name or query.get("client_id") or f"http-{next(self._http_connections)}"
        if not self.config.acl.allows(username, "publish", topic):
            return _error(401, f"user {username!r} is not allowed to publish to {topic!r}")

        limit = self.config.max_payload
        if request.content_length is not None and request.content_length > limit:
            return _error(400, f"payload of {request.content_length} bytes exceeds the maximum of {limit}")
        try:
            payload = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(400, f"payload exceeds the maximum of {limit} bytes")
        if properties.get(Prop.PAYLOAD_FORMAT_INDICATOR) == 1:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                return _error(400, "PayloadFormatIndicator is 1 but the payload is not UTF-8")

        broker = self.broker
        broker.publish(
            Message.create(
                topic, payload, int(qos_text), retained_text == "true", properties, client_id, broker.loop.time()
            )
        )
        return web.Response(headers={"X-Message-Id": f"{self._id_prefix}{next(self._ids):016X}"})

    async def _inject(self, request: web.Request, fault: str) -> web.StreamResponse | None:
        if fault == "500":
            return _error(500, "injected fault")
        if fault == "429":
            retry_after = str(self.config.faults.retry_after)
            return _error(429, "injected throttling", headers={"Retry-After": retry_after})
        if fault == "reset":
            request.transport.abort()
            raise _Reset()
        await asyncio.sleep(self.config.faults.delay_seconds)
        return None

    # -- online status ----------------------------------------------------------

    async def status(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "POST"):
            return _error(405, "status takes GET or POST", headers={"Allow": "GET, POST"})
        try:
            self._authenticate(request, connect_denied_status=403)
        except _Denied as denied:
            return denied.response
        raw = request.raw_path.partition("?")[0][len("/client-id/") : -len("/status")]
        try:
            client_id = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return _error(400, "client id is not valid percent-encoded UTF-8")
        session = self.broker.sessions.get(client_id)
        online = session is not None and session.connection is not None
        return web.Response(body=b'{"online":true}' if online else b'{"online":false}', content_type="application/json")

    # -- keep-alive ---------------------------------------------------------------

    async def keep_alive(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return _error(405, "keep-alive takes POST", headers={"Allow": "POST"})
        try:
            self._authenticate(request, connect_denied_status=403)
        except _Denied as denied:
            return denied.response

        def refuse(message: str) -> web.Response:
            return _json(400, {"success": False, "error": message})

        client_id = request.query.get("client-id")
        interval_text = request.query.get("interval")
        if not client_id:
            return refuse("client-id is required")
        if interval_text is None:
            return refuse("interval is required")
        try:
            interval = int(interval_text)
        except ValueError:
            return refuse(f"interval {interval_text!r} is not an integer")
        low, high = KEEPALIVE_RANGE
        if not low <= interval <= high:
            return refuse(f"interval {interval} is outside {low}..{high} seconds")
        session = self.broker.sessions.get(client_id)
        if session is None or session.connection is None:
            return refuse(f"client {client_id!r} is not online")
        if session.connection.connect_keepalive == 0:
            return refuse(f"client {client_id!r} connected with keep-alive 0, which cannot be changed")
        session.connection.set_keepalive(interval)
        return _json(200, {"success": True, "keepalive": interval})

    # -- observability --------------------------------------------------------------

    def snapshot(self) -> dict:
        broker = self.broker
        return {
            "requests": {api: dict(counts) for api, counts in self.requests.items()},
            "messages": dict(broker.counters),
            "clients": {
                "connected": broker.connected_count(),
                "sessions": len(broker.sessions),
                "retained_messages": len(broker.retained),
            },
        }


def _publish_properties(query) -> tuple[dict, str | None]:
    """The MQTT 5 properties of a publish request's query, or a reason they are invalid."""
    props: dict = {}
    if "PayloadFormatIndicator" in query:
        value = query["PayloadFormatIndicator"]
        if value not in ("0", "1"):
            return props, f"invalid PayloadFormatIndicator {value!r}: must be 0 or 1"
        props[Prop.PAYLOAD_FORMAT_INDICATOR] = int(value)
    if "MessageExpiryInterval" in query:
        value = query["MessageExpiryInterval"]
        if not value.isdigit() or int(value) > 0xFFFFFFFF:
            return props, f"invalid MessageExpiryInterval {value!r}: must be 0..4294967295"
        props[Prop.MESSAGE_EXPIRY_INTERVAL] = int(value)
    for name, prop_id in (("ContentType", Prop.CONTENT_TYPE), ("ResponseTopic", Prop.RESPONSE_TOPIC)):
        if name in query:
            props[prop_id] = query[name]
    if "ResponseTopic" in query:
        problem = topic_name_error(query["ResponseTopic"])
        if problem:
            return props, f"invalid ResponseTopic: {problem}"
    if "CorrelationData" in query:
        props[Prop.CORRELATION_DATA] = query["CorrelationData"].encode("utf-8")
    pairs: dict[int, dict[str, str]] = {}
    for name, value in query.items():
        if not name.startswith("UserProp."):
            continue
        parts = name.split(".")
        index, part = (parts[1], parts[2]) if len(parts) == 3 else ("", "")
        if not index.isdigit() or int(index) < 1 or part not in ("Key", "Value"):
            return props, f"invalid user property parameter {name!r}: expected UserProp.N.Key or UserProp.N.Value"
        pairs.setdefault(int(index), {})[part] = value
    if pairs:
        user_properties = []
        for index in sorted(pairs):
            pair = pairs[index]
            if len(pair) != 2:
                return props, f"UserProp.{index} needs both Key and Value"
            user_properties.append((pair["Key"], pair["Value"]))
        props[Prop.USER_PROPERTY] = user_properties
    return props, None


def _certificate_common_name(request: web.Request) -> str | None:
    transport = request.transport
    if transport is None:
        return None
    certificate = transport.get_extra_info("peercert")
    if not certificate:
        return None
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None
