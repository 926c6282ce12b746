"""The data-plane HTTP API (publish, online status, keep-alive) and ``/emulator/stats``.

Routes, parameters and status codes follow the service documentation of the HTTP publish,
online-status and keep-alive APIs. Handlers
return their error responses instead of raising, so one wrapper counts every
answer by API and status for ``/emulator/stats``. Requests are read strictly:
an ambiguous request (a parameter given twice, bad percent-encoding, a number
written loosely) is refused with 400 and a reason rather than guessed at.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import logging
import re
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from aiohttp import web

from tdmq_beam.emulator.broker import Broker
from tdmq_beam.emulator.message import Message
from tdmq_beam.emulator.mqtt_server import certificate_common_name
from tdmq_beam.mqtt.codec import Prop
from tdmq_beam.mqtt.topics import topic_name_error, utf8_string_error
from tdmq_beam.rules.limits import KEEPALIVE_RANGE, MAX_UINT32
from tdmq_beam.rules.message_properties import MESSAGE_PROPERTIES, PARAMETER_SPELLINGS
from tdmq_beam.rules.token_bucket import TokenBucket

__all__ = ["DataPlaneApi", "RequestError", "decode_component", "parse_query"]

_LOGGER = logging.getLogger(__name__)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_USER_PROPERTY = re.compile(r"UserProp\.([1-9][0-9]{0,8})\.(Key|Value)")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DIGITS = re.compile(r"[0-9]+")
_REMEMBERED_CONNECTIONS = 65536
_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Basic realm="tdmq-emulator"'}


class RequestError(ValueError):
    """A request the API refuses with 400; the message says why."""


def decode_component(text: str, what: str, *, plus_is_space: bool = False) -> str:
    """Percent-decodes one URL component strictly: every ``%`` starts a valid escape and
    the result is valid UTF-8.

    Raises:
        RequestError: naming ``what``.
    """
    if _BAD_PERCENT.search(text):
        raise RequestError(f"{what} has a '%' that is not followed by two hex digits")
    if plus_is_space:
        text = text.replace("+", " ")
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(f"{what} is not valid UTF-8 once percent-decoded") from None


def parse_query(raw_query: str, spellings: dict[str, str] | None = None) -> dict[str, str]:
    """The parameters of a query string, by name, each given at most once.

    Args:
        raw_query: the query as sent, without ``?``.
        spellings: other accepted spellings of a parameter's name -> its name.

    Raises:
        RequestError: a parameter given twice (under any spelling), or a name or
            value that does not decode.
    """
    spellings = spellings or {}
    params: dict[str, str] = {}
    for part in raw_query.split("&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition("=")
        name = decode_component(raw_name, "a parameter name", plus_is_space=True)
        value = decode_component(raw_value, f"parameter {name}", plus_is_space=True)
        canonical = spellings.get(name, name)
        if canonical in params:
            raise RequestError(f"parameter {name} is given more than once")
        params[canonical] = value
    return params


def _uint(params: dict[str, str], name: str, maximum: int) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    if not _DIGITS.fullmatch(text) or int(text) > maximum:
        raise RequestError(f"invalid {name} {text!r}: must be a whole number within 0..{maximum}, digits only")
    return int(text)


def publish_settings(params: dict[str, str]) -> tuple[dict[str, Any], dict]:
    """The settings (by their names in the message-property table) and the MQTT 5 properties
    of a publish request's parameters; qos and retained take the service's defaults.

    Raises:
        RequestError: naming the first parameter that is not valid.
    """
    settings: dict[str, Any] = {"qos": 1, "retained": False}
    props: dict = {}
    for prop in MESSAGE_PROPERTIES:
        text = params.get(prop.parameter)
        if text is None:
            continue
        try:
            value = prop.from_parameter(text)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        settings[prop.name] = value
        if prop.mqtt_property is not None:
            props[prop.mqtt_property] = value
    pairs: dict[int, dict[str, str]] = {}
    for name, value in params.items():
        if not name.startswith("UserProp"):
            continue
        match = _USER_PROPERTY.fullmatch(name)
        if match is None:
            raise RequestError(
                f"invalid user property parameter {name!r}: expected UserProp.N.Key or UserProp.N.Value, N = 1, 2, ..."
            )
        if problem := utf8_string_error(name, value):
            raise RequestError(problem)
        pairs.setdefault(int(match[1]), {})[match[2]] = value
    if pairs:
        user_properties = []
        for index in sorted(pairs):
            pair = pairs[index]
            if len(pair) != 2:
                raise RequestError(f"UserProp.{index} needs both Key and Value")
            user_properties.append((pair["Key"], pair["Value"]))
        props[Prop.USER_PROPERTY] = user_properties
    return settings, props


def _json(status: int, document: dict, headers: dict | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(document).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _error(status: int, message: str, headers: dict | None = None) -> web.Response:
    return _json(status, {"error": message}, headers)


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
        # One default client id per HTTP connection, http-{connection-id} as documented, keyed by the
        # peer address (unique among open connections; TLS transports cannot be weakly referenced).
        self._connection_ids: OrderedDict[object, str] = OrderedDict()
        self._next_connection = itertools.count(1)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/topics/{topic:.*}", self._counted("publish", self.publish))
        app.router.add_route("*", "/client-id/{client_id:.*}/status", self._counted("status", self.status))
        app.router.add_route("*", "/keep-alive", self._counted("keep_alive", self.keep_alive))

    def add_fallback_route(self, app: web.Application) -> None:
        """Every other path answers 400, as the service documents for an incorrect URL path.
        Added last, after every other API's routes."""
        app.router.add_route("*", "/{path:.*}", self._counted("other", self.incorrect_path))

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

    async def incorrect_path(self, request: web.Request) -> web.StreamResponse:
        return _error(400, f"incorrect URL path {request.path!r}: see the publish, status and keep-alive APIs")

    # -- shared checks --------------------------------------------------------

    def _identify(self, request: web.Request) -> tuple[str, str | None]:
        """Returns (the authenticated user, certificate common name) or raises `_Denied`.

        Basic credentials, when sent, must be right whatever else is presented,
        and name the user. Otherwise a client certificate verified by the
        instance CA authenticates; its Common Name is the user and client id.
        """
        common_name = certificate_common_name(request.transport)
        header = request.headers.get("Authorization")
        if header is None:
            if common_name is None:
                raise _Denied(_error(401, "missing Basic credentials", headers=_UNAUTHORIZED_HEADERS))
            return common_name, common_name
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            raise _Denied(_error(401, "the Authorization header is not Basic credentials", _UNAUTHORIZED_HEADERS))
        try:
            username, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise _Denied(_error(401, "malformed Basic credentials")) from None
        if not sep or not self.config.check_password(username, password):
            raise _Denied(_error(401, "bad username or password", headers=_UNAUTHORIZED_HEADERS))
        return username, common_name

    def refusal(self, request: web.Request) -> web.Response | None:
        """The 401 for a request without a user's credentials, or None when it has them."""
        try:
            self._identify(request)
        except _Denied as denied:
            return denied.response
        return None

    def _admit(self, username: str, client_id: str | None, *, connect_denied_status: int) -> None:
        """The CONNECT permission and the instance quota; raises `_Denied`."""
        if not self.config.acl.allows(username, "connect", client_id=client_id):
            raise _Denied(_error(connect_denied_status, f"user {username!r} lacks CONNECT permission"))
        if self._quota is not None and not self._quota.try_take():
            raise _Denied(_error(429, "instance TPS quota exceeded", headers={"Retry-After": "1"}))

    def _connection_client_id(self, request: web.Request) -> str:
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        ids = self._connection_ids
        client_id = ids.get(peer) if peer is not None else None
        if client_id is None:
            client_id = f"http-{next(self._next_connection)}"
            if peer is not None:
                ids[peer] = client_id
                if len(ids) > _REMEMBERED_CONNECTIONS:
                    ids.popitem(last=False)
        return client_id

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
            username, common_name = self._identify(request)
        except _Denied as denied:
            return denied.response
        path, _, raw_query = request.raw_path.partition("?")
        try:
            topic = decode_component(path[len("/topics/") :], "the topic")
            params = parse_query(raw_query, PARAMETER_SPELLINGS)
            problem = topic_name_error(topic)
            if problem:
                raise RequestError(problem)
            if topic.startswith("$"):
                raise RequestError(f"topic {topic!r} starts with '$': those topics belong to the service")
            settings, properties = publish_settings(params)
        except RequestError as exc:
            return _error(400, str(exc))
        # The ACL identity is the authenticated one; a 'username' parameter never replaces it.
        client_id = common_name or settings.get("client_id") or self._connection_client_id(request)
        try:
            self._admit(username, client_id, connect_denied_status=401)
        except _Denied as denied:
            return denied.response
        if not self.config.acl.allows(username, "publish", topic, client_id=client_id):
            return _error(401, f"user {username!r} is not allowed to publish to {topic!r}")

        payload = await self._read_body(request, self.config.max_payload)
        if payload is None:
            return _error(400, f"payload exceeds the maximum of {self.config.max_payload} bytes")
        if properties.get(Prop.PAYLOAD_FORMAT_INDICATOR) == 1:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                return _error(400, "PayloadFormatIndicator is 1 but the payload is not UTF-8")

        broker = self.broker
        message_id = broker.publish(
            Message.create(
                topic,
                payload,
                settings["qos"],
                settings["retained"],
                properties,
                client_id,
                broker.loop.time(),
            )
        )
        return web.Response(headers={"X-Message-Id": message_id})

    @staticmethod
    async def _read_body(request: web.Request, limit: int) -> bytes | None:
        """The request body, or None when it is longer than ``limit`` (declared or, chunked, as read)."""
        if request.content_length is not None and request.content_length > limit:
            return None
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > limit:
                return None
        return bytes(body)

    async def _inject(self, request: web.Request, fault: str) -> web.StreamResponse | None:
        if fault == "500":
            return _error(500, "injected fault")
        if fault == "429":
            retry_after = str(self.config.faults.retry_after)
            return _error(429, "injected throttling", headers={"Retry-After": retry_after})
        if fault == "reset":
            if request.transport is not None:
                request.transport.abort()
            raise _Reset()
        await asyncio.sleep(self.config.faults.delay_seconds)
        return None

    # -- online status ----------------------------------------------------------

    async def status(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "POST"):
            return _error(405, "status takes GET or POST", headers={"Allow": "GET, POST"})
        try:
            username, _ = self._identify(request)
            self._admit(username, None, connect_denied_status=403)
        except _Denied as denied:
            return denied.response
        raw = request.raw_path.partition("?")[0][len("/client-id/") : -len("/status")]
        try:
            client_id = decode_component(raw, "the client id")
        except RequestError as exc:
            return _error(400, str(exc))
        if not client_id:
            return _error(400, "incorrect URL path: the client id is empty")
        session = self.broker.sessions.get(client_id)
        online = session is not None and session.connection is not None
        return web.Response(body=b'{"online":true}' if online else b'{"online":false}', content_type="application/json")

    # -- keep-alive ---------------------------------------------------------------

    async def keep_alive(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return _error(405, "keep-alive takes POST", headers={"Allow": "POST"})
        try:
            username, _ = self._identify(request)
            self._admit(username, None, connect_denied_status=403)
        except _Denied as denied:
            return denied.response

        def refuse(message: str) -> web.Response:
            return _json(400, {"success": False, "error": message})

        try:
            params = parse_query(request.raw_path.partition("?")[2])
            client_id = params.get("client-id")
            if not client_id:
                return refuse("client-id is required")
            if "interval" not in params:
                return refuse("interval is required")
            interval = _uint(params, "interval", MAX_UINT32) or 0
        except RequestError as exc:
            return refuse(str(exc))
        low, high = KEEPALIVE_RANGE
        if not low <= interval <= high:
            return refuse(f"interval {interval} is outside {low}..{high} seconds")
        problem = self.broker.set_keepalive(client_id, interval)
        if problem:
            return refuse(problem)
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
