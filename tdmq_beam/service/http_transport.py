"""The data-plane HTTP transport: publish, online status and keep-alive all go through it.

aiohttp's ``ClientSession`` spends most of each small request in its own
Python machinery (request and response objects, header multidicts, tracing,
timeout contexts). For the requests the connector makes millions of times,
`HttpTransport` writes the request bytes directly on a keep-alive connection
and parses the answer with ``httptools`` (the C parser uvicorn uses):
``benchmarks/client_publish.py`` measures it against a tuned bare aiohttp
loop. Only the cloud API stays on aiohttp.

`Transport` is the seam: the client takes any object with its ``request`` and
``close``, so tests can answer without a socket. Transport failures are mapped
to `TransportError` (`RequestTimeoutError` for time-outs) here, and only here.

One request at a time per connection (no pipelining); at most
``max_connections`` connections; a connection the server closes or that
fails is dropped, never reused.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import NamedTuple, Protocol

import httptools

from tdmq_beam.errors import RequestTimeoutError, TransportError
from tdmq_beam.service.connection import tls_failure

__all__ = ["HttpAnswer", "HttpTransport", "Transport"]

_USER_AGENT = b"tdmq-beam"


class HttpAnswer(NamedTuple):
    """A response: status, headers by lower-case name, body."""

    status: int
    headers: dict[str, str]
    body: bytes


class Transport(Protocol):
    """What the client needs to talk to the data plane."""

    async def request(self, method: str, target: str, body: bytes = b"") -> HttpAnswer:
        """Sends one request (``target``: path and query, already encoded) and returns the answer.

        Raises:
            TransportError: no answer (`RequestTimeoutError` when it took too long).
        """
        ...

    def close(self) -> None:
        """Closes idle connections."""


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection."""

    __slots__ = ("_body", "_headers", "_loop", "_parser", "_timer", "_transport", "_waiter", "closed")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport  # set by connection_made, before any request
        self._waiter: asyncio.Future | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"malformed HTTP response: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        detail = f"{type(exc).__name__}: {exc}" if exc else "the server closed the connection"
        self._fail(f"connection lost before the response ({detail})")

    # -- httptools callbacks --------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._timer is not None:
            self._timer.cancel()
        answer = HttpAnswer(self._parser.get_status_code(), self._headers, b"".join(self._body))
        if not self._parser.should_keep_alive():
            self.close()
        waiter.set_result(answer)

    # -- requests -------------------------------------------------------------------

    def request(self, data: bytes, timeout: float) -> asyncio.Future:
        """Sends one request; the future resolves to its `HttpAnswer` or a `TransportError`."""
        self._headers = {}
        self._body = []
        self._waiter = waiter = self._loop.create_future()
        self._timer = self._loop.call_later(timeout, self._fail, "timed out", RequestTimeoutError)
        self._transport.write(data)
        return waiter

    def _fail(self, reason: str, error: type[TransportError] = TransportError) -> None:
        if self._timer is not None:
            self._timer.cancel()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error(reason))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()


class HttpTransport:
    """Requests to one server over a bounded pool of keep-alive connections (a `Transport`).

    Args:
        host, port: the server.
        ssl_context: TLS context for https, else None.
        authorization: the ``Authorization`` header value, or None.
        timeout: seconds for one request, connecting included.
        max_connections: connections open at most.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        authorization: str | None,
        timeout: float,
        max_connections: int,
    ) -> None:
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._timeout = timeout
        host_header = host if ":" not in host else f"[{host}]"
        default_port = 443 if ssl_context is not None else 80
        if port != default_port:
            host_header += f":{port}"
        head = [f"Host: {host_header}".encode("ascii"), b"User-Agent: " + _USER_AGENT]
        if authorization is not None:
            head.append(f"Authorization: {authorization}".encode("latin-1"))
        head.append(b"Content-Type: application/octet-stream")
        self._head = b"\r\n".join(head) + b"\r\nContent-Length: "
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def request(self, method: str, target: str, body: bytes = b"") -> HttpAnswer:
        """Sends ``body`` to ``target`` (path and query, already encoded) with ``method``.

        Raises:
            TransportError: no connection, a reset or a malformed answer; `RequestTimeoutError`
                when connecting or answering took longer than the timeout.
        """
        data = b"".join(
            (
                method.encode("ascii"), b" ", target.encode("ascii"), b" HTTP/1.1\r\n", self._head,
                str(len(body)).encode(), b"\r\n\r\n", body,
            )
        )  # fmt: skip
        async with self._slots:
            connection = await self._connection()
            answer = await connection.request(data, self._timeout)
            if not connection.closed:
                self._idle.append(connection)
            return answer

    async def _connection(self) -> _Connection:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                ),
                self._timeout,
            )
        except asyncio.TimeoutError:
            raise RequestTimeoutError(f"connecting to {self._host}:{self._port} timed out") from None
        except ssl.SSLError as exc:
            raise tls_failure(self._host, self._port, exc) from None
        except OSError as exc:
            raise TransportError(f"cannot connect to {self._host}:{self._port}: {exc.strerror or exc}") from None
        return connection

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
