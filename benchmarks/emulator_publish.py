"""HTTP publish throughput of the emulator, with one MQTT subscriber attached.

The emulator runs as its own process pinned to one core (``tdmq-emulator``);
a load generator (a tuned bare aiohttp loop: workers pulling from one shared
iterator, uvloop, a pre-encoded URL, no cookie jar) and a lean MQTT subscriber
(its own process, counting PUBLISH packets) share the other core. Every
message must reach the subscriber.

Reports the throughput seen by the load generator and the emulator's CPU per
message (from /proc), i.e. what one core of emulator can carry.

Last line: ``RESULT emulator_publish msgs_per_s=N``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import subprocess
import sys
import time

import aiohttp

sys.path.insert(0, os.path.dirname(__file__))

from servers import CLIENT_CPU, cpu_seconds, emulator_server, pin

from tdmq_beam.mqtt.codec import PacketFramer, PacketType, encode_connect, encode_subscribe

TOPIC = "bench/emulator"


def subscriber_main(port: int, expected: int, timeout: float) -> None:
    """Subprocess: subscribe at QoS 0 and print how many PUBLISH packets arrived."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(encode_connect("bench-sub", keepalive=0, username="user0", password="secret0"))
    sock.sendall(encode_subscribe(1, [(TOPIC, 0)]))
    framer = PacketFramer()
    count = 0
    print("ready", flush=True)
    sock.settimeout(timeout)
    try:
        while count < expected:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            count += sum(first >> 4 == PacketType.PUBLISH for first, _, _ in framer.feed(chunk))
    except TimeoutError:
        pass
    print(count, flush=True)


async def _load(url: str, n: int, concurrency: int, deadline: float) -> tuple[int, int, float]:
    headers = {"Authorization": "Basic " + base64.b64encode(b"user0:secret0").decode()}
    connector = aiohttp.TCPConnector(limit=concurrency)
    ok = failed = 0
    jobs = iter(range(n))
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), headers=headers
    ) as session:
        target = aiohttp.client.URL(url, encoded=True)

        async def worker() -> None:
            nonlocal ok, failed
            for _ in jobs:
                if time.monotonic() > deadline:
                    return
                async with session.post(target, data=b"payload-0123456789") as response:
                    await response.read()
                    if response.status == 200:
                        ok += 1
                    else:
                        failed += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ok, failed, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="messages to publish (default 50,000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop publishing after this long")
    args = parser.parse_args()

    with emulator_server() as emulator:
        pin(0, CLIENT_CPU)
        subscriber = subprocess.Popen(
            [sys.executable, __file__, "--subscriber", str(emulator.mqtt_port), str(args.n),
             str(args.max_seconds + 30)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        pin(subscriber.pid, CLIENT_CPU)
        assert subscriber.stdout.readline().strip() == "ready"
        time.sleep(0.3)

        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        cpu_before = cpu_seconds(emulator.pid)
        ok, failed, elapsed = runner(
            _load(f"{emulator.http_url}/topics/bench%2Femulator?qos=0", args.n, args.concurrency,
                  time.monotonic() + args.max_seconds)
        )  # fmt: skip
        cpu_used = cpu_seconds(emulator.pid) - cpu_before
        delivered = int(subscriber.stdout.readline() or 0)
        subscriber.wait(timeout=30)

    rate = ok / elapsed
    us_per_msg = cpu_used / max(ok, 1) * 1e6
    print(f"published={ok} failed={failed} delivered={delivered} seconds={elapsed:.2f}")
    capacity = 1e6 / us_per_msg
    print(f"throughput {rate:,.0f} msgs/s; emulator CPU {us_per_msg:.0f} us/msg (one core: {capacity:,.0f} msgs/s)")
    if delivered != ok:
        print(f"WARNING: {ok - delivered} published messages were not delivered")
    print(f"RESULT emulator_publish msgs_per_s={rate:.0f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--subscriber":
        subscriber_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        main()
