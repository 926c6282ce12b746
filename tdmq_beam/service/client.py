"""Clients of TDMQ for MQTT: `AsyncTdmqClient`, and `TdmqClient`, its synchronous face.

The data-plane calls (publish, online status, keep-alive) run on the lean HTTP/1.1 pool of
`http_transport` (httptools); the signed cloud API calls on aiohttp (`cloud_api`).

Usage::

    conn = TdmqConnection("http://127.0.0.1:8080", username="user0", password="secret0")
    with TdmqClient(conn) as client:
        message_id = client.publish(MqttMessage("devices/dev-1/commands", b'{"on": true}'))
        client.is_online("dev-1")

    async with AsyncTdmqClient(conn) as client:
        message_id = await client.publish(MqttMessage("devices/dev-1/commands", b"..."))

A client for the cloud API alone needs no connection: ``TdmqClient(cloud=CloudApiConfig(...))``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp

from tdmq_beam.errors import (
    ConfigurationError,
    InvalidMessageError,
    InvalidRequestError,
    ServerError,
    TdmqError,
    TransportError,
    error_for_status,
)
from tdmq_beam.json_documents import load_json
from tdmq_beam.mqtt.topics import shared_subscription
from tdmq_beam.rules.cloud_actions import CLOUD_ACTIONS
from tdmq_beam.rules.limits import KEEPALIVE_RANGE
from tdmq_beam.rules.token_bucket import TokenBucket
from tdmq_beam.service.cloud_api import CLOUD_IN_FLIGHT, ClientDetails, CloudApiCaller, CloudApiConfig
from tdmq_beam.service.concurrency import run_bounded
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.service.http_transport import HttpAnswer, HttpTransport, Transport
from tdmq_beam.service.message import MqttMessage
from tdmq_beam.service.retry import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from apache_beam.io.components.adaptive_throttler import AdaptiveThrottler

__all__ = ["KEEPALIVE_RANGE", "AsyncTdmqClient", "PublishResult", "TdmqClient", "new_event_loop"]

_LOGGER = logging.getLogger(__name__)

_THROTTLE_DELAY = 0.2
"""Seconds a request waits each time the adaptive throttle holds it back."""

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop event loop where uvloop is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What became of one message: its id, or the error that stopped it, the attempts made,
    and the seconds it took, retries included."""

    message_id: str | None
    attempts: int
    error: TdmqError | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; the backoff applies instead


def _server_message(text: str) -> str:
    try:
        document = load_json(text)
    except ValueError:
        return text[:300] or "no message"
    if isinstance(document, dict):
        return str(document.get("error") or document.get("message") or document)[:300]
    return text[:300]


class AsyncTdmqClient:
    """The data-plane and cloud API calls on one event loop, with a keep-alive connection pool.

    Every data-plane call goes through the connection's `RetryPolicy`, every cloud
    API call through the cloud config's. Open with ``async with`` or `open`;
    secrets are resolved then.

    Args:
        connection: the instance's access point and credentials, needed for the
            data plane (publish, status, keep-alive). None: a cloud API client only.
        cloud: cloud API credentials, needed for `describe_client` and `call_cloud`.
        transport: the data-plane transport; by default an `HttpTransport` to
            the connection's endpoint, made on `open`. Tests give their own.
        clock: time and sleeping for retries and throttling; by default the
            real ones. Tests give a fake that does not sleep.
    """

    def __init__(
        self,
        connection: TdmqConnection | None,
        cloud: CloudApiConfig | None = None,
        *,
        transport: Transport | None = None,
        clock: Clock | None = None,
    ) -> None:
        if connection is None and cloud is None:
            raise ConfigurationError("a client needs a TdmqConnection, a CloudApiConfig, or both")
        self.connection = connection
        self.cloud = cloud
        self._transport = transport
        self._own_transport = transport is None
        self._clock = clock or SYSTEM_CLOCK
        self._session: aiohttp.ClientSession | None = None
        self._cloud: CloudApiCaller | None = None
        self._bucket = TokenBucket(connection.tps, clock=self._clock.now) if connection and connection.tps else None
        self._throttler: AdaptiveThrottler | None = None  # made on the first 429
        self._open = False
        self.retries = 0
        self.throttled = 0
        self.published_without_id = 0

    async def open(self) -> AsyncTdmqClient:
        """Resolves secrets, builds TLS, opens the pool.

        Raises:
            ConfigurationError: a secret or certificate cannot be read.
        """
        if self._open:
            return self
        connection = self.connection
        if self._transport is None and connection is not None:
            endpoint = urlsplit(connection.endpoint)
            self._transport = HttpTransport(
                endpoint.hostname or "",
                endpoint.port or (443 if connection.is_tls else 80),
                ssl_context=connection.ssl_context(),
                authorization=connection.authorization_header(),
                timeout=connection.timeout,
                max_connections=connection.max_in_flight,
            )
        if self.cloud is not None:
            tls = self.cloud.ssl_context()
            connector = aiohttp.TCPConnector(ssl=tls) if tls is not None else None
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), connector=connector)
            self._cloud = CloudApiCaller(self.cloud, self._session)
        self._open = True
        return self

    async def close(self) -> None:
        if self._transport is not None and self._own_transport:
            self._transport.close()
            self._transport = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._open = False

    async def __aenter__(self) -> AsyncTdmqClient:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def cloud_throttled(self) -> int:
        """Cloud API requests that waited for the cloud rate limit."""
        return self._cloud.throttled if self._cloud is not None else 0

    def _count_retry(self, error: TdmqError) -> None:
        self.retries += 1

    def _require_open(self) -> None:
        if not self._open:
            raise ConfigurationError("the client is not open: use 'async with' or await open()")

    @property
    def max_in_flight(self) -> int:
        """Calls at once by default: the connection's ``max_in_flight``; `CLOUD_IN_FLIGHT` without one."""
        return self.connection.max_in_flight if self.connection is not None else CLOUD_IN_FLIGHT

    @property
    def _plane(self) -> TdmqConnection:
        """The connection, for data-plane calls."""
        if self.connection is None:
            raise ConfigurationError("this client was made for the cloud API only: data-plane calls need a connection")
        return self.connection

    async def _with_retries(self, call: Callable[[], Awaitable[T]]) -> tuple[T, int]:
        self._require_open()
        return await self._plane.retry.run(call, on_retry=self._count_retry, clock=self._clock)

    # -- the data plane: one request path, one mapping of answers to errors -----------

    async def _request(self, method: str, target: str, body: bytes = b"") -> HttpAnswer:
        """One data-plane request after the rate limits; a non-200 answer raises its `TdmqError`."""
        if self._throttler is not None or self._bucket is not None:
            await self._throttle()
        assert self._transport is not None
        return self._accepted(await self._transport.request(method, target, body))

    def _accepted(self, answer: HttpAnswer) -> HttpAnswer:
        """The answer if it is a 200; else the `TdmqError` it means (the one mapping of answers)."""
        status = answer.status
        if status == 200:
            if self._throttler is not None:
                self._throttler.successful_request(self._clock.wall() * 1000)
            return answer
        if status == 429 and self._throttler is None and self._plane.adaptive_throttling:
            # Imported on the first 429 only: a client-only user does not pay for Beam's import.
            from apache_beam.io.components.adaptive_throttler import AdaptiveThrottler

            self._throttler = AdaptiveThrottler(window_ms=60_000, bucket_ms=1_000, overload_ratio=1.25)
        text = answer.body.decode("utf-8", "replace")
        raise error_for_status(status, _server_message(text), _retry_after(answer.headers.get("retry-after")))

    async def _throttle(self) -> None:
        """Waits for the TPS cap, and (after a 429) for Beam's adaptive client-side throttle."""
        clock = self._clock
        if self._throttler is not None:
            while self._throttler.throttle_request(clock.wall() * 1000):
                self.throttled += 1
                await clock.sleep(random.uniform(0.5, 1.5) * _THROTTLE_DELAY)
        if self._bucket is not None:
            wait = self._bucket.reserve()
            if wait:
                await clock.sleep(wait)

    async def _json_call(self, method: str, target: str, what: str, client_id: str) -> dict:
        try:
            answer = await self._request(method, target)
        except TransportError as exc:
            raise type(exc)(f"{what} {client_id!r}: {exc.message}") from None
        text = answer.body.decode("utf-8", "replace")
        try:
            document = load_json(text)
        except ValueError:
            raise ServerError(f"{what} answer is not JSON: {text[:200]}", status=answer.status) from None
        if not isinstance(document, dict):
            raise ServerError(f"{what} answer is not a JSON object: {text[:200]}", status=answer.status)
        return document

    # -- publish --------------------------------------------------------------

    async def publish(self, message: MqttMessage) -> str | None:
        """Publishes one message; returns the service's message id (None when the service accepted
        it with a 200 but sent no ``X-Message-Id``: it is published, and not sent again).

        Raises:
            InvalidMessageError: the payload is over the connection's cap.
            TdmqError: the service refused it, or retries ran out.
        """
        return (await self.publish_with_attempts(message))[0]

    async def publish_with_attempts(self, message: MqttMessage) -> tuple[str | None, int]:
        """Like `publish`, also returning the number of attempts."""
        problem = message.payload_problem(self._plane.max_payload_bytes)
        if problem:
            raise InvalidMessageError(problem, attempts=0)
        return await self._with_retries(lambda: self._publish_once(message))

    async def publish_batch(
        self, messages: Sequence[MqttMessage], concurrency: int | None = None
    ) -> list[PublishResult]:
        """Publishes many messages concurrently; never raises for one message's failure.

        At most the connection's ``max_in_flight`` (or ``concurrency``) at once.

        Returns:
            One `PublishResult` per message, in input order.
        """
        self._require_open()
        results = await run_bounded(messages, self._publish_result, concurrency or self._plane.max_in_flight)
        return results  # type: ignore[return-value]  # _publish_result never raises

    async def _publish_result(self, message: MqttMessage) -> PublishResult:
        """`publish_with_attempts` as a `PublishResult`, timed."""
        now = self._clock.now
        started = now()
        try:
            message_id, attempts = await self.publish_with_attempts(message)
        except TdmqError as error:
            return PublishResult(None, error.attempts, error, now() - started)
        return PublishResult(message_id, attempts, None, now() - started)

    async def _publish_once(self, message: MqttMessage) -> str | None:
        try:
            answer = await self._request("POST", message.request_target(), message.payload)
        except TransportError as exc:
            raise type(exc)(f"publish {message.topic!r}: {exc.message}") from None
        message_id = answer.headers.get("x-message-id")
        if not message_id:
            # A 200 means published: sending it again would deliver it twice. Recorded without an id.
            self.published_without_id += 1
            return None
        return message_id

    # -- status and keep-alive ------------------------------------------------------

    async def is_online(self, client_id: str) -> bool:
        """Whether ``client_id`` is connected now (the online-status API)."""
        if not isinstance(client_id, str) or not client_id:
            raise InvalidRequestError("client_id must be a non-empty str")
        target = f"/client-id/{quote(client_id, safe='')}/status"
        document, _ = await self._with_retries(lambda: self._json_call("GET", target, "status", client_id))
        online = document.get("online")
        if not isinstance(online, bool):
            raise ServerError(f"status answer has no boolean 'online': {str(document)[:200]}")
        return online

    async def set_keepalive(self, client_id: str, seconds: int) -> int:
        """Changes an online client's server-side keep-alive; returns the seconds applied.

        Raises:
            InvalidRequestError: ``seconds`` is outside 30..1200 (no call is
                made), or the service refused (client offline, keep-alive-0 session).
        """
        return (await self.set_keepalive_with_attempts(client_id, seconds))[0]

    async def set_keepalive_with_attempts(self, client_id: str, seconds: int) -> tuple[int, int]:
        """Like `set_keepalive`, also returning the number of attempts."""
        low, high = KEEPALIVE_RANGE
        if type(seconds) is not int or not low <= seconds <= high:
            raise InvalidRequestError(
                f"keep-alive must be an int within {low}..{high} seconds, got {seconds!r}", attempts=0
            )
        if not isinstance(client_id, str) or not client_id:
            raise InvalidRequestError("client_id must be a non-empty str", attempts=0)
        target = f"/keep-alive?client-id={quote(client_id, safe='')}&interval={seconds}"
        document, attempts = await self._with_retries(lambda: self._json_call("POST", target, "keep-alive", client_id))
        if document.get("success") is not True:
            raise ServerError(f"keep-alive answer without success: {str(document)[:200]}")
        return int(document.get("keepalive", seconds)), attempts

    # -- cloud API ------------------------------------------------------------------------

    async def describe_client(self, client_id: str) -> ClientDetails | None:
        """The client's details from the cloud API, or None when the service does not know it.

        Raises:
            ConfigurationError: the client was made without a `CloudApiConfig`.
            CloudApiError: ``AuthFailure.*`` and other refusals; ``RequestLimitExceeded``
                after retries.
        """
        if not isinstance(client_id, str) or not client_id:
            raise InvalidRequestError("client_id must be a non-empty str")
        details, _ = await self._cloud_caller("describe_client").describe_client(client_id)
        return details

    async def shared_subscription_lag(self, expression: str) -> int:
        """The backlog of a shared subscription, ``$share/{group}/{filter}``: its messages the
        service holds not yet acknowledged (``DescribeSharedSubscriptionLag``).

        Raises:
            ConfigurationError: the client was made without a `CloudApiConfig`.
            InvalidRequestError: not a ``$share/{group}/{filter}`` expression.
            CloudApiError: the service's refusal.
        """
        if shared_subscription(expression) is None:
            raise InvalidRequestError(f"a shared subscription is $share/{{group}}/{{filter}}, got {expression!r}")
        caller = self._cloud_caller("shared_subscription_lag")
        response, _ = await caller.call_with_retries(
            "DescribeSharedSubscriptionLag",
            {"InstanceId": caller.config.instance_id, "SharedSubscription": expression},
        )
        return int(response.get("Lag", 0))

    async def call_cloud(self, action: str, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """One cloud API action (a row of `CLOUD_ACTIONS`), signed, rate-limited per action and
        retried: the ``Response`` object and the attempts made.

        Raises:
            ConfigurationError: the client was made without a `CloudApiConfig`, or the action is unknown.
            CloudApiError: the service's refusal (``Error.Code``), or ``RequestLimitExceeded`` after retries.
        """
        caller = self._cloud_caller(action)
        if action not in CLOUD_ACTIONS:
            raise ConfigurationError(f"unknown cloud API action {action!r}; known: {sorted(CLOUD_ACTIONS)}")
        return await caller.call_with_retries(action, params)

    def _cloud_caller(self, what: str) -> CloudApiCaller:
        if self._cloud is None:
            self._require_open()
            raise ConfigurationError(f"{what} needs a CloudApiConfig (cloud=...)")
        return self._cloud


def _shut_down(loop: asyncio.AbstractEventLoop, thread: threading.Thread, client: AsyncTdmqClient) -> None:
    if loop.is_closed():
        return
    try:
        asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=10)
    except Exception:  # closing is best effort; the loop stops regardless
        _LOGGER.debug("closing the client's session failed", exc_info=True)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    if not thread.is_alive():
        loop.close()


class TdmqClient:
    """The synchronous client: `AsyncTdmqClient` on an event loop of its own thread.

    Args:
        connection: the instance's access point and credentials; None for a
            cloud API client only.
        cloud: cloud API credentials, needed for `describe_client` and `call_cloud`.

    Raises:
        ConfigurationError: a secret or certificate cannot be read.
    """

    def __init__(self, connection: TdmqConnection | None = None, cloud: CloudApiConfig | None = None) -> None:
        self.connection = connection
        self.cloud = cloud
        self._loop = new_event_loop()
        thread = threading.Thread(target=self._loop.run_forever, name="tdmq-client", daemon=True)
        thread.start()
        self.aio = AsyncTdmqClient(connection, cloud)
        # Closes the pool and stops the loop thread on close(), or when the client is garbage.
        self._finalizer = weakref.finalize(self, _shut_down, self._loop, thread, self.aio)
        try:
            self.run(self.aio.open())
        except BaseException:
            self._finalizer()
            raise

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs a coroutine on the client's loop and waits for its result."""
        return self.submit(coroutine).result()

    def publish(self, message: MqttMessage) -> str | None:
        return self.run(self.aio.publish(message))

    def publish_batch(self, messages: Sequence[MqttMessage], concurrency: int | None = None) -> list[PublishResult]:
        return self.run(self.aio.publish_batch(messages, concurrency))

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Starts a coroutine on the client's loop and returns at once; the future holds its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def is_online(self, client_id: str) -> bool:
        return self.run(self.aio.is_online(client_id))

    def set_keepalive(self, client_id: str, seconds: int) -> int:
        return self.run(self.aio.set_keepalive(client_id, seconds))

    def describe_client(self, client_id: str) -> ClientDetails | None:
        return self.run(self.aio.describe_client(client_id))

    def shared_subscription_lag(self, expression: str) -> int:
        return self.run(self.aio.shared_subscription_lag(expression))

    def call_cloud(self, action: str, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        return self.run(self.aio.call_cloud(action, params))

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> TdmqClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TdmqClient({self.connection or self.cloud!r})"
