"""Publishes/s and CPU per publish: `AsyncTdmqClient` side by side with a bare aiohttp loop.

Both run in this process, on one core, against the same server (the emulator,
and nginx answering 200 with an X-Message-Id when nginx is installed), which
runs pinned to the other core. The bare loop is the tuned baseline: a few
long-lived workers pulling from one shared iterator, uvloop, a pre-encoded URL,
no cookie jar. The client does what it does for real: encodes each message's
request target, applies the retry policy, checks the answer.

Rounds alternate between the two so drift affects both; the best round of
each is reported. The ratio is taken against nginx when present (the client
is then the bottleneck), else against the emulator.

Last line: ``RESULT client_publish ratio_vs_raw=R us_per_msg=U``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import os
import sys
import time

import aiohttp
from yarl import URL

sys.path.insert(0, os.path.dirname(__file__))

from servers import CLIENT_CPU, emulator_server, nginx_server, pin

from tdmq_beam import AsyncTdmqClient, MqttMessage, TdmqConnection
from tdmq_beam.service.client import new_event_loop

PAYLOAD = b'{"command": "reboot", "seq": 1}'
TOPIC = "devices/dev-1/commands"


def prebuilt_messages(_impulse: bytes, n: int) -> list[MqttMessage]:
    """The benchmarks' n messages, made once per process: the runs compare publishing, not message making."""
    return _messages(n)


@functools.lru_cache(maxsize=2)
def _messages(n: int) -> list[MqttMessage]:
    return [MqttMessage(TOPIC, PAYLOAD) for _ in range(n)]


async def bare_loop(base_url: str, n: int, concurrency: int) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(b"user0:secret0").decode()}
    url = URL(f"{base_url}/topics/devices%2Fdev-1%2Fcommands?qos=1&retained=false", encoded=True)
    ok = 0
    jobs = iter(range(n))
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers=headers,
    ) as session:

        async def worker() -> None:
            nonlocal ok
            for _ in jobs:
                async with session.post(url, data=PAYLOAD) as response:
                    if response.status == 200 and response.headers.get("X-Message-Id"):
                        ok += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


async def tdmq_client(base_url: str, n: int, concurrency: int) -> int:
    connection = TdmqConnection(base_url, username="user0", password="secret0", max_in_flight=concurrency)
    messages = [MqttMessage(TOPIC, PAYLOAD)] * n
    async with AsyncTdmqClient(connection) as client:
        results = await client.publish_batch(messages)
    return sum(result.ok for result in results)


def measure(loop: asyncio.AbstractEventLoop, runner, base_url: str, n: int, concurrency: int) -> tuple[float, float]:
    """(messages/s, CPU microseconds per message) of one round."""
    cpu = time.process_time()
    wall = time.perf_counter()
    ok = loop.run_until_complete(runner(base_url, n, concurrency))
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    if ok != n:
        raise SystemExit(f"{runner.__name__}: only {ok} of {n} publishes succeeded")
    return n / wall, cpu / n * 1e6


def compare(name: str, base_url: str, n: int, concurrency: int, rounds: int) -> tuple[float, float]:
    loop = new_event_loop()
    best = {"bare aiohttp loop": (0.0, float("inf")), "AsyncTdmqClient": (0.0, float("inf"))}
    runners = {"bare aiohttp loop": bare_loop, "AsyncTdmqClient": tdmq_client}
    loop.run_until_complete(bare_loop(base_url, min(n, 2000), concurrency))  # warm-up
    for _ in range(rounds):
        for label, runner in runners.items():
            rate, us = measure(loop, runner, base_url, n, concurrency)
            best[label] = (max(best[label][0], rate), min(best[label][1], us))
    loop.close()
    print(f"\n{name} ({n} publishes x {rounds} rounds, {concurrency} in flight):")
    for label, (rate, us) in best.items():
        print(f"  {label:18s} {rate:9,.0f} publishes/s  {us:6.1f} us CPU/publish")
    raw_rate, _ = best["bare aiohttp loop"]
    client_rate, client_us = best["AsyncTdmqClient"]
    print(f"  ratio client/raw: {client_rate / raw_rate:.3f}")
    return client_rate / raw_rate, client_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="publishes per round (default 20,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per contender (default 3)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    args = parser.parse_args()
    pin(0, CLIENT_CPU)

    with emulator_server() as emulator:
        ratio, us = compare("emulator", emulator.http_url, args.n, args.concurrency, args.rounds)
    with nginx_server() as nginx:
        if nginx is None:
            print("\nnginx is not installed: the ratio is against the emulator (apt-get install nginx-light)")
        else:
            ratio, us = compare("nginx", nginx.http_url, args.n, args.concurrency, args.rounds)
    print(f"RESULT client_publish ratio_vs_raw={ratio:.3f} us_per_msg={us:.1f}")


if __name__ == "__main__":
    main()
