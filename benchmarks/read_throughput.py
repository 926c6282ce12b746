"""Reading a fixed-rate MQTT feed: a bare paho-mqtt subscriber against ReadFromTdmqMqtt, in the same run.

The emulator runs as its own process pinned to one core, and so does the feed:
a process of simulated devices publishing ``--rate`` messages/s at QoS 1 for
``--seconds``. The same feed is read, each time on a fresh emulator, by

  (a) a bare paho-mqtt subscriber (QoS 1, acknowledging on arrival),
  (b) ``ReadFromTdmqMqtt`` with one reader,
  (c) ``ReadFromTdmqMqtt`` with two readers sharing a subscription,

each on the other core, (b) and (c) on the DirectRunner, bounded by
``max_records``. A reader's rate is distinct messages received over the time
from the first publish to the last receive (for Beam: the last message a
step after the read has, not the socket's arrival time), so a reader that
keeps up with the feed reads at the feed's rate; CPU is this process's, per message.

Last line: ``RESULT read_throughput ratio_vs_paho=R msgs_per_s=M lost=L``
(R: (b)'s rate over (a)'s; M: (b)'s rate; L: messages published and never read, over (b) and (c)).

``--drain N`` measures the other case a reader meets: a backlog. N messages (QoS 1,
64 bytes, one topic) are queued in a persistent session on Debian's mosquitto,
pinned to one core, while no reader runs; then the session is drained, on the
other core, by a bare paho-mqtt subscriber, by ``mosquitto_sub`` (C), and by
``ReadFromTdmqMqtt`` (DirectRunner, ``max_records=N``), each on a fresh broker
with the same queue, each for at most ``--budget`` seconds. Rates are distinct
messages over the time from the reader's start to its last message (Beam's
start-up included; for Beam, when a step after the read has it). Past about
30,000 queued messages mosquitto 2.0 itself sends slowly, so at 200,000
compare the counts read within the budget.

Last line: ``RESULT read_drain ratio_vs_paho=R ratio_vs_mosquitto_sub=S msgs_per_s=M lost=L``
(ratios of ReadFromTdmqMqtt's rate; L: queued messages it did not read within the budget).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
import paho.mqtt.client as mqtt
from apache_beam.options.pipeline_options import PipelineOptions
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))

from brokers import Mosquitto  # the tests' mosquitto: its own config, port and directory
from servers import CLIENT_CPU, SERVER_CPU, emulator_server, emulator_stats, pin

from tdmq_beam import ReadFromTdmqMqtt, TdmqConnection

USER, PASSWORD = "user0", "secret0"
_FEED = """
import json, sys, time
from tdmq_beam.testing import SimulatedClients
port, rate, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
devices = SimulatedClients("127.0.0.1", port, "user0", "secret0")
devices.online("feeder")
tick = 0.02
per_tick = max(1, round(rate * tick))
total = int(rate * seconds)
print(json.dumps({"start": time.time()}), flush=True)
started = time.monotonic()
for first in range(0, total, per_tick):
    batch = [(f"feed/dev-{i % 50}", f"m{i}".encode()) for i in range(first, min(total, first + per_tick))]
    devices.publish("feeder", batch)
    time.sleep(max(0.0, started + (first // per_tick + 1) * tick - time.monotonic()))
print(json.dumps({"published": total, "end": time.time()}), flush=True)
devices.close()
"""


def _cpu(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _connected(http_url: str) -> int:
    return emulator_stats(http_url)["clients"]["connected"]


def _wait_connected(http_url: str, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _connected(http_url) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} clients did not connect in {timeout} s")
        time.sleep(0.05)


def _feed(port: int, rate: int, seconds: float) -> tuple[subprocess.Popen, float]:
    process = subprocess.Popen(
        [sys.executable, "-c", _FEED, str(port), str(rate), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    pin(process.pid, SERVER_CPU)
    start = json.loads(process.stdout.readline())["start"]  # type: ignore[union-attr]
    return process, start


class _PahoCounter:
    """A bare paho-mqtt 2.x MQTT 5 subscriber (QoS 1, acknowledging on arrival) that counts
    distinct payloads and the time of the last one; `done` is set once it has ``total``."""

    def __init__(self, client_id: str, total: int) -> None:
        self.seen: set[bytes] = set()
        self.last = 0.0
        self.done = threading.Event()
        self._total = total
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(USER, PASSWORD)
        self.client.on_message = self._on_message

    def _on_message(self, client, userdata, message) -> None:
        self.seen.add(message.payload)
        self.last = time.time()
        if len(self.seen) >= self._total:
            self.done.set()


def _session_expiry(seconds: int = 3600) -> Properties:
    """CONNECT properties of a session the broker keeps ``seconds`` after a disconnect."""
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = seconds
    return properties


def read_with_paho(rate: int, seconds: float) -> dict:
    total = int(rate * seconds)
    with emulator_server() as server:
        counter = _PahoCounter("paho-reader", total)
        client = counter.client
        client.connect("127.0.0.1", server.mqtt_port)
        client.loop_start()
        client.subscribe("feed/#", qos=1)
        _wait_connected(server.http_url, 1)
        time.sleep(0.2)  # the SUBACK
        cpu = _cpu()
        feed, start = _feed(server.mqtt_port, rate, seconds)
        counter.done.wait(seconds * 3 + 30)
        cpu = _cpu() - cpu
        feed.wait(60)
        client.loop_stop()
        client.disconnect()
    return _figures("paho", total, len(counter.seen), start, counter.last, cpu)


def _summarise(receipts, path: str) -> None:
    payloads, last = set(), 0.0
    for payload, micros in receipts:
        payloads.add(payload)
        last = max(last, micros / 1e6)
    with open(path, "w") as handle:  # (pickled with the pipeline, a global list would be a copy)
        json.dump([len(payloads), last], handle)


def _summary_pipeline(connection: TdmqConnection, topic_filter: str, summary: str, **read_options) -> beam.Pipeline:
    """A pipeline reading ``topic_filter`` that writes (distinct payloads, last time a step after
    the read had one) to the file ``summary``."""
    pipeline = beam.Pipeline(options=PipelineOptions([]))
    _ = (
        pipeline
        | ReadFromTdmqMqtt(connection, topic_filter, **read_options)
        | beam.Map(lambda message: (message.payload, time.time_ns() // 1000))  # when the pipeline has it
        | beam.combiners.ToList()
        | beam.Map(_summarise, summary)
    )
    return pipeline


def _read_summary(summary: str) -> tuple[int, float]:
    return tuple(json.load(open(summary))) if os.path.exists(summary) else (0, 0.0)  # type: ignore[return-value]


def read_with_beam(rate: int, seconds: float, readers: int) -> dict:
    total = int(rate * seconds)
    summary = os.path.join(tempfile.mkdtemp(prefix="read-bench-"), "summary.json")
    with emulator_server() as server:
        connection = TdmqConnection(
            server.http_url, username=USER, password=PASSWORD, mqtt_endpoint=f"mqtt://127.0.0.1:{server.mqtt_port}"
        )
        options = {"share_group": "bench", "num_readers": readers} if readers > 1 else {}
        pipeline = _summary_pipeline(
            connection, "feed/#", summary, client_id_prefix=f"bench-{readers}", max_records=total,
            max_read_time=seconds * 3 + 30, **options,
        )  # fmt: skip
        cpu = _cpu()
        run = threading.Thread(target=lambda: pipeline.run().wait_until_finish())
        run.start()
        _wait_connected(server.http_url, readers)
        time.sleep(0.2)  # the SUBACKs
        feed, start = _feed(server.mqtt_port, rate, seconds)
        run.join()
        cpu = _cpu() - cpu
        feed.wait(60)
    distinct, last = _read_summary(summary)
    return _figures(f"beam x{readers}", total, distinct, start, last, cpu)


def _figures(name: str, published: int, distinct: int, start: float, last: float, cpu: float) -> dict:
    elapsed = max(last - start, 1e-9)
    figures = {
        "reader": name,
        "published": published,
        "read": distinct,
        "lost": published - distinct,
        "msgs_per_s": round(distinct / elapsed),
        "cpu_us_per_msg": round(cpu / max(distinct, 1) * 1e6, 1),
    }
    print(json.dumps(figures), flush=True)
    return figures


# -- draining a queued session on mosquitto ---------------------------------------------------------

_DRAIN_TOPIC = "drain/dev-0"


def _payload(i: int) -> str:
    return f"m{i}".ljust(64, ".")


@contextlib.contextmanager
def _queued_mosquitto(client_id: str, count: int) -> Iterator[Mosquitto]:
    """A fresh mosquitto, pinned to `SERVER_CPU`, holding ``count`` messages for ``client_id``'s session."""
    with tempfile.TemporaryDirectory(prefix="drain-") as directory, Mosquitto(Path(directory)) as broker:
        pin(broker.process.pid, SERVER_CPU)  # type: ignore[union-attr]
        session = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        session.username_pw_set(USER, PASSWORD)
        session.connect("127.0.0.1", broker.port, clean_start=False, properties=_session_expiry())
        session.loop_start()
        session.subscribe("drain/#", qos=1)
        time.sleep(0.3)  # the SUBACK
        session.disconnect()
        session.loop_stop()
        lines = "".join(_payload(i) + "\n" for i in range(count))
        subprocess.run(
            ["mosquitto_pub", "-p", str(broker.port), "-u", USER, "-P", PASSWORD, "-V", "mqttv5", "-q", "1",
             "-t", _DRAIN_TOPIC, "-l"],
            input=lines, text=True, check=True, timeout=600,
        )  # fmt: skip
        yield broker


def drain_with_paho(count: int, budget: float) -> dict:
    with _queued_mosquitto("paho-drain", count) as broker:
        counter = _PahoCounter("paho-drain", count)
        cpu, start = _cpu(), time.time()
        counter.client.connect("127.0.0.1", broker.port, clean_start=False, properties=_session_expiry())
        counter.client.loop_start()
        counter.done.wait(budget)
        cpu = _cpu() - cpu
        counter.client.loop_stop()
        counter.client.disconnect()
    return _figures("paho", count, len(counter.seen), start, counter.last, cpu)


def drain_with_mosquitto_sub(count: int, budget: float) -> dict:
    with _queued_mosquitto("sub-drain", count) as broker:
        children, start = _cpu(resource.RUSAGE_CHILDREN), time.time()
        process = subprocess.Popen(
            ["mosquitto_sub", "-p", str(broker.port), "-u", USER, "-P", PASSWORD, "-V", "mqttv5", "-q", "1",
             "-c", "-x", "3600", "-i", "sub-drain", "-t", "drain/#", "-C", str(count), "-W", str(int(budget))],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        pin(process.pid, CLIENT_CPU)
        seen, last = set(), start
        for line in process.stdout:  # type: ignore[union-attr]
            seen.add(line)
            last = time.time()
        process.wait(30)
        cpu = _cpu(resource.RUSAGE_CHILDREN) - children  # the C subscriber's own CPU
    return _figures("mosquitto_sub", count, len(seen), start, last, cpu)


def drain_with_beam(count: int, budget: float) -> dict:
    summary = os.path.join(tempfile.mkdtemp(prefix="drain-bench-"), "summary.json")
    with _queued_mosquitto("beam-drain-0", count) as broker:
        connection = TdmqConnection(
            "http://127.0.0.1:9", username=USER, password=PASSWORD, mqtt_endpoint=f"mqtt://127.0.0.1:{broker.port}"
        )
        pipeline = _summary_pipeline(
            connection, "drain/#", summary, client_id_prefix="beam-drain", max_records=count, max_read_time=budget
        )
        cpu, start = _cpu(), time.time()
        pipeline.run().wait_until_finish()
        cpu = _cpu() - cpu
    distinct, last = _read_summary(summary)
    return _figures("ReadFromTdmqMqtt", count, distinct, start, last, cpu)


def drain(count: int, budget: float) -> None:
    print(f"drain: {count} messages queued at QoS 1 on mosquitto, at most {budget:g} s per reader")
    paho = drain_with_paho(count, budget)
    sub = drain_with_mosquitto_sub(count, budget)
    beam_ = drain_with_beam(count, budget)
    ratio_paho = beam_["msgs_per_s"] / paho["msgs_per_s"] if paho["msgs_per_s"] else 0.0
    ratio_sub = beam_["msgs_per_s"] / sub["msgs_per_s"] if sub["msgs_per_s"] else 0.0
    print(f"RESULT read_drain ratio_vs_paho={ratio_paho:.2f} ratio_vs_mosquitto_sub={ratio_sub:.2f} "
          f"msgs_per_s={beam_['msgs_per_s']} lost={beam_['lost']}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=3000, help="messages/s the feed publishes")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds the feed publishes")
    parser.add_argument("--drain", type=int, metavar="N", help="drain N queued messages on mosquitto instead")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds each drain may take (default 120)")
    args = parser.parse_args()
    pin(os.getpid(), CLIENT_CPU)
    if args.drain:
        drain(args.drain, args.budget)
        return
    print(f"feed: {args.rate} msgs/s at QoS 1 for {args.seconds:g} s ({int(args.rate * args.seconds)} messages)")
    paho = read_with_paho(args.rate, args.seconds)
    one = read_with_beam(args.rate, args.seconds, 1)
    two = read_with_beam(args.rate, args.seconds, 2)
    ratio = one["msgs_per_s"] / paho["msgs_per_s"] if paho["msgs_per_s"] else 0.0
    print(f"RESULT read_throughput ratio_vs_paho={ratio:.2f} msgs_per_s={one['msgs_per_s']} "
          f"lost={one['lost'] + two['lost']}")  # fmt: skip


if __name__ == "__main__":
    main()
