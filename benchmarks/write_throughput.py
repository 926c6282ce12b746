"""WriteToTdmqMqtt throughput, side by side with a bare aiohttp loop and a naive per-element DoFn.

In one process and one run, the same N messages go to the same server (nginx
answering 200 with an X-Message-Id when nginx is installed, and the emulator),
which runs pinned to the other core:

(a) the bare aiohttp loop of ``client_publish.py`` (the ceiling);
(b) ``WriteToTdmqMqtt`` on the DirectRunner, reading from a source that
    hands out prebuilt messages (``Impulse`` + ``FlatMap``, fused, no Reshuffle:
    a Reshuffle's ~25 us per element would be Beam's, not ours; nor
    ``beam.Create``, which pickles and compresses every element into the
    pipeline graph, ~90 us per element before the first publish);
(c) a per-element synchronous DoFn with one keep-alive ``http.client``
    connection: what a hand-written sink does;
(d) the client alone: ``AsyncTdmqClient.publish_batch`` on the same messages
    (made beforehand) with the same concurrency: what the transform would do
    with no Beam around it. ``ratio_vs_client`` = (b) / (d) is Beam's share.

Pipeline runs are timed from ``run()`` to the end, start-up included. The
best of ``--rounds`` rounds of each is kept.

Last line: ``RESULT write_throughput ratio_vs_raw=R ratio_vs_naive=N ratio_vs_client=C msgs_per_s=M``
(against nginx when present, else the emulator).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import sys
import time
from urllib.parse import urlsplit

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

sys.path.insert(0, os.path.dirname(__file__))

from client_publish import bare_loop, prebuilt_messages
from servers import CLIENT_CPU, emulator_server, nginx_server, pin

from tdmq_beam import AsyncTdmqClient, MqttMessage, TdmqConnection, WriteToTdmqMqtt
from tdmq_beam.service.client import new_event_loop

AUTHORIZATION = "Basic " + base64.b64encode(b"user0:secret0").decode()


class _NaivePublishFn(beam.DoFn):
    """A hand-written sink: one synchronous request per element, one keep-alive connection."""

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url

    def setup(self) -> None:
        parts = urlsplit(self._base_url)
        self._connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)

    def process(self, message: MqttMessage):
        self._connection.request(
            "POST", message.request_target(), body=message.payload, headers={"Authorization": AUTHORIZATION}
        )
        response = self._connection.getresponse()
        response.read()
        if response.status == 200:
            yield response.getheader("X-Message-Id")

    def teardown(self) -> None:
        self._connection.close()


def _time_pipeline(build) -> float:
    pipeline = beam.Pipeline(options=PipelineOptions([]))
    build(pipeline)
    started = time.perf_counter()
    pipeline.run().wait_until_finish()
    return time.perf_counter() - started


def _source(pipeline: beam.Pipeline, n: int) -> beam.PCollection:
    """n device commands, the same prebuilt messages (d) publishes (the DirectRunner runs in this process)."""
    return pipeline | "Impulse" >> beam.Impulse() | "Generate" >> beam.FlatMap(prebuilt_messages, n)


def run_write(base_url: str, n: int, concurrency: int) -> float:
    connection = TdmqConnection(base_url, username="user0", password="secret0", max_in_flight=concurrency)

    def build(pipeline):
        result = _source(pipeline, n) | WriteToTdmqMqtt(connection)
        result.failed | beam.Map(_fail)

    return n / _time_pipeline(build)


def run_naive(base_url: str, n: int) -> float:
    return n / _time_pipeline(lambda pipeline: _source(pipeline, n) | beam.ParDo(_NaivePublishFn(base_url)))


def run_bare(base_url: str, n: int, concurrency: int) -> float:
    loop = new_event_loop()
    try:
        started = time.perf_counter()
        ok = loop.run_until_complete(bare_loop(base_url, n, concurrency))
        elapsed = time.perf_counter() - started
    finally:
        loop.close()
    if ok != n:
        raise SystemExit(f"bare loop: only {ok} of {n} succeeded")
    return n / elapsed


def run_client(base_url: str, n: int, concurrency: int) -> float:
    connection = TdmqConnection(base_url, username="user0", password="secret0", max_in_flight=concurrency)
    messages = prebuilt_messages(b"", n)

    async def publish_all() -> float:
        async with AsyncTdmqClient(connection) as client:
            started = time.perf_counter()
            results = await client.publish_batch(messages, concurrency)
            elapsed = time.perf_counter() - started
        failed = [result for result in results if not result.ok]
        if failed:
            raise SystemExit(f"client alone: {len(failed)} of {n} failed: {failed[0].error}")
        return elapsed

    loop = new_event_loop()
    try:
        return n / loop.run_until_complete(publish_all())
    finally:
        loop.close()


def _fail(failure) -> None:
    raise SystemExit(f"a benchmark publish failed: {failure.reason}")


def compare(
    name: str, base_url: str, n: int, naive_n: int, concurrency: int, rounds: int
) -> tuple[float, float, float, float]:
    raw = write = naive = client = 0.0
    run_bare(base_url, min(n, 2000), concurrency)  # warm-up
    for _ in range(rounds):
        raw = max(raw, run_bare(base_url, n, concurrency))
        write = max(write, run_write(base_url, n, concurrency))
        naive = max(naive, run_naive(base_url, naive_n))
        client = max(client, run_client(base_url, n, concurrency))
    print(f"\n{name} ({n} messages; naive DoFn {naive_n}; {concurrency} in flight; best of {rounds}):")
    print(f"  (a) bare aiohttp loop         {raw:9,.0f} msgs/s")
    print(f"  (b) WriteToTdmqMqtt           {write:9,.0f} msgs/s   ratio to (a) {write / raw:.3f}")
    print(f"  (c) per-element sync DoFn     {naive:9,.0f} msgs/s   (b)/(c) {write / naive:.1f}x")
    print(f"  (d) the client alone          {client:9,.0f} msgs/s   (b)/(d) {write / client:.3f}")
    return write / raw, write / naive, write / client, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="messages per run of (a) and (b) (default 50,000)")
    parser.add_argument("--naive-n", type=int, default=5_000, help="messages per run of (c) (default 5,000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    args = parser.parse_args()
    pin(0, CLIENT_CPU)

    with emulator_server() as emulator:
        ratios = compare("emulator", emulator.http_url, args.n, args.naive_n, args.concurrency, args.rounds)
    with nginx_server() as nginx:
        if nginx is None:
            print("\nnginx is not installed: the figures are against the emulator (apt-get install nginx-light)")
        else:
            ratios = compare("nginx", nginx.http_url, args.n, args.naive_n, args.concurrency, args.rounds)
    ratio_raw, ratio_naive, ratio_client, rate = ratios
    print(
        f"RESULT write_throughput ratio_vs_raw={ratio_raw:.3f} ratio_vs_naive={ratio_naive:.2f} "
        f"ratio_vs_client={ratio_client:.3f} msgs_per_s={rate:.0f}"
    )


if __name__ == "__main__":
    main()
