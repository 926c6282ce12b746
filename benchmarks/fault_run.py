"""Fault run: N messages through WriteToTdmqMqtt while the emulator fails 10% of publishes.

The emulator (its own process) injects 500s, 429s with Retry-After, delays past
the client's timeout and connection resets into 10% of HTTP publishes; an MQTT
subscriber records every payload it receives. The run checks that:

- published + failed == input, and no element appears twice in the results;
- every published element was delivered to the subscriber (a delayed request
  the client gave up on may be delivered as well: at least once);
- failed entries are only where retries were exhausted.

Last line: ``RESULT fault_run input=I published=P failed=F delivered=D lost=L``
(L: published elements the subscriber never got; must be 0). Exits 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import threading
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

sys.path.insert(0, os.path.dirname(__file__))

from servers import emulator_server

from tdmq_beam import MqttMessage, RetryPolicy, TdmqConnection, WriteToTdmqMqtt

MAX_ATTEMPTS = 5


class _Subscriber:
    """A paho-mqtt subscriber recording the payloads of fault/#."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.payloads: set[bytes] = set()
        self.received = 0
        ready = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fault-run-subscriber", protocol=mqtt.MQTTv5)
        self._client.username_pw_set("user0", "secret0")
        self._client.on_connect = lambda client, *_: client.subscribe("fault/#", qos=1)
        self._client.on_subscribe = lambda *_: ready.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not ready.wait(10):
            raise SystemExit("the subscriber could not subscribe")

    def _on_message(self, client, userdata, message) -> None:
        self.received += 1
        self.payloads.add(message.payload)

    def wait_for(self, wanted: set[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not wanted <= self.payloads and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _records(path: str) -> list[dict]:
    records = []
    for name in glob.glob(path + "*"):
        with open(name) as handle:
            records.extend(json.loads(line) for line in handle if line.strip())
    return records


def _write(pcoll, path: str, label: str) -> None:
    def as_json(result) -> str:
        return json.dumps(
            {
                "payload": result.element.payload.decode(),
                "attempts": result.attempts,
                "error_kind": getattr(result, "error_kind", None),
                "reason": getattr(result, "reason", None),
            }
        )

    pcoll | f"{label}Json" >> beam.Map(as_json) | f"{label}Write" >> beam.io.WriteToText(path)


def run(n: int, fault_rate: float, kinds: str, timeout: float, delay: float, seed: int) -> dict[str, int]:
    with emulator_server(
        "--fault-rate", str(fault_rate), "--fault-kinds", kinds,
        "--fault-seed", str(seed), "--fault-delay", str(delay),
    ) as emulator:  # fmt: skip
        subscriber = _Subscriber(emulator.mqtt_port)
        connection = TdmqConnection(
            emulator.http_url,
            username="user0",
            password="secret0",
            timeout=timeout,
            retry=RetryPolicy(max_attempts=MAX_ATTEMPTS, initial_backoff=0.05, max_backoff=1.0),
        )
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="fault-run-") as workdir:
            with beam.Pipeline(options=PipelineOptions([])) as pipeline:
                result = (
                    pipeline
                    | beam.Impulse()
                    | beam.FlatMap(lambda _: (MqttMessage(f"fault/{i % 100}", str(i)) for i in range(n)))
                    | WriteToTdmqMqtt(connection)
                )
                _write(result.published, os.path.join(workdir, "published"), "Published")
                _write(result.failed, os.path.join(workdir, "failed"), "Failed")
            published = _records(os.path.join(workdir, "published"))
            failed = _records(os.path.join(workdir, "failed"))
        seconds = time.monotonic() - started
        published_payloads = {record["payload"].encode() for record in published}
        subscriber.wait_for(published_payloads, timeout=delay + 30)
        subscriber.close()

    problems = []
    elements = [record["payload"] for record in published + failed]
    if len(published) + len(failed) != n:
        problems.append(f"published + failed = {len(published) + len(failed)}, not {n}")
    if len(set(elements)) != len(elements):
        problems.append(f"{len(elements) - len(set(elements))} elements appear twice in the results")
    transient = ("server_error", "rate_limited", "transport")
    exhausted = [r for r in failed if r["attempts"] == MAX_ATTEMPTS and r["error_kind"] in transient]
    if len(exhausted) != len(failed):
        problems.append(f"{len(failed) - len(exhausted)} failed entries did not exhaust their retries")
    lost = len(published_payloads - subscriber.payloads)
    if lost:
        problems.append(f"{lost} published messages were never delivered")
    retries = sum(r["attempts"] - 1 for r in published + failed)
    print(f"{n} messages, {fault_rate:.0%} faults ({kinds}; delay {delay:g}s vs timeout {timeout:g}s), "
          f"{MAX_ATTEMPTS} attempts: {seconds:.1f} s, {retries} retries, "
          f"{subscriber.received - len(published_payloads)} extra deliveries (at least once)")  # fmt: skip
    for problem in problems:
        print(f"CHECK FAILED: {problem}")
    return {
        "input": n,
        "published": len(published),
        "failed": len(failed),
        "delivered": len(published_payloads & subscriber.payloads),
        "lost": lost,
        "problems": len(problems),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="messages (default 100,000)")
    parser.add_argument("--fault-rate", type=float, default=0.1, help="share of publishes that fail (default 0.1)")
    parser.add_argument("--fault-kinds", default="500,429,reset,delay", help="faults drawn from (default: all)")
    parser.add_argument("--timeout", type=float, default=2.0, help="client timeout in seconds (default 2)")
    parser.add_argument("--delay", type=float, default=3.0, help="seconds a delay fault holds a request (default 3)")
    parser.add_argument("--seed", type=int, default=7, help="fault seed (default 7)")
    args = parser.parse_args()
    figures = run(args.n, args.fault_rate, args.fault_kinds, args.timeout, args.delay, args.seed)
    print(
        f"RESULT fault_run input={figures['input']} published={figures['published']} failed={figures['failed']} "
        f"delivered={figures['delivered']} lost={figures['lost']}"
    )
    return 1 if figures["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
