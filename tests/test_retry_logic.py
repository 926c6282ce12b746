"""Retries, 429 and Retry-After, time-outs and throttling of the client, on an injected transport and clock:
no socket, no sleeping (unit tests of pure logic)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tdmq_beam import (
    AsyncTdmqClient,
    InvalidRequestError,
    MqttMessage,
    RateLimitedError,
    RetryPolicy,
    ServerError,
    TdmqConnection,
    TransportError,
)
from tdmq_beam.errors import RequestTimeoutError
from tdmq_beam.service.http_transport import HttpAnswer
from tdmq_beam.service.retry import Clock


class FakeClock(Clock):
    """Time that moves only when the client sleeps."""

    def __init__(self) -> None:
        self.time = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    def wall(self) -> float:
        return 1_700_000_000 + self.time

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += seconds


class ScriptedTransport:
    """Answers requests from a script: an `HttpAnswer`, or an exception to raise."""

    def __init__(self, *script) -> None:
        self.script = list(script)
        self.requests: list[tuple[str, str, bytes]] = []

    async def request(self, method: str, target: str, body: bytes = b"") -> HttpAnswer:
        self.requests.append((method, target, body))
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        return step

    def close(self) -> None:
        pass


def ok(message_id: str = "ID-1") -> HttpAnswer:
    return HttpAnswer(200, {"x-message-id": message_id}, b"")


def answer(status: int, text: str = "", **headers: str) -> HttpAnswer:
    return HttpAnswer(status, {name.replace("_", "-").lower(): value for name, value in headers.items()}, text.encode())


def run(transport: ScriptedTransport, clock: FakeClock, call, **connection_options):
    connection = TdmqConnection("http://service.invalid", username="u", password="p", **connection_options)

    async def go():
        async with AsyncTdmqClient(connection, transport=transport, clock=clock) as client:
            return await call(client), client

    started = time.monotonic()
    result = asyncio.run(go())
    assert time.monotonic() - started < 5  # the fake clock did the waiting
    return result


MESSAGE = MqttMessage("devices/d1/commands", b"on")


def test_429_waits_at_least_retry_after_then_succeeds():
    clock = FakeClock()
    transport = ScriptedTransport(answer(429, '{"error": "quota"}', retry_after="7"), ok("ID-7"))
    (message_id, attempts), client = run(transport, clock, lambda c: c.publish_with_attempts(MESSAGE))
    assert (message_id, attempts) == ("ID-7", 2)
    assert len(clock.sleeps) == 1 and clock.sleeps[0] >= 7
    assert client.retries == 1
    assert [method for method, _, _ in transport.requests] == ["POST", "POST"]


def test_server_errors_retry_with_capped_backoff_until_attempts_run_out():
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.2, max_backoff=1.0, deadline=1000)
    with pytest.raises(ServerError) as caught:
        run(ScriptedTransport(answer(500, "boom")), clock, lambda c: c.publish(MESSAGE), retry=policy)
    assert caught.value.attempts == 5 and caught.value.status == 500
    assert len(clock.sleeps) == 4
    caps = [min(1.0, 0.2 * 2**n) for n in range(4)]
    assert all(0 <= wait <= cap for wait, cap in zip(clock.sleeps, caps, strict=True))


def test_timeouts_are_retried_and_typed():
    clock = FakeClock()
    transport = ScriptedTransport(RequestTimeoutError("timed out"), RequestTimeoutError("timed out"), ok())
    (_, attempts), _ = run(transport, clock, lambda c: c.publish_with_attempts(MESSAGE))
    assert attempts == 3
    with pytest.raises(RequestTimeoutError) as caught:
        run(ScriptedTransport(RequestTimeoutError("timed out")), FakeClock(), lambda c: c.is_online("dev-1"))
    assert isinstance(caught.value, TransportError) and caught.value.kind == "transport"
    assert caught.value.attempts == 5 and "status 'dev-1'" in caught.value.message


def test_client_errors_are_not_retried():
    clock = FakeClock()
    with pytest.raises(InvalidRequestError) as caught:
        run(ScriptedTransport(answer(400, '{"error": "invalid qos"}'), ok()), clock, lambda c: c.publish(MESSAGE))
    assert caught.value.attempts == 1 and "invalid qos" in str(caught.value)
    assert clock.sleeps == []


def test_a_retry_after_past_the_deadline_gives_up_at_once():
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=5, deadline=5)
    with pytest.raises(RateLimitedError) as caught:
        run(ScriptedTransport(answer(429, retry_after="60"), ok()), clock, lambda c: c.publish(MESSAGE), retry=policy)
    assert caught.value.attempts == 1 and caught.value.retry_after == 60
    assert clock.sleeps == []


def test_adaptive_throttling_holds_requests_back_after_429s():
    clock = FakeClock()

    async def many(client):
        return await client.publish_batch([MESSAGE] * 40, concurrency=1)

    results, client = run(ScriptedTransport(answer(429, retry_after="0")), clock, many, retry=RetryPolicy.none())
    assert all(isinstance(result.error, RateLimitedError) for result in results)
    assert client.throttled > 0  # held back client-side, as Beam's AdaptiveThrottler says


def test_tps_cap_paces_requests_on_the_clock():
    clock = FakeClock()

    async def many(client):
        return await client.publish_batch([MESSAGE] * 20, concurrency=4)

    results, _ = run(ScriptedTransport(ok()), clock, many, tps=10)
    assert all(result.ok for result in results)
    assert clock.time == pytest.approx(1.0, abs=0.05)  # a burst of 10, then 10 more at 10/s


def test_status_and_keep_alive_share_the_transport():
    transport = ScriptedTransport(
        HttpAnswer(200, {}, b'{"online": true}'), HttpAnswer(200, {}, b'{"success": true, "keepalive": 90}')
    )

    async def both(client):
        return await client.is_online("dev/1"), await client.set_keepalive("dev/1", 90)

    (online, keepalive), _ = run(transport, FakeClock(), both)
    assert (online, keepalive) == (True, 90)
    assert transport.requests == [
        ("GET", "/client-id/dev%2F1/status", b""),
        ("POST", "/keep-alive?client-id=dev%2F1&interval=90", b""),
    ]


def test_an_accepted_publish_without_a_message_id_is_published_and_not_sent_again():
    clock = FakeClock()
    transport = ScriptedTransport(HttpAnswer(200, {}, b""), ok("never-reached"))
    (message_id, attempts), client = run(transport, clock, lambda c: c.publish_with_attempts(MESSAGE))
    assert (message_id, attempts) == (None, 1)
    assert len(transport.requests) == 1 and client.retries == 0
    assert client.published_without_id == 1
