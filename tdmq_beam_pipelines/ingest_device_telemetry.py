"""Ingest device telemetry from MQTT: read, decode with an Avro schema, enrich with client status, write.

MQTT (``ReadFromTdmqMqtt``, shared readers) -> records (``DecodeMqttMessages`` with
``schemas/device_telemetry.avsc``) -> ``EnrichWithClientStatus`` -> JSON Lines files,
or a Pub/Sub topic (the ``gcp`` extra). Messages that do not decode go to the failed
files (or the log, with Pub/Sub) with the reason and the raw message.

    python -m tdmq_beam_pipelines.ingest_device_telemetry \\
        --endpoint https://mqtt-xxxx.mqtt.tencenttdmq.com --mqtt-endpoint mqtts://mqtt-xxxx.mqtt.tencenttdmq.com \\
        --username ingest --password-file /secrets/tdmq-password \\
        --share-group ingest --num-readers 4 --output gs://bucket/telemetry/part \\
        --runner DataflowRunner --streaming ... --setup_file ./setup.py

Add ``--max-records N`` or ``--max-read-time S`` to drain what is queued and stop.

With no arguments it runs on the embedded emulator: simulated devices publish
telemetry at QoS 1 for a few seconds (a few deliberately malformed readings
among them), two shared readers read it, and it prints published, received,
decoded, failed, duplicates, lost (published and never read: must be 0) and
the end-to-end latency from the device to the output.
"""

from __future__ import annotations

import argparse
import base64
import glob
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam

from tdmq_beam import CloudApiConfig, DecodeMqttMessages, EnrichWithClientStatus, ReadFromTdmqMqtt, TdmqConnection
from tdmq_beam.records.fields import json_default
from tdmq_beam.transforms.mqtt_source import METRICS_NAMESPACE
from tdmq_beam_pipelines.package_files import SCHEMAS
from tdmq_beam_pipelines.runs import committed_counters, committed_gauges, new_pipeline, result_line, run_to_end
from tdmq_beam_pipelines.service_flags import (
    add_service_flags,
    job_parser,
    parse_job_flags,
    service_from_flags,
    usage_error,
)
from tdmq_beam_pipelines.signals import EXIT_STOPPED, run_stoppably
from tdmq_beam_pipelines.status_source import add_status_source_flags, check_status_source, status_options

__all__ = ["build_pipeline", "main"]

PROGRAM = "ingest_device_telemetry"
SCHEMA = SCHEMAS / "device_telemetry.avsc"


def _parser() -> argparse.ArgumentParser:
    parser = job_parser(PROGRAM, "Ingest device telemetry from MQTT", beam_options="--runner, --streaming, --project")
    read = parser.add_argument_group("reading")
    read.add_argument("--mqtt-endpoint", help="MQTT access point, mqtt://host:1883 or mqtts://host:8883")
    read.add_argument("--topics", nargs="+", default=["devices/+/telemetry"], help="topic filters to read")
    read.add_argument("--client-id-prefix", default="ingest-telemetry",
                      help="readers are PREFIX-0, PREFIX-1, ...: keep it stable to resume sessions")  # fmt: skip
    read.add_argument("--share-group", default="ingest", help="shared subscription group ('' for none)")
    read.add_argument("--num-readers", type=int, default=2, help="parallel readers (needs a share group)")
    read.add_argument("--qos", type=int, choices=(0, 1, 2), default=1, help="subscription QoS")
    read.add_argument("--mqtt-version", type=int, choices=(4, 5), default=5, help="5, or 4 for MQTT 3.1.1")
    read.add_argument("--max-records", type=int, help="stop after this many messages")
    read.add_argument("--max-read-time", type=float, help="stop after this many seconds")
    read.add_argument("--backlog-interval", type=float, default=30.0,
                      help="seconds between polls of the shared subscription's backlog, reported for autoscaling "
                           "(with the cloud API flags; 0: none)")  # fmt: skip
    read.add_argument("--schema", default=str(SCHEMA), help="Avro schema with mqtt.* annotations")
    read.add_argument("--mapping-file", help="mapping file beside the schema (as for writing)")
    io = parser.add_argument_group("output")
    io.add_argument("--output", help="prefix of the JSON Lines files")
    io.add_argument("--failed-output", help="prefix of the failed-message files (default OUTPUT-failed)")
    io.add_argument("--output_topic", help="Pub/Sub topic for the enriched records (instead of --output)")
    add_service_flags(parser)
    enrich = parser.add_argument_group("enrichment")
    enrich.add_argument("--status-ttl", type=float, default=5.0, help="seconds an online status stays cached")
    enrich.add_argument("--details-ttl", type=float, default=60.0, help="seconds client details stay cached")
    add_status_source_flags(enrich, client_id_prefix="ingest-client-events")
    demo = parser.add_argument_group("demo (no --endpoint: the embedded emulator)")
    demo.add_argument("--demo-devices", type=int, default=20, help="simulated devices")
    demo.add_argument("--demo-seconds", type=float, default=4.0, help="seconds the devices publish")
    demo.add_argument("--demo-rate", type=int, default=500, help="readings per second, all devices together")
    demo.add_argument("--demo-invalid", type=int, default=10, help="deliberately malformed readings")
    return parser


class _PublishToPubSub(beam.DoFn):
    """Publishes each element (bytes) to a Pub/Sub topic, waiting for every publish by the bundle's end.

    Beam's ``WriteToPubSub`` sends a DirectRunner pipeline to the runner that cannot run
    the MQTT source (docs/runners.md says why); the Pub/Sub client works on every runner.
    """

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def setup(self) -> None:
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        self._publisher = pubsub_v1.PublisherClient()
        self._futures: list[Any] = []

    @beam.typehints.no_annotations  # emits nothing: Beam 2.78 reads '-> None' as a non-iterable output
    def process(self, data: bytes) -> None:
        self._futures.append(self._publisher.publish(self._topic, data))

    def finish_bundle(self) -> None:
        futures, self._futures = self._futures, []
        for future in futures:
            future.result(timeout=60)


def _stamp(record: dict[str, Any]) -> dict[str, Any]:
    record["ingested_at"] = int(time.time() * 1000)
    return record


def build_pipeline(
    pipeline: beam.Pipeline,
    args: argparse.Namespace,
    connection: TdmqConnection,
    cloud: CloudApiConfig | None,
    client_events: beam.PTransform | None = None,
) -> None:
    """Read, decode, enrich, write (``client_events`` replaces the events read for ``--status-source``)."""
    messages = pipeline | "Read" >> ReadFromTdmqMqtt(
        connection,
        args.topics,
        client_id_prefix=args.client_id_prefix,
        share_group=args.share_group or None,
        num_readers=args.num_readers,
        qos=args.qos,
        mqtt_version=args.mqtt_version,
        max_records=args.max_records,
        max_read_time=args.max_read_time,
        cloud=cloud if cloud is not None and args.share_group and args.backlog_interval > 0 else None,
        backlog_interval=args.backlog_interval if args.backlog_interval > 0 else 30.0,
    )
    decoded = messages | "Decode" >> DecodeMqttMessages(args.schema, mapping_file=args.mapping_file)
    # Bundle batching: the reader's bundles already hold up to a second of messages, and sharded
    # batching's processing-time timers would send a DirectRunner run to the runner that cannot
    # run the MQTT source (see docs/runners.md).
    result = decoded.records | "Enrich" >> EnrichWithClientStatus(
        connection,
        cloud,
        client_id="device_id",
        status_ttl=args.status_ttl,
        details_ttl=args.details_ttl,
        batching="bundle",
        **status_options(
            pipeline,
            args,
            connection,
            client_events=client_events,
            max_read_time=getattr(args, "events_read_time", None) or args.max_read_time,
        ),
    ).with_progress(None if args.quiet else args.progress_interval)
    lines = (
        result.enriched
        | "Stamp" >> beam.Map(_stamp)
        | "ToJson" >> beam.Map(lambda record: json.dumps(record, default=json_default))
    )
    failures = (decoded.failed, result.failed) | "AllFailed" >> beam.Flatten()
    failed_lines = failures | "FailedToJson" >> beam.Map(result_line)
    if args.output_topic:
        _ = lines | "Encode" >> beam.Map(str.encode) | "Publish" >> beam.ParDo(_PublishToPubSub(args.output_topic))
        _ = failed_lines | "LogFailed" >> beam.Map(lambda line: logging.getLogger(__name__).warning("failed: %s", line))
    else:
        _ = lines | "Write" >> beam.io.WriteToText(args.output, file_name_suffix=".jsonl")
        _ = failed_lines | "WriteFailed" >> beam.io.WriteToText(
            args.failed_output or f"{args.output}-failed", file_name_suffix=".jsonl"
        )


def run(args, beam_args: Sequence[str], connection: TdmqConnection, cloud: CloudApiConfig | None) -> dict[str, Any]:
    pipeline = new_pipeline(beam_args, streaming=bool(args.output_topic))
    build_pipeline(pipeline, args, connection, cloud)
    result, seconds = run_to_end(pipeline)
    # Not the client events' reader: "received" is the telemetry read.
    counters = committed_counters(
        result, lambda namespace: namespace.startswith("tdmq_beam."), except_steps="ClientEvents"
    )
    summary = {
        "received": counters.get("received", 0),
        "decoded": counters.get("decoded", 0),
        "failed": counters.get("decode_failures", 0),
        "duplicates": counters.get("redelivered", 0),
        "seconds": round(seconds, 2),
    }
    backlog = committed_gauges(result, METRICS_NAMESPACE).get("backlog_messages")
    if backlog is not None:
        summary["backlog"] = backlog
    return summary


def _feed(emulator, devices, device_ids: list[str], args: argparse.Namespace, published: list[int]) -> None:
    """The simulated devices: wait for the readers, then publish ``rate`` readings/s for ``seconds``."""
    readers = [f"{args.client_id_prefix}-{index}" for index in range(args.num_readers)]
    deadline = time.monotonic() + 120
    while not all((emulator.session_state(reader) or {}).get("connected") for reader in readers):
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    total = int(args.demo_rate * args.demo_seconds)
    invalid = set(range(0, total, max(1, total // max(1, args.demo_invalid)))[: args.demo_invalid])
    tick = 0.1
    per_tick = max(1, int(args.demo_rate * tick))
    started = time.monotonic()
    for first in range(0, total, per_tick):
        batch: dict[str, list[tuple[str, bytes]]] = {}
        for seq in range(first, min(total, first + per_tick)):
            device = device_ids[seq % len(device_ids)]
            reading: dict[str, Any] = {"seq": seq, "sent_at": int(time.time() * 1000), "temperature": 20 + seq % 7}
            if seq in invalid:
                reading["temperature"] = "hot"  # the schema says double: this one goes to failed
            batch.setdefault(device, []).append((f"devices/{device}/telemetry", json.dumps(reading).encode()))
        for device, messages in batch.items():
            if devices.publish(device, messages) == len(messages):
                published.extend(json.loads(payload)["seq"] for _, payload in messages)
        time.sleep(max(0.0, started + (first // per_tick + 1) * tick - time.monotonic()))


def _read_lines(prefix: str) -> Iterator[dict[str, Any]]:
    for name in sorted(glob.glob(prefix + "*.jsonl")):
        with open(name) as handle:
            yield from (json.loads(line) for line in handle if line.strip())


def _failed_seq(failure: dict[str, Any]) -> int | None:
    try:
        message = failure["element"]
        return json.loads(base64.b64decode(message["payload"]))["seq"]
    except (KeyError, TypeError, ValueError):
        return None


def run_demo(args: argparse.Namespace, beam_args: Sequence[str]) -> dict[str, Any]:
    """The no-argument run: emulator, devices publishing, the pipeline reading, and what arrived."""
    from tdmq_beam.testing import TdmqEmulator

    device_ids = [f"sensor-{index:03d}" for index in range(args.demo_devices)]
    total = int(args.demo_rate * args.demo_seconds)
    with (
        TdmqEmulator() as emulator,
        emulator.simulated_clients() as devices,
        tempfile.TemporaryDirectory(prefix="ingest-demo-") as workdir,
    ):
        for device in device_ids:
            devices.online(device)
        args.output = args.output or os.path.join(workdir, "telemetry")
        args.max_records = args.max_records or total
        args.max_read_time = args.max_read_time or args.demo_seconds + 60
        args.events_read_time = args.demo_seconds + 5  # the events have no record count to end at
        print(
            f"emulator: {emulator.http_url}; {len(device_ids)} devices publish {total} readings at QoS 1 over "
            f"{args.demo_seconds:g} s ({args.demo_invalid} malformed); {args.num_readers} shared readers"
        )
        published: list[int] = []
        feeder = threading.Thread(target=_feed, args=(emulator, devices, device_ids, args, published), daemon=True)
        feeder.start()
        connection = emulator.connection(max_in_flight=args.max_in_flight, timeout=args.timeout)
        summary = run(args, beam_args, connection, None)
        feeder.join(timeout=args.demo_seconds + 60)
        outputs = list(_read_lines(args.output + "-0"))  # WriteToText names shards PREFIX-00000-of-N
        failures = list(_read_lines(args.failed_output or f"{args.output}-failed"))
    seen = {record["seq"] for record in outputs} | {seq for f in failures if (seq := _failed_seq(f)) is not None}
    latencies = sorted(record["ingested_at"] - record["sent_at"] for record in outputs)
    summary.update(
        published=len(published),
        lost=len(set(published) - seen),
        online=sum(1 for record in outputs if record.get("online")),
        unknown=sum(1 for record in outputs if record.get("online") is None),
        latency_p50_ms=latencies[len(latencies) // 2] if latencies else None,
        latency_p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None,
    )
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    if "published" in summary:
        print(f"published:       {summary['published']}")
    print(f"received:        {summary['received']}")
    print(f"decoded:         {summary['decoded']}")
    print(f"failed:          {summary['failed']}")
    print(f"duplicates:      {summary['duplicates']} (redelivered, flagged DUP)")
    if "lost" in summary:
        print(f"lost:            {summary['lost']}")
        print(f"online:          {summary['online']} of the decoded readings came from online devices")
        if summary["unknown"]:
            print(f"unknown:         {summary['unknown']} (no client event told of their device: it connected "
                  "before the events reader)")  # fmt: skip
        print(f"latency p50/p99: {summary['latency_p50_ms']} / {summary['latency_p99_ms']} ms (device to output)")
    if "backlog" in summary:
        print(f"backlog:         {summary['backlog']} messages in the shared subscription, as last polled")
    print(f"seconds:         {summary['seconds']}")
    if summary.get("stopped"):
        print("stopped:         yes (by a signal: the readers ended after what they had read, all of it written)")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ingest (or the demo); returns the exit status: 0, or 2 for a usage or
    configuration error (one line on stderr)."""
    args, beam_args = parse_job_flags(_parser(), argv)
    if args.num_readers > 1 and not args.share_group:
        usage_error(PROGRAM, "--num-readers above 1 needs --share-group: unshared readers each get every message")
    if args.backlog_interval < 0:
        usage_error(PROGRAM, f"--backlog-interval must be 0 (none) or positive, got {args.backlog_interval}")
    if not os.path.isfile(args.schema):
        usage_error(PROGRAM, f"--schema {args.schema} does not exist")
    check_status_source(PROGRAM, args)
    if args.endpoint is None:
        if args.mqtt_endpoint or args.output_topic:
            usage_error(PROGRAM, "--mqtt-endpoint and --output_topic need --endpoint (without, the demo runs)")
        summary = run_stoppably(PROGRAM, lambda: run_demo(args, beam_args))
        _print_summary(summary)
        if summary["stopped"]:
            return EXIT_STOPPED
        return 0 if summary["lost"] == 0 else 1
    if not args.mqtt_endpoint:
        usage_error(PROGRAM, "give --mqtt-endpoint (mqtt://host:1883 or mqtts://host:8883) beside --endpoint")
    if bool(args.output) == bool(args.output_topic):
        usage_error(PROGRAM, "give one of --output (JSON Lines files) and --output_topic (Pub/Sub)")
    if args.output and args.max_records is None and args.max_read_time is None:
        # Beam's text sink writes a bounded collection: a read without an end never closes its files.
        usage_error(PROGRAM, "--output (files) needs an end: give --max-records or --max-read-time, "
                             "or stream to Pub/Sub with --output_topic")  # fmt: skip
    connection, cloud = service_from_flags(
        PROGRAM, args, check=lambda: DecodeMqttMessages(args.schema, mapping_file=args.mapping_file)
    )
    summary = run_stoppably(PROGRAM, lambda: run(args, beam_args, connection, cloud))
    _print_summary(summary)
    return EXIT_STOPPED if summary["stopped"] else 0


if __name__ == "__main__":
    sys.exit(main())
