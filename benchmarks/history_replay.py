"""Replaying stored messages (ReadTdmqMessageHistory) beside reading the same messages live (ReadFromTdmqMqtt).

The emulator runs as its own process pinned to one core, with no cloud API
rate limit of its own (``--cloud-rate 0``), so that the client's limit is the
one measured. A persistent MQTT 5 session subscribed to ``replay/#`` is opened
and closed, then ``--messages`` messages (64 bytes, QoS 1, 50 topics, two user
properties and a content type each) are published through the HTTP publish API:
the service stores each one, and queues it for the session. Then, each on the
other core, on the DirectRunner, from the same emulator:

  (a) live: ``ReadFromTdmqMqtt`` drains the session (``max_records``): MQTT, no API call;
  (b) listing: ``ReadTdmqMessageHistory(with_details=False)`` over the range:
      one ``DescribeMessageByTopic`` call per 1,024 messages;
  (c) details, unthrottled (``rate=None``): one ``DescribeMessageDetails`` call
      per message besides the listing: what the connector itself costs;
  (d) details at the service's documented limit (20 requests/s per action), on
      the first ``--at-limit`` messages of the range: what a replay runs at.

Rates are messages output over the pipeline's run time (Beam start-up included);
API calls per message come from the emulator's request counts; CPU is this
process's, per message.

Last line: ``RESULT history_replay live_msgs_per_s=L list_msgs_per_s=A details_msgs_per_s=D
at_limit_msgs_per_s=E list_calls_per_msg=a details_calls_per_msg=d ratio_list_vs_live=A/L
ratio_details_vs_live=D/L lost=X`` (X: messages published and not output, over (a) to (c)).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import apache_beam as beam
import paho.mqtt.client as mqtt
from apache_beam.options.pipeline_options import PipelineOptions
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, os.path.dirname(__file__))

from read_throughput import _cpu, _session_expiry  # this process's CPU; a persistent session's CONNECT
from servers import CLIENT_CPU, emulator_server, emulator_stats, pin

from tdmq_beam import (
    CloudApiConfig,
    MqttMessage,
    ReadFromTdmqMqtt,
    ReadTdmqMessageHistory,
    TdmqClient,
    TdmqConnection,
)
from tdmq_beam.emulator.config import DEFAULT_INSTANCE_ID, DEFAULT_SECRET_ID, DEFAULT_SECRET_KEY

USER, PASSWORD = "user0", "secret0"
READER = "replay-bench"


def _cloud_calls(http_url: str) -> dict[str, int]:
    requests = emulator_stats(http_url)["requests"]
    return {name.split(":", 1)[1]: sum(codes.values()) for name, codes in requests.items() if name.startswith("cloud:")}


def _open_session(mqtt_port: int) -> None:
    """The live reader's session, subscribed and left, so that the broker queues what is published."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{READER}-0", protocol=mqtt.MQTTv5)
    client.username_pw_set(USER, PASSWORD)
    client.connect("127.0.0.1", mqtt_port, clean_start=False, properties=_session_expiry())
    client.loop_start()
    client.subscribe("replay/#", qos=1)
    time.sleep(0.5)  # the SUBACK
    client.disconnect()
    client.loop_stop()


def _publish(connection: TdmqConnection, count: int, first: int = 0) -> None:
    messages = [
        MqttMessage(
            f"replay/dev-{i % 50}",
            f"{i:08d}".encode().ljust(64, b"."),
            qos=1,
            user_properties=[("seq", str(i)), ("source", "bench")],
            content_type="text/plain",
        )
        for i in range(first, first + count)
    ]
    with TdmqClient(connection) as client:
        for start in range(0, len(messages), 2000):
            results = client.publish_batch(messages[start : start + 2000])
            if not all(result.ok for result in results):
                raise RuntimeError("the benchmark's publish failed")


def _count_into(path: str) -> Any:
    def write(count: int) -> None:
        with open(path, "w") as handle:  # (pickled with the pipeline, a global would be a copy)
            handle.write(str(count))

    return write


def _run(name: str, build, http_url: str, expected: int) -> dict[str, Any]:
    """Runs ``build(pipeline) -> PCollection``, counting what it outputs."""
    path = os.path.join(tempfile.mkdtemp(prefix="replay-bench-"), "count")
    pipeline = beam.Pipeline(options=PipelineOptions([]))
    _ = build(pipeline) | beam.combiners.Count.Globally() | beam.Map(_count_into(path))
    calls_before, cpu, started = _cloud_calls(http_url), _cpu(), time.monotonic()
    pipeline.run().wait_until_finish()
    seconds, cpu = time.monotonic() - started, _cpu() - cpu
    calls_after = _cloud_calls(http_url)
    calls = sum(calls_after.values()) - sum(calls_before.values())
    output = int(open(path).read()) if os.path.exists(path) else 0
    figures = {
        "name": name,
        "messages": output,
        "lost": expected - output,
        "seconds": round(seconds, 2),
        "msgs_per_s": round(output / seconds) if seconds else 0,
        "api_calls": calls,
        "calls_per_msg": round(calls / output, 4) if output else 0.0,
        "cpu_us_per_msg": round(cpu / output * 1e6) if output else 0,
    }
    print(json.dumps(figures), flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages published, then read (default 20,000)")
    parser.add_argument("--at-limit", type=int, default=200, help="messages read at 20 calls/s (default 200)")
    args = parser.parse_args()
    if not 0 < args.at_limit <= args.messages <= 100_000:
        parser.error("need 0 < --at-limit <= --messages <= 100,000 (the emulator stores 100,000)")
    pin(os.getpid(), CLIENT_CPU)
    with emulator_server("--cloud-rate", "0") as server:
        assert server.mqtt_port is not None
        connection = TdmqConnection(
            server.http_url, username=USER, password=PASSWORD, mqtt_endpoint=f"mqtt://127.0.0.1:{server.mqtt_port}",
            max_in_flight=64,
        )  # fmt: skip

        def cloud(rate: float | None) -> CloudApiConfig:
            return CloudApiConfig(
                secret_id=DEFAULT_SECRET_ID, secret_key=DEFAULT_SECRET_KEY, region="ap-guangzhou",
                instance_id=DEFAULT_INSTANCE_ID, endpoint=server.http_url, rate=rate,
            )  # fmt: skip

        _open_session(server.mqtt_port)
        time.sleep(0.01)
        start = time.time()
        time.sleep(0.002)
        _publish(connection, args.at_limit)
        time.sleep(0.002)
        first_part_end = time.time()
        _publish(connection, args.messages - args.at_limit, first=args.at_limit)
        time.sleep(0.002)
        end = time.time()
        print(f"published {args.messages} messages in {end - start:.1f} s", flush=True)

        live = _run(
            "live ReadFromTdmqMqtt",
            lambda p: p | ReadFromTdmqMqtt(connection, "replay/#", client_id_prefix=READER,
                                           max_records=args.messages, max_read_time=300),
            server.http_url, args.messages,
        )  # fmt: skip
        listing = _run(
            "replay, listing only",
            lambda p: (p | ReadTdmqMessageHistory(cloud(None), "replay/#", start=start, end=end,
                                                 with_details=False)).messages,
            server.http_url, args.messages,
        )  # fmt: skip
        details = _run(
            "replay with details, unthrottled",
            lambda p: (p | ReadTdmqMessageHistory(cloud(None), "replay/#", start=start, end=end)).messages,
            server.http_url, args.messages,
        )  # fmt: skip
        at_limit = _run(
            "replay with details, 20 calls/s",
            lambda p: (p | ReadTdmqMessageHistory(cloud(20.0), "replay/#", start=start, end=first_part_end)).messages,
            server.http_url, args.at_limit,
        )  # fmt: skip

    def ratio(a: dict, b: dict) -> float:
        return a["msgs_per_s"] / b["msgs_per_s"] if b["msgs_per_s"] else 0.0

    lost = live["lost"] + listing["lost"] + details["lost"] + at_limit["lost"]
    print(
        f"RESULT history_replay live_msgs_per_s={live['msgs_per_s']} list_msgs_per_s={listing['msgs_per_s']} "
        f"details_msgs_per_s={details['msgs_per_s']} at_limit_msgs_per_s={at_limit['msgs_per_s']} "
        f"list_calls_per_msg={listing['calls_per_msg']} details_calls_per_msg={details['calls_per_msg']} "
        f"ratio_list_vs_live={ratio(listing, live):.2f} ratio_details_vs_live={ratio(details, live):.2f} lost={lost}"
    )


if __name__ == "__main__":
    main()
