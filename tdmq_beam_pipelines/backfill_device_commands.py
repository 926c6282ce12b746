"""Backfill device commands: read commands (Avro or JSON Lines), publish them over MQTT, keep dead letters.

With no arguments it runs on the embedded emulator: it generates a sample
(10,000 commands for 500 devices, a few of them invalid), subscribes to the
commands with paho-mqtt, runs, and prints the summary and how many messages
the subscriber got::

    python -m tdmq_beam_pipelines.backfill_device_commands

For real use::

    TDMQ_PASSWORD=... python -m tdmq_beam_pipelines.backfill_device_commands \\
        --input 'gs://bucket/commands/*.avro' --output gs://bucket/backfill/run-1 \\
        --endpoint https://mqtt-xxxx-gz-public.mqtt.tencenttdmq.com \\
        --username backfill --password-env TDMQ_PASSWORD --tps 500 \\
        --runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp \\
        --setup_file ./setup.py

Outputs: ``{output}-published-*.jsonl`` and ``{output}-failed-*.jsonl`` (or
``.avro`` with ``--output-format avro``, in the schemas of ``schemas/``). With
``--verify`` (and the cloud API flags), each published message (or a
``--verify-sample`` of them) is then looked up among the service's stored
messages: ``{output}-verified-*`` and ``{output}-missing-*``.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, TextIO

import apache_beam as beam
import fastavro
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from tdmq_beam import (
    Batching,
    CloudApiConfig,
    IdempotencyKey,
    MissingMessage,
    TdmqConnection,
    VerifyStoredMessages,
    WriteToTdmqMqtt,
    avro_mapping,
)
from tdmq_beam.errors import ConfigurationError
from tdmq_beam.json_documents import DEFAULT_MAX_DEPTH
from tdmq_beam.records.avro_mapping import load_schema
from tdmq_beam.transforms.runner_limits import RunnerCapabilities
from tdmq_beam_pipelines.command_input import DEFAULT_MAX_LINE_BYTES, ReadCommands, input_problem, with_location
from tdmq_beam_pipelines.journal import SkipJournaled, WriteJournal, journal_directory
from tdmq_beam_pipelines.package_files import SCHEMAS
from tdmq_beam_pipelines.runs import committed_counters, new_pipeline, result_line, run_to_end
from tdmq_beam_pipelines.service_flags import (
    EXIT_RECORDS_FAILED,
    add_service_flags,
    job_parser,
    parse_job_flags,
    service_from_flags,
    usage_error,
)
from tdmq_beam_pipelines.signals import EXIT_STOPPED, run_stoppably

__all__ = ["build_pipeline", "generate_commands", "main"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_SCHEMA = SCHEMAS / "device_command.avsc"
METRICS_NAMESPACE = "backfill_device_commands"
VERIFY_NEEDS_CLOUD = (
    "--verify needs the cloud API flags: --secret-id, --secret-key-env or --secret-key-file, --tencent-region "
    "and --instance-id"
)
AVRO_NOT_ON_DASK = "--output-format avro: on Beam's Dask runner the backfill writes JSON Lines; use jsonl"
PROGRAM = "backfill_device_commands"
COMMANDS = ("reboot", "update-firmware", "set-interval", "lock", "unlock", "ping")


def _parser() -> argparse.ArgumentParser:
    parser = job_parser(
        PROGRAM, "Publish device commands to TDMQ for MQTT", beam_options="--runner, --project, --direct_num_workers"
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", help="file pattern of commands: *.avro, or JSON Lines (*.jsonl, *.json)")
    io.add_argument("--input-format", choices=("auto", "avro", "jsonl"), default="auto")
    io.add_argument("--schema", default=str(DEFAULT_SCHEMA), help="Avro schema of a command, with mqtt.* annotations")
    io.add_argument("--mapping", help="JSON mapping file (topic, payload, roles, user_properties)")
    io.add_argument("--resume", action="store_true",
                    help="skip the commands the journal (OUTPUT-journal/) records as published")  # fmt: skip
    io.add_argument("--allow-empty-input", action="store_true",
                    help="run when the --input pattern matches no file (otherwise an error)")  # fmt: skip
    io.add_argument("--max-line-bytes", type=int, default=DEFAULT_MAX_LINE_BYTES,
                    help="a longer JSON line is a dead letter, never read whole")  # fmt: skip
    io.add_argument("--max-nesting", type=int, default=DEFAULT_MAX_DEPTH,
                    help="a JSON line nested deeper (arrays and objects) is a dead letter")  # fmt: skip
    io.add_argument("--output", help="prefix of the result files (published and failed)")
    io.add_argument("--output-format", choices=("jsonl", "avro"), default="jsonl")

    add_service_flags(parser, cloud_purpose="for --verify")

    behaviour = parser.add_argument_group("publishing")
    behaviour.add_argument("--qos", type=int, choices=(0, 1, 2), help="default QoS where a record sets none")
    behaviour.add_argument("--idempotency-key", action="store_true", help="add an idempotency-key user property")
    behaviour.add_argument(
        "--max-pending-batches", type=int, default=Batching().max_pending_batches, metavar="N",
        help="batches in flight per worker process: after a kill, --resume publishes again at most "
        "what these N batches had accepted; fewer keep the pipe less full",
    )  # fmt: skip
    behaviour.add_argument(
        "--allow-failed", action="store_true",
        help=f"exit 0 even when some records failed (otherwise exit {EXIT_RECORDS_FAILED})",
    )  # fmt: skip

    audit = parser.add_argument_group("verification")
    audit.add_argument(
        "--verify", action="store_true",
        help="then check that the service stored each published message (DescribeMessageDetails: one cloud API "
        "call a message, 20/s by default; needs the cloud API flags, except for the demo)",
    )  # fmt: skip
    audit.add_argument(
        "--verify-sample", type=float, default=1.0, metavar="FRACTION",
        help="verify this fraction of the published messages, chosen by message id (0 < FRACTION <= 1)",
    )  # fmt: skip

    demo = parser.add_argument_group("demo (no --endpoint: the embedded emulator)")
    demo.add_argument("--sample-commands", type=int, default=10_000, help="commands to generate")
    demo.add_argument("--sample-devices", type=int, default=500, help="devices they address")
    demo.add_argument("--sample-invalid", type=int, default=10, help="invalid commands among them (dead letters)")
    return parser


def generate_commands(count: int, devices: int, invalid: int, seed: int = 7) -> list[dict[str, Any]]:
    """Sample commands in the device-command schema; ``invalid`` of them have a wildcard in the device id."""
    rng = random.Random(seed)
    start = 1_735_689_600_000  # 2025-01-01T00:00:00Z
    records = []
    for index in range(count):
        device = f"dev-{rng.randrange(devices):04d}"
        if index < invalid:
            device = f"dev-#{index}"
        records.append(
            {
                "device_id": device,
                "command_id": f"cmd-{index:06d}",
                "command": rng.choice(COMMANDS),
                "params": {"interval": str(rng.choice((10, 30, 60)))} if rng.random() < 0.3 else {},
                "issued_at": start + index * 1000,
                "qos": 1,
                "retained": None,
                "expiry_seconds": 3600,
                "reply_topic": f"devices/{device}/replies" if rng.random() < 0.5 else None,
                "trace_id": f"trace-{rng.getrandbits(48):012x}",
            }
        )
    return records


class _CountFailures(beam.DoFn):
    """Counts dead letters by error kind, and keeps one example reason of each, for the summary."""

    def start_bundle(self) -> None:
        self._examples_given: set[str] = set()

    def process(self, failure):
        failure = with_location(failure)  # the write's failures, as the reader's, say where the command was
        kind = failure.error_kind
        Metrics.counter(METRICS_NAMESPACE, f"failed_{kind}").inc()
        if kind not in self._examples_given:
            self._examples_given.add(kind)
            Metrics.string_set(METRICS_NAMESPACE, f"example_{kind}").add(failure.reason)
        yield failure


def _write_results(results: dict[str, beam.PCollection], args: argparse.Namespace) -> None:
    for name, pcoll in results.items():
        prefix = f"{args.output}-{name}"
        if args.output_format == "avro":
            schema = load_schema(SCHEMAS / f"{name}_message.avsc")
            records = pcoll | f"{name}AsRecords" >> beam.Map(lambda result: result.as_dict())
            records | f"Write{name}" >> beam.io.WriteToAvro(prefix, schema=schema, file_name_suffix=".avro")
        else:
            (
                pcoll
                | f"{name}ToJson" >> beam.Map(result_line)
                | f"Write{name}" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl")
            )


class _AppendLines(beam.DoFn):
    """Writes each bundle's lines to a file of its own, ``{prefix}-{uuid}.jsonl``, as a side effect.

    For Beam's Dask runner, which runs only the last transform's branch and where 2.77's
    ``WriteToText`` writes nothing (it drops what a DoFn emits in ``finish_bundle``); it
    emits nothing itself.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    def start_bundle(self) -> None:
        self._handle: TextIO | None = None

    @beam.typehints.no_annotations  # emits nothing: Beam 2.78 reads '-> None' as a non-iterable output
    def process(self, line: str) -> None:
        if self._handle is None:
            self._handle = open(f"{self._prefix}-{uuid.uuid4().hex}.jsonl", "w", encoding="utf-8")
        self._handle.write(line + "\n")

    def finish_bundle(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _write_results_on_dask(results: dict[str, beam.PCollection], args: argparse.Namespace) -> None:
    """The results as JSON Lines on Beam's Dask runner, which computes only the branch of the last
    transform applied: every write feeds one last step, so that all run."""
    if args.output_format == "avro":
        raise ConfigurationError(AVRO_NOT_ON_DASK)
    written = []
    for name, pcoll in results.items():
        written.append(
            pcoll
            | f"{name}ToJson" >> beam.Map(result_line)
            | f"Write{name}" >> beam.ParDo(_AppendLines(f"{args.output}-{name}"))
        )
    _ = tuple(written) | "AllWritten" >> beam.Flatten() | "Done" >> beam.Map(lambda nothing: nothing)


class _Count(beam.DoFn):
    """Counts what passes, as ``name`` in the pipeline's metrics namespace."""

    def __init__(self, name: str) -> None:
        self._counter = Metrics.counter(METRICS_NAMESPACE, name)

    def process(self, element):
        self._counter.inc()
        yield element


def _sampled(fraction: float) -> Any:
    """Whether a published message is in the ``fraction`` verified (by its id, so reruns pick the same)."""

    def chosen(published: Any) -> bool:
        if fraction >= 1 or published.message_id is None:
            return True  # a message without an id is always reported: it cannot be verified
        return int(uuid.uuid5(uuid.NAMESPACE_OID, published.message_id).hex[:8], 16) < fraction * 0x1_0000_0000

    return chosen


def _checked(published: Any) -> dict[str, Any]:
    """What the audit checks of a published command, and writes back: the command, its topic and id."""
    return {"command": published.element, "topic": published.topic, "message_id": published.message_id}


def _not_verified(failure: Any) -> MissingMessage:
    return MissingMessage(failure.element, failure.element.get("message_id") or "", failure.reason)


def _verify(
    published: beam.PCollection, args: argparse.Namespace, cloud: CloudApiConfig
) -> dict[str, beam.PCollection]:
    """The audit: the published messages (or a sample) looked up among the service's stored ones."""
    checked = published | "VerifySample" >> beam.Filter(_sampled(args.verify_sample)) | "ToCheck" >> beam.Map(_checked)
    verify = VerifyStoredMessages(cloud).with_progress(None if args.quiet else args.progress_interval)
    verified, missing, unverified = checked | "Verify" >> verify
    not_checked = unverified | "NotVerified" >> beam.Map(_not_verified)
    return {
        "verified": verified | "CountVerified" >> beam.ParDo(_Count("verified")),
        "missing": (missing, not_checked)
        | "AllMissing" >> beam.Flatten()
        | "CountMissing" >> beam.ParDo(_Count("missing")),
    }


def build_pipeline(
    pipeline: beam.Pipeline, args: argparse.Namespace, connection: TdmqConnection, cloud: CloudApiConfig | None = None
) -> None:
    """Read, check, map, publish, and write results and dead letters (bad input included); with
    ``--verify``, check that the service stored what was published."""
    schema = load_schema(args.schema)
    mapping = avro_mapping(schema, args.mapping)
    commands = pipeline | "Read" >> ReadCommands(
        args.input,
        schema,
        file_format=args.input_format,
        counter_namespace=METRICS_NAMESPACE,
        max_line_bytes=args.max_line_bytes,
        max_depth=args.max_nesting,
    )
    journal = journal_directory(args.output)
    records = commands.records
    if args.resume:
        records = records | "SkipJournaled" >> SkipJournaled(journal, namespace=METRICS_NAMESPACE)
    batching = Batching(max_pending_batches=args.max_pending_batches)
    write = WriteToTdmqMqtt(
        connection,
        mapping=mapping,
        qos=args.qos,
        idempotency_key=IdempotencyKey() if args.idempotency_key else None,
        batching=batching,
    ).with_progress(None if args.quiet else args.progress_interval, expected=getattr(args, "expected", None))
    published, failed = records | "Publish" >> write
    _ = published | "Journal" >> WriteJournal(journal, flush_every=batching.size_for(connection))  # a batch
    all_failed = (commands.failed, failed) | "AllFailures" >> beam.Flatten()
    counted = all_failed | "CountFailures" >> beam.ParDo(_CountFailures())
    results = {"published": published, "failed": counted}
    if args.verify:
        if cloud is None:
            raise ConfigurationError(VERIFY_NEEDS_CLOUD)
        results.update(_verify(published, args, cloud))
    if not RunnerCapabilities.of(pipeline).file_io:
        _write_results_on_dask(results, args)
    else:
        _write_results(results, args)


def _summary_from_files(output: str, seconds: float, verify: bool) -> dict[str, Any]:
    """The summary, read back from the result files (Beam's Dask runner reports no metrics)."""

    def lines(name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for path in glob.glob(f"{output}-{name}-*.jsonl") for line in open(path)]

    published, failed = lines("published"), lines("failed")
    failed_by_reason: dict[str, int] = {}
    examples: dict[str, str] = {}
    for failure in failed:
        kind = failure["error_kind"]
        failed_by_reason[kind] = failed_by_reason.get(kind, 0) + 1
        examples.setdefault(kind, failure["reason"])
    return {
        "read": len(published) + len(failed),  # every line or record read ends in one of the two
        "published": len(published),
        "failed": len(failed),
        "failed_by_reason": dict(sorted(failed_by_reason.items())),
        "failure_examples": examples,
        "retried": sum(max(0, record["attempts"] - 1) for record in published + failed),
        "seconds": round(seconds, 2),
        "messages_per_s": round(len(published) / seconds) if seconds else 0,
        **({"verified": len(lines("verified")), "missing": len(lines("missing"))} if verify else {}),
    }


def _summary(result, seconds: float, verify: bool) -> dict[str, Any]:
    counters = committed_counters(result, (METRICS_NAMESPACE, "tdmq_beam.WriteToTdmqMqtt"))
    failed_by_reason = {
        name[len("failed_") :]: count for name, count in sorted(counters.items()) if name.startswith("failed_")
    }
    examples = {
        metric.key.metric.name[len("example_") :]: min(metric.committed)
        for metric in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["string_sets"]
        if metric.committed
    }
    published = counters.get("published", 0)
    return {
        "read": counters.get("read", 0),
        "published": published,
        "failed": sum(failed_by_reason.values()),
        "failed_by_reason": failed_by_reason,
        "failure_examples": examples,
        "retried": counters.get("retried", 0),
        "skipped": counters.get("skipped", 0),
        "seconds": round(seconds, 2),
        "messages_per_s": round(published / seconds) if seconds else 0,
        **({"verified": counters.get("verified", 0), "missing": counters.get("missing", 0)} if verify else {}),
    }


def _print_summary(summary: dict[str, Any]) -> None:
    reasons = ", ".join(f"{kind}={count}" for kind, count in summary["failed_by_reason"].items()) or "none"
    print(f"read:         {summary['read']}")
    print(f"published:    {summary['published']}")
    print(f"failed:       {summary['failed']} ({reasons})")
    for kind, example in summary.get("failure_examples", {}).items():
        print(f"  e.g. {kind}: {example}")
    print(f"retried:      {summary['retried']}")
    if summary.get("skipped"):
        print(f"skipped:      {summary['skipped']} (published by an earlier run: in the journal)")
    timed = ", verification included" if "verified" in summary else ""
    print(f"messages/s:   {summary['messages_per_s']} ({summary['seconds']} s{timed})")
    if "verified" in summary:
        print(f"verified:     {summary['verified']} (stored by the service)")
        print(f"missing:      {summary['missing']} (not stored as published, or not checked: see the missing output)")
    if "delivered" in summary:
        print(f"delivered:    {summary['delivered']} (received by an MQTT subscriber)")
    if summary.get("stopped"):
        print("stopped:      yes (by a signal: what was read before it is accounted for above; --resume goes on)")


def run(
    args: argparse.Namespace, beam_args: Sequence[str], connection: TdmqConnection, cloud: CloudApiConfig | None = None
) -> dict[str, Any]:
    pipeline = new_pipeline(beam_args)
    build_pipeline(pipeline, args, connection, cloud)
    temp_before = _temp_folders(args.output)
    try:
        result, seconds = run_to_end(pipeline)
    finally:
        for folder in _temp_folders(args.output) - temp_before:
            shutil.rmtree(folder, ignore_errors=True)  # what a write left behind when the run stopped early
    runner = RunnerCapabilities.of(pipeline)
    if runner.leaves_client_open:
        result.client.close()  # the runner's Dask client would otherwise outlive the run
    if not runner.metrics:
        return _summary_from_files(args.output, seconds, args.verify)
    return _summary(result, seconds, args.verify)


def _temp_folders(output_prefix: str) -> set[str]:
    """The ``beam-temp-*`` folders beside a local output prefix (Beam's file writes stage there)."""
    if "://" in output_prefix:
        return set()
    return set(glob.glob(os.path.join(os.path.dirname(os.path.abspath(output_prefix)), "beam-temp-*")))


class _DeliveryCounter:
    """A paho-mqtt MQTT 5 subscriber counting the commands it receives."""

    def __init__(self, port: int, username: str | None, password: str | None) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.count = 0
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="backfill-demo-subscriber", protocol=mqtt.MQTTv5
        )
        self._client.username_pw_set(username, password)
        self._client.on_connect = lambda client, *_: client.subscribe("devices/+/commands", qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("the demo subscriber could not subscribe")

    def _on_message(self, client, userdata, message) -> None:
        self.count += 1

    def wait_for(self, expected: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self.count < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.count

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def run_demo(args: argparse.Namespace, beam_args: Sequence[str]) -> dict[str, Any]:
    """The no-argument run: emulator, sample, subscriber, pipeline, summary."""
    from tdmq_beam.testing import TdmqEmulator

    with TdmqEmulator() as emulator, tempfile.TemporaryDirectory(prefix="backfill-demo-") as workdir:
        records = generate_commands(args.sample_commands, args.sample_devices, args.sample_invalid)
        args.expected = len(records)  # the demo knows its input size: progress lines give an ETA
        sample = os.path.join(workdir, "commands.avro")
        with open(sample, "wb") as handle:
            fastavro.writer(handle, fastavro.parse_schema(load_schema(args.schema)), records)
        args.input = sample
        args.output = args.output or os.path.join(workdir, "results")
        print(f"emulator: {emulator.http_url} (MQTT {emulator.mqtt_port}); sample: {len(records)} commands "
              f"for {args.sample_devices} devices, {args.sample_invalid} invalid")  # fmt: skip
        subscriber = _DeliveryCounter(emulator.mqtt_port, emulator.username, emulator.password)
        try:
            connection = emulator.connection(max_in_flight=args.max_in_flight, timeout=args.timeout, tps=args.tps)
            summary = run(args, beam_args, connection, emulator.cloud_config())
            summary["delivered"] = subscriber.wait_for(summary["published"])
        finally:
            subscriber.close()
        if args.output.startswith(workdir):
            print(f"results were written under {workdir} (removed after the demo; pass --output to keep them)")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the backfill (or the demo); returns the exit status.

    Exit status: 0 every record published (or ``--allow-failed``, and always for
    the demo); 2 usage or configuration errors, one line on stderr; 3 some records
    failed (they are in the failed output).
    """
    args, beam_args = parse_job_flags(_parser(), argv)
    if not 0 < args.verify_sample <= 1:
        usage_error(PROGRAM, f"--verify-sample must be within (0, 1], got {args.verify_sample:g}")
    positive_flags = (
        ("--max-line-bytes", args.max_line_bytes),
        ("--max-nesting", args.max_nesting),
        ("--max-pending-batches", args.max_pending_batches),
    )
    for flag, value in positive_flags:
        if value < 1:
            usage_error(PROGRAM, f"{flag} must be positive, got {value}")
    runner = RunnerCapabilities.named(PipelineOptions(list(beam_args)).view_as(StandardOptions).runner)
    if args.output_format == "avro" and not runner.file_io:
        usage_error(PROGRAM, AVRO_NOT_ON_DASK)
    if args.endpoint is None:
        if args.input is not None:
            usage_error(PROGRAM, "--input needs --endpoint (without both, the demo runs on the embedded emulator)")
        try:  # the demo's connection settings, checked before the emulator starts
            TdmqConnection(
                "http://127.0.0.1:1", username="demo", password="demo",
                max_in_flight=args.max_in_flight, timeout=args.timeout, tps=args.tps,
            )  # fmt: skip
            load_schema(args.schema)
        except ValueError as exc:
            usage_error(PROGRAM, f"invalid settings: {exc}")
        summary = run_stoppably(PROGRAM, lambda: run_demo(args, beam_args))
        _print_summary(summary)
        return EXIT_STOPPED if summary["stopped"] else 0
    if not args.input or not args.output:
        usage_error(PROGRAM, "--input and --output are required with --endpoint")
    if problem := input_problem(args.input, allow_empty=args.allow_empty_input):
        usage_error(PROGRAM, problem)
    if args.resume and not FileSystems.exists(journal_directory(args.output)):
        usage_error(
            PROGRAM, f"--resume: no journal at {journal_directory(args.output)} (a run with this --output writes it)"
        )
    connection, cloud = service_from_flags(
        PROGRAM,
        args,
        check=lambda: load_schema(args.schema),
        cloud_needed_for=VERIFY_NEEDS_CLOUD if args.verify else None,
    )
    summary = run_stoppably(PROGRAM, lambda: run(args, beam_args, connection, cloud))
    _print_summary(summary)
    if summary["stopped"]:
        return EXIT_STOPPED
    if (summary["failed"] or summary.get("missing")) and not args.allow_failed:
        return EXIT_RECORDS_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
