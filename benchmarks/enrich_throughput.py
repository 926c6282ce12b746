"""EnrichWithClientStatus against Beam's Enrichment with TdmqClientStatusHandler, on the same events.

The emulator runs as its own process pinned to one core, with K simulated
MQTT clients (70% online, 30% offline with persistent sessions); N device
events spread over them (and 5% over unknown ids) go through (a)
``EnrichWithClientStatus`` and (b) ``Enrichment(TdmqClientStatusHandler(...))``
on the DirectRunner, each from a generating source without Reshuffle. API
calls are counted by the emulator (``/emulator/stats``).

Last line: ``RESULT enrich_throughput speedup_vs_enrichment=S calls=C distinct_clients=K``
(C: the calls (a) made; K: distinct client ids in the events).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.enrichment import Enrichment

sys.path.insert(0, os.path.dirname(__file__))

from servers import CLIENT_CPU, emulator_server, emulator_stats, pin

from tdmq_beam import CloudApiConfig, EnrichWithClientStatus, TdmqClientStatusHandler, TdmqConnection
from tdmq_beam.testing import SimulatedClients


def _client_ids(k: int) -> list[str]:
    return [f"dev-{index:05d}" for index in range(k)]


def _events(_: bytes, n: int, ids: list[str], as_rows: bool):
    rng = random.Random(1)
    for seq in range(n):
        client_id = rng.choice(ids) if rng.random() >= 0.05 else f"unknown-{rng.randrange(len(ids) // 20 + 1)}"
        yield beam.Row(client_id=client_id, seq=seq) if as_rows else {"client_id": client_id, "seq": seq}


def _calls(http_url: str) -> int:
    requests = emulator_stats(http_url)["requests"]
    return sum(sum(counts.values()) for api, counts in requests.items() if api == "status" or api.startswith("cloud:"))


def _run(build) -> float:
    pipeline = beam.Pipeline(options=PipelineOptions([]))
    build(pipeline)
    started = time.perf_counter()
    pipeline.run().wait_until_finish()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="events (default 100,000)")
    parser.add_argument("--clients", type=int, default=1_000, help="simulated clients (default 1,000)")
    parser.add_argument("--enrichment-n", type=int, default=None, help="events for Beam's Enrichment (default: --n)")
    parser.add_argument("--details", action="store_true", help="also describe clients through the cloud API")
    parser.add_argument("--status-ttl", type=float, default=5.0, help="EnrichWithClientStatus status TTL (default 5)")
    args = parser.parse_args()
    pin(0, CLIENT_CPU)
    enrichment_n = args.enrichment_n or args.n

    with emulator_server("--cloud-rate", "100000") as emulator:
        ids = _client_ids(args.clients)
        connection = TdmqConnection(emulator.http_url, username="user0", password="secret0")
        cloud = (
            CloudApiConfig(
                secret_id="AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE", secret_key="Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
                region="ap-guangzhou", instance_id="mqtt-local", endpoint=emulator.http_url, rate=None,
            )
            if args.details else None
        )  # fmt: skip
        with SimulatedClients("127.0.0.1", emulator.mqtt_port, "user0", "secret0") as devices:
            for index, client_id in enumerate(ids):
                (devices.online if index % 10 < 7 else devices.offline)(client_id)

            before = _calls(emulator.http_url)
            ours = _run(
                lambda p: (
                    p
                    | "Impulse" >> beam.Impulse()
                    | "Events" >> beam.FlatMap(_events, args.n, ids, False)
                    | EnrichWithClientStatus(connection, cloud, status_ttl=args.status_ttl)
                )
            )
            our_calls = _calls(emulator.http_url) - before

            before = _calls(emulator.http_url)
            theirs = _run(
                lambda p: (
                    p
                    | "Impulse" >> beam.Impulse()
                    | "Events" >> beam.FlatMap(_events, enrichment_n, ids, True)
                    | Enrichment(TdmqClientStatusHandler(connection, cloud))
                )
            )
            their_calls = _calls(emulator.http_url) - before

    distinct = len({event["client_id"] for event in _events(b"", args.n, ids, False)})
    our_rate, their_rate = args.n / ours, enrichment_n / theirs
    windows = max(1, math.ceil(ours / args.status_ttl))
    lookups = "status and details" if args.details else "status"
    print(f"{args.n} events over {distinct} distinct client ids ({args.clients} simulated clients); {lookups} lookups")
    print(f"  EnrichWithClientStatus        {our_rate:9,.0f} events/s  {our_calls:7,} API calls  ({ours:.1f} s)")
    print(f"  Enrichment + handler          {their_rate:9,.0f} events/s  {their_calls:7,} API calls  ({theirs:.1f} s)")
    print(f"  speedup {our_rate / their_rate:.1f}x; calls per distinct client per {args.status_ttl:g} s TTL window: "
          f"{our_calls / distinct / windows / (2 if args.details else 1):.2f} ({windows} window(s))")  # fmt: skip
    print(f"RESULT enrich_throughput speedup_vs_enrichment={our_rate / their_rate:.1f} calls={our_calls} "
          f"distinct_clients={distinct}")  # fmt: skip


if __name__ == "__main__":
    main()
