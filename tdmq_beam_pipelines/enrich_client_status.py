"""Enrich device events with their client's online status (and details), streaming or in batch.

Streaming (Pub/Sub in and out, the ``gcp`` extra)::

    python -m tdmq_beam_pipelines.enrich_client_status \\
        --input_subscription projects/P/subscriptions/device-events \\
        --output_topic projects/P/topics/device-events-enriched \\
        --endpoint https://mqtt-xxxx-gz-public.mqtt.tencenttdmq.com --username enrich \\
        --password-file /secrets/tdmq-password \\
        --secret-id AKID... --secret-key-file /secrets/tc-secret-key --tencent-region ap-guangzhou \\
        --instance-id mqtt-xxxx --runner DataflowRunner --streaming ... --setup_file ./setup.py

Batch, files in and out: ``--input 'events/*.jsonl' --output out/enriched``.

With no arguments it runs on the embedded emulator: it connects a few hundred
simulated MQTT clients (some online, some disconnected with persistent
sessions), generates events for them and for unknown ids, enriches them, and
prints a summary (online, offline, unknown, cache hit rate, API calls, elements/s).

Events are JSON objects with the client id in ``--client-id-field``
(``client_id``); they come out with ``online`` and, with cloud API flags (or
in the demo), ``client`` added.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from tdmq_beam import CloudApiConfig, EnrichWithClientStatus, TdmqConnection
from tdmq_beam.records.fields import json_default
from tdmq_beam.transforms.runner_limits import RunnerCapabilities
from tdmq_beam_pipelines.command_input import input_problem
from tdmq_beam_pipelines.runs import committed_counters, new_pipeline, result_line, run_to_end
from tdmq_beam_pipelines.service_flags import (
    add_service_flags,
    job_parser,
    parse_job_flags,
    service_from_flags,
    usage_error,
)
from tdmq_beam_pipelines.status_source import add_status_source_flags, check_status_source, status_options

__all__ = ["build_pipeline", "generate_events", "main"]

PROGRAM = METRICS_NAMESPACE = "enrich_client_status"
_DEMO_CLOUD_RATE = 200
EVENT_TYPES = ("telemetry", "alarm", "heartbeat", "door_opened")


def _parser() -> argparse.ArgumentParser:
    parser = job_parser(
        PROGRAM, "Enrich device events with client status", beam_options="--runner, --streaming, --project"
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--input_subscription", help="Pub/Sub subscription of JSON events (streaming)")
    io.add_argument("--output_topic", help="Pub/Sub topic for the enriched events (streaming)")
    io.add_argument("--input", help="file pattern of JSON Lines events (batch)")
    io.add_argument("--output", help="prefix of the enriched JSON Lines files (batch)")
    io.add_argument("--failed-output", help="prefix of the failed-lookup files (batch; default OUTPUT-failed)")
    add_service_flags(parser)
    enrich = parser.add_argument_group("enrichment")
    enrich.add_argument("--client-id-field", default="client_id", help="field of the event holding the client id")
    enrich.add_argument("--status-ttl", type=float, default=5.0, help="seconds an online status stays cached")
    enrich.add_argument("--details-ttl", type=float, default=60.0, help="seconds client details stay cached")
    enrich.add_argument("--negative-ttl", type=float, default=30.0, help="seconds an unknown client stays cached")
    enrich.add_argument("--on-failure", choices=("failed", "unknown"), default="failed",
                        help="failed lookups: to the failed output, or through with online null")  # fmt: skip
    add_status_source_flags(enrich, client_id_prefix="enrich-client-events")
    demo = parser.add_argument_group("demo (no --endpoint: the embedded emulator)")
    demo.add_argument("--sample-events", type=int, default=20_000, help="events to generate")
    demo.add_argument("--sample-online", type=int, default=200, help="simulated clients online")
    demo.add_argument("--sample-offline", type=int, default=100, help="simulated clients offline (persistent)")
    return parser


def generate_events(count: int, client_ids: Sequence[str], unknown_share: float = 0.05, seed: int = 5) -> list[dict]:
    """Device events for ``client_ids``, and a share for ids no client has."""
    rng = random.Random(seed)
    events = []
    for seq in range(count):
        if rng.random() < unknown_share:
            client_id = f"unknown-{rng.randrange(50):02d}"
        else:
            client_id = rng.choice(client_ids)
        events.append(
            {"client_id": client_id, "seq": seq, "type": rng.choice(EVENT_TYPES), "value": round(rng.random(), 3)}
        )
    return events


class _CountStates(beam.DoFn):
    """Counts enriched events by client state, for the summary."""

    def process(self, event: dict):
        online = event.get("online")
        if online is None:
            state = "unknown"
        elif online:
            state = "online"
        elif "client" in event and event["client"] is None:
            state = "unknown"
        else:
            state = "offline"
        Metrics.counter(METRICS_NAMESPACE, state).inc()
        yield event


def build_pipeline(
    pipeline: beam.Pipeline,
    args: argparse.Namespace,
    connection: TdmqConnection,
    cloud: CloudApiConfig | None,
    source: beam.PTransform | None = None,
    sink: beam.PTransform | None = None,
    client_events: beam.PTransform | None = None,
) -> None:
    """Read events, enrich them, write them (and failed lookups, in batch).

    ``source`` and ``sink`` replace the inputs and outputs the flags name, and
    ``client_events`` the client events read for ``--status-source events``
    (tests use these to run the streaming shape on a TestStream).
    """
    streaming = bool(args.input_subscription)
    if source is None:
        source = (
            beam.io.ReadFromPubSub(subscription=args.input_subscription)
            if streaming
            else beam.io.ReadFromText(args.input)
        )
    events = pipeline | "Read" >> source | "Parse" >> beam.Map(json.loads)
    result = events | "Enrich" >> EnrichWithClientStatus(
        connection,
        cloud,
        client_id=args.client_id_field,
        on_failure=args.on_failure,
        status_ttl=args.status_ttl,
        details_ttl=args.details_ttl,
        negative_ttl=args.negative_ttl,
        **status_options(pipeline, args, connection, client_events=client_events),
    ).with_progress(None if args.quiet else args.progress_interval)
    enriched = (
        result.enriched
        | "CountStates" >> beam.ParDo(_CountStates())
        | "ToJson" >> beam.Map(lambda event: json.dumps(event, default=json_default))
    )
    if sink is None:
        if streaming:
            sink = beam.Map(str.encode) | beam.io.WriteToPubSub(topic=args.output_topic)
        else:
            sink = beam.io.WriteToText(args.output, file_name_suffix=".jsonl")
    enriched | "Write" >> sink
    failed = result.failed | "FailedToJson" >> beam.Map(result_line)
    if streaming:
        failed | "LogFailed" >> beam.Map(lambda line: logging.getLogger(__name__).warning("lookup failed: %s", line))
    else:
        failed | "WriteFailed" >> beam.io.WriteToText(
            args.failed_output or f"{args.output}-failed", file_name_suffix=".jsonl"
        )


def _summary(result, seconds: float) -> dict[str, Any]:
    counters = committed_counters(result, (METRICS_NAMESPACE, "tdmq_beam.EnrichWithClientStatus"))
    states = {state: counters.get(state, 0) for state in ("online", "offline", "unknown")}
    lookups = counters.get("hits", 0) + counters.get("misses", 0)
    elements = sum(states.values())
    return {
        **states,
        "failed": counters.get("failed", 0),
        "cache_hit_rate": round(counters.get("hits", 0) / lookups, 3) if lookups else 0.0,
        "api_calls": counters.get("status_calls", 0) + counters.get("details_calls", 0),
        "seconds": round(seconds, 2),
        "elements_per_s": round(elements / seconds) if seconds else 0,
    }


def run(args, beam_args: Sequence[str], connection: TdmqConnection, cloud: CloudApiConfig | None) -> dict[str, Any]:
    pipeline = new_pipeline(beam_args, streaming=bool(args.input_subscription))
    build_pipeline(pipeline, args, connection, cloud)
    return _summary(*run_to_end(pipeline))


def run_demo(args: argparse.Namespace, beam_args: Sequence[str]) -> dict[str, Any]:
    """The no-argument run: emulator, simulated clients, events, pipeline, summary."""
    from tdmq_beam.testing import TdmqEmulator

    ids = [f"device-{index:04d}" for index in range(args.sample_online + args.sample_offline)]
    online, offline = ids[: args.sample_online], ids[args.sample_online :]
    # The service allows 20 cloud API requests/s; the demo's emulator allows more, so that
    # describing a few hundred clients takes seconds rather than half a minute.
    with (
        TdmqEmulator(cloud_rate=_DEMO_CLOUD_RATE) as emulator,
        emulator.simulated_clients() as devices,
        tempfile.TemporaryDirectory(prefix="enrich-demo-") as workdir,
    ):
        for client_id in online:
            devices.online(client_id, subscriptions=[f"devices/{client_id}/commands"])
        for client_id in offline:
            devices.offline(client_id, subscriptions=[f"devices/{client_id}/commands"])
        events_path = os.path.join(workdir, "events.jsonl")
        with open(events_path, "w") as handle:
            for event in generate_events(args.sample_events, ids):
                handle.write(json.dumps(event) + "\n")
        args.input = events_path
        args.output = args.output or os.path.join(workdir, "enriched")
        print(f"emulator: {emulator.http_url}; {len(online)} clients online, {len(offline)} offline with "
              f"persistent sessions; {args.sample_events} events (5% for unknown ids); cloud API at "
              f"{_DEMO_CLOUD_RATE}/s (the service allows 20/s)")  # fmt: skip
        connection = emulator.connection(max_in_flight=args.max_in_flight, timeout=args.timeout)
        return run(args, beam_args, connection, emulator.cloud_config(rate=_DEMO_CLOUD_RATE))


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"online:          {summary['online']}")
    print(f"offline:         {summary['offline']}")
    print(f"unknown:         {summary['unknown']}")
    print(f"failed lookups:  {summary['failed']}")
    print(f"cache hit rate:  {summary['cache_hit_rate']:.1%}")
    print(f"API calls:       {summary['api_calls']}")
    print(f"elements/s:      {summary['elements_per_s']} ({summary['seconds']} s)")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the enrichment (or the demo); returns the exit status: 0, or 2 for a usage or
    configuration error (one line on stderr)."""
    args, beam_args = parse_job_flags(_parser(), argv)
    if args.endpoint is None:
        if args.input or args.input_subscription:
            usage_error(PROGRAM, "an input needs --endpoint (without both, the demo runs on the embedded emulator)")
        summary = run_demo(args, beam_args)
    else:
        if bool(args.input_subscription) != bool(args.output_topic):
            usage_error(PROGRAM, "--input_subscription and --output_topic go together")
        if not args.input_subscription and not (args.input and args.output):
            usage_error(PROGRAM, "give --input and --output (batch) or --input_subscription and --output_topic")
        if args.status_source != "query" and not args.input_subscription:
            usage_error(
                PROGRAM,
                f"--status-source {args.status_source} needs the streaming input (--input_subscription): "
                "the client events are a stream, and a file's events would be answered before they came",
            )
        runner = RunnerCapabilities.named(PipelineOptions(list(beam_args)).view_as(StandardOptions).runner)
        if args.status_source != "query" and not runner.mqtt_read_beside_pubsub:
            usage_error(
                PROGRAM,
                f"--status-source {args.status_source} cannot run on the DirectRunner: Beam 2.77's runner for "
                "Pub/Sub reads cannot run the MQTT events read (docs/runners.md); use Dataflow or Flink, or "
                "tdmq_beam_pipelines.ingest_device_telemetry, which reads MQTT, locally",
            )
        check_status_source(PROGRAM, args)
        if args.input and (problem := input_problem(args.input)):
            usage_error(PROGRAM, problem)
        connection, cloud = service_from_flags(PROGRAM, args)
        summary = run(args, beam_args, connection, cloud)
    _print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
