"""What each status source of EnrichWithClientStatus costs and how wrong it is, on one timeline.

The emulator runs as its own process pinned to one core, losing and delaying
its client events as asked (``--event-loss``, ``--event-delay``: the seed's
warning that events are asynchronous and can be misjudged). K simulated MQTT
clients come up (a share of them before the event reader subscribes, so the
events never tell of them), then for D seconds clients connect and disconnect
at random (``--flips`` a second) while N elements over the K clients are
answered, tick by tick, by the three sources side by side:

- ``query``: `StatusLookup` (the active query with its cache, ``--status-ttl``),
  the code ``EnrichWithClientStatus(source="query")`` runs;
- ``events``: the client events, read over MQTT as they arrive, ordered per
  client by `next_status` and answered by `answer_from_events`: the rule and
  answer of ``TrackClientStatus`` and ``source="events"``;
- ``events+query``: `answer_from_events` with the query behind (``--staleness``),
  asking a second `StatusLookup` where the events have not settled the client.

The truth at an element's time is what the driver last did to its client (a
connect counts once its CONNACK is in, a disconnect once its DISCONNECT is
sent). An answer is wrong when it differs from the truth; ``events`` answering
"unknown" (None) counts as wrong too, and is also reported apart. API calls are
the status calls each source made (counted by its lookup).

The sources are measured outside a Beam pipeline, on their own code: what is
compared is calls and correctness on one timeline, not Beam's throughput
(``enrich_throughput`` measures that). Bounded: K, N and D are fixed, and the
run stops at 4 x D whatever happens.

Last line: ``RESULT client_status_sources query_calls_per_element=Q query_wrong=W
events_calls_per_element=0 events_wrong=E events_unknown=U events_query_calls_per_element=C
events_query_wrong=X`` (wrong shares as fractions of the elements).
"""

from __future__ import annotations

import argparse
import collections
import os
import queue
import random
import sys
import time

import paho.mqtt.client as mqtt
from apache_beam.utils.timestamp import Timestamp

sys.path.insert(0, os.path.dirname(__file__))

from servers import CLIENT_CPU, emulator_server, pin

from tdmq_beam import ClientEvent, TdmqClient, TdmqConnection
from tdmq_beam.records.received_message import ReceivedMessage
from tdmq_beam.records.tracked_status import TrackedStatus, next_status
from tdmq_beam.service.status_lookup import LookupSettings, StatusLookup
from tdmq_beam.testing import SimulatedClients
from tdmq_beam.transforms.events_join import answer_from_events

SOURCES = ("query", "events", "events+query")


class _EventReader:
    """A paho subscriber to the connect and disconnect events, queueing them as they arrive."""

    def __init__(self, mqtt_port: int) -> None:
        self.arrived: queue.SimpleQueue[tuple[str, bytes, float]] = queue.SimpleQueue()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="status-bench-events", protocol=mqtt.MQTTv311
        )
        self._client.username_pw_set("user0", "secret0")
        self._client.on_message = lambda _c, _u, message: self.arrived.put(
            (message.topic, bytes(message.payload), time.time())
        )
        subscribed = queue.SimpleQueue()
        self._client.on_subscribe = lambda *args: subscribed.put(True)
        self._client.connect("127.0.0.1", mqtt_port)
        self._client.loop_start()
        self._client.subscribe([("$events/client_connected", 0), ("$events/client_disconnected", 0)])
        subscribed.get(timeout=10)

    def take(self) -> list[ClientEvent]:
        events = []
        while True:
            try:
                topic, payload, received = self.arrived.get_nowait()
            except queue.Empty:
                return events
            message = ReceivedMessage(
                topic, payload, 0, False, False, (), None, None, None, None, None, Timestamp.of(received)
            )
            events.append(ClientEvent.from_message(message))

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000, help="simulated clients (default 10,000)")
    parser.add_argument("--elements", type=int, default=200_000, help="elements answered (default 200,000)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the timeline (default 30)")
    parser.add_argument("--flips", type=float, default=200.0, help="connects and disconnects a second (default 200)")
    parser.add_argument("--online", type=float, default=0.7, help="share of clients online at first (default 0.7)")
    parser.add_argument(
        "--before-reader", type=float, default=0.1, help="share connected before the events reader (default 0.1)"
    )
    parser.add_argument("--event-loss", type=float, default=0.01, help="share of events lost (default 0.01)")
    parser.add_argument("--event-delay", type=float, default=2.0, help="events delayed by up to N s (default 2)")
    parser.add_argument("--status-ttl", type=float, default=5.0, help="the query's cache TTL (default 5, as shipped)")
    parser.add_argument("--staleness", type=float, default=600.0, help="events+query staleness (default 600)")
    parser.add_argument("--tick", type=float, default=0.1, help="seconds per tick (default 0.1)")
    args = parser.parse_args()
    pin(0, CLIENT_CPU)
    rng = random.Random(7)
    ids = [f"dev-{index:05d}" for index in range(args.clients)]

    with emulator_server(
        "--cloud-rate", "100000", "--event-loss", str(args.event_loss), "--event-delay", str(args.event_delay),
        "--event-seed", "3",
    ) as emulator, SimulatedClients("127.0.0.1", emulator.mqtt_port, "user0", "secret0") as devices:  # fmt: skip
        online: set[str] = set()
        first = [client_id for client_id in ids if rng.random() < args.online]
        early = set(rng.sample(first, int(len(first) * args.before_reader)))
        for client_id in early:
            devices.online(client_id)
            online.add(client_id)
        reader = _EventReader(emulator.mqtt_port)
        for client_id in first:
            if client_id not in early:
                devices.online(client_id)
                online.add(client_id)

        settings = LookupSettings(status_ttl=args.status_ttl)
        connection = TdmqConnection(emulator.http_url, username="user0", password="secret0", max_in_flight=64)
        lookups = {name: StatusLookup(TdmqClient(connection), settings) for name in ("query", "events+query")}
        tracked: dict[str, TrackedStatus] = {}
        calls = collections.Counter()
        wrong = collections.Counter()
        unknown = 0
        answered = 0
        ticks = max(1, round(args.seconds / args.tick))
        per_tick = args.elements / ticks
        flips_per_tick = args.flips * args.tick
        started = time.monotonic()
        deadline = started + 4 * args.seconds
        for tick in range(ticks):
            if time.monotonic() > deadline:
                break
            for _ in range(int(flips_per_tick) + (rng.random() < flips_per_tick % 1)):
                client_id = rng.choice(ids)
                if client_id in online:
                    devices.disconnect(client_id)
                    online.discard(client_id)
                else:
                    devices.online(client_id)
                    online.add(client_id)
            for event in reader.take():
                status = next_status(tracked.get(event.client_id), event)
                if status is not None:
                    tracked[event.client_id] = status
            batch = [rng.choice(ids) for _ in range(round(per_tick * (tick + 1)) - round(per_tick * tick))]
            truth = [client_id in online for client_id in batch]
            now = time.time()
            by_events = [tracked.get(client_id) for client_id in batch]
            answers: dict[str, list] = {
                "events": [answer_from_events(k, now, with_query=False, staleness=args.staleness) for k in by_events],
                "events+query": [
                    answer_from_events(k, now, with_query=True, staleness=args.staleness) for k in by_events
                ],
            }
            for name in ("query", "events+query"):
                asked = (
                    list(range(len(batch)))
                    if name == "query"
                    else [i for i, answer in enumerate(answers[name]) if isinstance(answer, str)]
                )
                if not asked:
                    answers.setdefault(name, [None] * len(batch))
                    continue
                results = lookups[name].submit_batch([batch[i] for i in asked]).result(timeout=60)
                calls[name] += results.stats["status_calls"]
                filled = answers.setdefault(name, [None] * len(batch))
                for i, result in zip(asked, results, strict=True):
                    filled[i] = result.online if not isinstance(result, BaseException) else None
            for name in SOURCES:
                wrong[name] += sum(answer is not actual for answer, actual in zip(answers[name], truth, strict=True))
            unknown += sum(answer is None for answer in answers["events"])
            answered += len(batch)
            pause = started + (tick + 1) * args.tick - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        elapsed = time.monotonic() - started
        reader.close()
        for lookup in lookups.values():
            lookup.client.close()

    print(
        f"{answered:,} elements over {args.clients:,} clients in {elapsed:.1f} s (timeline {args.seconds:g} s), "
        f"{args.flips:g} connects/disconnects a second; events lost {args.event_loss:.1%}, delayed up to "
        f"{args.event_delay:g} s; {args.before_reader:.0%} of the first clients connected before the reader; "
        f"query TTL {args.status_ttl:g} s, events+query staleness {args.staleness:g} s"
    )
    for name in SOURCES:
        print(
            f"  {name:13} {calls[name] / answered:.4f} API calls/element  ({calls[name]:,} calls)  "
            f"wrong {wrong[name] / answered:.2%}"
            + (f" (of which unknown {unknown / answered:.2%})" if name == "events" else "")
        )
    print(
        f"RESULT client_status_sources query_calls_per_element={calls['query'] / answered:.4f} "
        f"query_wrong={wrong['query'] / answered:.4f} events_calls_per_element=0 "
        f"events_wrong={wrong['events'] / answered:.4f} events_unknown={unknown / answered:.4f} "
        f"events_query_calls_per_element={calls['events+query'] / answered:.4f} "
        f"events_query_wrong={wrong['events+query'] / answered:.4f}"
    )


if __name__ == "__main__":
    main()
