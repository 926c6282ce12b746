"""The lean publish client against a scripted HTTP server on a raw socket (HTTP edge cases)."""

from __future__ import annotations

import asyncio

import pytest

from tdmq_beam.errors import TransportError
from tdmq_beam.service.http_transport import HttpTransport

OK = b"HTTP/1.1 200 OK\r\nX-Message-Id: ABC\r\nContent-Length: 0\r\n\r\n"


class ScriptedServer:
    """Answers each request with ``answer(request_bytes)``: bytes to send, or None to close."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.open_now = 0
        self.most_open = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
                             .split(b":")[1])  # fmt: skip
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                reply = await self.answer(head + body)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if b"connection: close" in reply.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


async def serve(answer):
    server = ScriptedServer(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    return server, listener, port


def publisher(port: int, **options) -> HttpTransport:
    settings = {"ssl_context": None, "authorization": "Basic dTpw", "timeout": 2.0, "max_connections": 8}
    settings.update(options)
    return HttpTransport("127.0.0.1", port, **settings)


async def ok(_: bytes) -> bytes:
    return OK


def test_request_bytes_and_keep_alive_reuse():
    async def run():
        server, listener, port = await serve(ok)
        client = publisher(port)
        for index in range(20):
            answer = await client.request("POST", f"/topics/t?qos={index % 3}", b"payload")
            assert (answer.status, answer.headers["x-message-id"], answer.body) == (200, "ABC", b"")
        client.close()
        listener.close()
        return server

    server = asyncio.run(run())
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /topics/t?qos=0 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAuthorization: Basic dTpw\r\n" in first and first.endswith(b"\r\n\r\npayload")


def test_connection_close_and_http_1_0_answers_open_new_connections():
    replies = iter(
        [
            b"HTTP/1.1 200 OK\r\nX-Message-Id: A\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nX-Message-Id: B\r\nContent-Length: 0\r\n\r\n",
        ]
        * 2
    )

    async def answer(_: bytes) -> bytes:
        return next(replies)

    async def run():
        server, listener, port = await serve(answer)
        client = publisher(port)
        ids = [(await client.request("POST", "/topics/t", b"x")).headers["x-message-id"] for _ in range(4)]
        listener.close()
        return server, ids

    server, ids = asyncio.run(run())
    assert ids == ["A", "B", "A", "B"]
    assert server.connections == 4  # neither answer lets the connection be reused


def test_chunked_error_body():
    chunked = (
        b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
        b'9\r\n{"error":\r\n8\r\n "nope"}\r\n0\r\n\r\n'
    )

    async def answer(_: bytes) -> bytes:
        return chunked

    async def run():
        _, listener, port = await serve(answer)
        result = await publisher(port).request("POST", "/topics/t", b"x")
        listener.close()
        return result

    result = asyncio.run(run())
    assert result.status == 400 and result.body == b'{"error": "nope"}'


@pytest.mark.parametrize(
    ("reply", "problem"),
    [(None, "connection lost before the response"), (b"SMTP ready\r\n\r\n", "malformed HTTP response")],
)
def test_early_close_and_garbage_are_transport_errors(reply, problem):
    async def answer(_: bytes):
        return reply

    async def run():
        _, listener, port = await serve(answer)
        client = publisher(port)
        with pytest.raises(TransportError, match=problem):
            await client.request("POST", "/topics/t", b"x")
        listener.close()

    asyncio.run(run())


def test_timeout_drops_the_connection():
    calls = []

    async def answer(_: bytes):
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(1.0)
        return OK

    async def run():
        server, listener, port = await serve(answer)
        client = publisher(port, timeout=0.2)
        with pytest.raises(TransportError, match="timed out"):
            await client.request("POST", "/topics/t", b"x")
        assert (await client.request("POST", "/topics/t", b"x")).status == 200
        listener.close()
        return server

    assert asyncio.run(run()).connections == 2


def test_connections_are_bounded_and_refusal_is_clear():
    async def slow(_: bytes) -> bytes:
        await asyncio.sleep(0.01)
        return OK

    async def run():
        server, listener, port = await serve(slow)
        client = publisher(port, max_connections=4)
        answers = await asyncio.gather(*(client.request("POST", "/topics/t", b"x") for _ in range(60)))
        listener.close()
        return server, answers

    server, answers = asyncio.run(run())
    assert len(answers) == 60 and server.most_open <= 4 and server.connections <= 4

    async def refused():
        with pytest.raises(TransportError, match=r"cannot connect to 127\.0\.0\.1:9"):
            await HttpTransport(
                "127.0.0.1", 9, ssl_context=None, authorization=None, timeout=1, max_connections=1
            ).request("POST", "/topics/t", b"x")

    asyncio.run(refused())
