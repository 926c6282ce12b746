"""Reading a fixed-rate MQTT feed: a bare paho-mqtt subscriber against ReadFromTdmqMqtt, in the same run.

The emulator runs as its own process pinned to one core, and so does the feed:
a process of simulated devices publishing ``--rate`` messages/s at QoS 1 for
``--seconds``. The same feed is read, each time on a fresh emulator, by

  (a) a bare paho-mqtt subscriber (QoS 1, acknowledging on arrival),
  (b) ``ReadFromTdmqMqtt`` with one reader,
  (c) ``ReadFromTdmqMqtt`` with two readers sharing a subscription,

each on the other core, (b) and (c) on the DirectRunner, bounded by
``max_records``. A reader's rate is distinct messages received over the time
from the first publish to the last receive, so a reader that keeps up with
the feed reads at the feed's rate; CPU is this process's, per message.

Last line: ``RESULT read_throughput ratio_vs_paho=R msgs_per_s=M lost=L``
(R: (b)'s rate over (a)'s; M: (b)'s rate; L: messages published and never read, over (b) and (c)).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import apache_beam as beam
import paho.mqtt.client as mqtt
from apache_beam.options.pipeline_options import PipelineOptions
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, os.path.dirname(__file__))

from servers import CLIENT_CPU, SERVER_CPU, emulator_server, pin

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


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _connected(http_url: str) -> int:
    with urllib.request.urlopen(f"{http_url}/emulator/stats", timeout=10) as response:
        return json.load(response)["clients"]["connected"]


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


def read_with_paho(rate: int, seconds: float) -> dict:
    total = int(rate * seconds)
    with emulator_server() as server:
        seen: set[bytes] = set()
        last = [0.0]
        done = threading.Event()

        def on_message(client, userdata, message) -> None:
            seen.add(message.payload)
            last[0] = time.time()
            if len(seen) >= total:
                done.set()

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-reader", protocol=mqtt.MQTTv5)
        client.username_pw_set(USER, PASSWORD)
        client.on_message = on_message
        client.connect("127.0.0.1", server.mqtt_port)
        client.loop_start()
        client.subscribe("feed/#", qos=1)
        _wait_connected(server.http_url, 1)
        time.sleep(0.2)  # the SUBACK
        cpu = _cpu()
        feed, start = _feed(server.mqtt_port, rate, seconds)
        done.wait(seconds * 3 + 30)
        cpu = _cpu() - cpu
        feed.wait(60)
        client.loop_stop()
        client.disconnect()
    return _figures("paho", total, len(seen), start, last[0], cpu)


def _summarise(receipts, path: str) -> None:
    payloads, last = set(), 0.0
    for payload, micros in receipts:
        payloads.add(payload)
        last = max(last, micros / 1e6)
    with open(path, "w") as handle:  # (pickled with the pipeline, a global list would be a copy)
        json.dump([len(payloads), last], handle)


def read_with_beam(rate: int, seconds: float, readers: int) -> dict:
    total = int(rate * seconds)
    summary = os.path.join(tempfile.mkdtemp(prefix="read-bench-"), "summary.json")
    with emulator_server() as server:
        connection = TdmqConnection(
            server.http_url, username=USER, password=PASSWORD, mqtt_endpoint=f"mqtt://127.0.0.1:{server.mqtt_port}"
        )
        options = {"share_group": "bench", "num_readers": readers} if readers > 1 else {}
        pipeline = beam.Pipeline(options=PipelineOptions([]))
        _ = (
            pipeline
            | ReadFromTdmqMqtt(
                connection, "feed/#", client_id_prefix=f"bench-{readers}", max_records=total,
                max_read_time=seconds * 3 + 30, **options,
            )
            | beam.Map(lambda message: (message.payload, message.receive_time.micros))
            | beam.combiners.ToList()
            | beam.Map(_summarise, summary)
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
    distinct, last = json.load(open(summary)) if os.path.exists(summary) else (0, 0.0)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=3000, help="messages/s the feed publishes")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds the feed publishes")
    args = parser.parse_args()
    pin(os.getpid(), CLIENT_CPU)
    print(f"feed: {args.rate} msgs/s at QoS 1 for {args.seconds:g} s ({int(args.rate * args.seconds)} messages)")
    paho = read_with_paho(args.rate, args.seconds)
    one = read_with_beam(args.rate, args.seconds, 1)
    two = read_with_beam(args.rate, args.seconds, 2)
    ratio = one["msgs_per_s"] / paho["msgs_per_s"] if paho["msgs_per_s"] else 0.0
    print(f"RESULT read_throughput ratio_vs_paho={ratio:.2f} msgs_per_s={one['msgs_per_s']} "
          f"lost={one['lost'] + two['lost']}")  # fmt: skip


if __name__ == "__main__":
    main()
