"""tdmq_beam_pipelines.enrich_client_status: the demo, batch files with real-use flags, the streaming shape."""

from __future__ import annotations

import json
import re

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from beam_helpers import read_json_lines

from tdmq_beam_pipelines import enrich_client_status as enrich_job


def _numbers(output: str) -> dict[str, str]:
    return dict(re.findall(r"^([\w /]+?):\s+(.+)$", output, re.M))


def test_demo_on_the_embedded_emulator(capsys):
    argv = ["--sample-events", "2000", "--sample-online", "30", "--sample-offline", "10"]
    assert enrich_job.main(argv) == 0
    lines = _numbers(capsys.readouterr().out)
    counts = {state: int(lines[state]) for state in ("online", "offline", "unknown")}
    assert sum(counts.values()) == 2000 and all(counts.values())
    assert lines["failed lookups"] == "0"
    assert int(lines["API calls"]) <= 2 * (40 + 50)  # status and details, once per distinct client
    assert float(lines["cache hit rate"].rstrip("%")) > 90


@pytest.fixture
def devices_emulator():
    from tdmq_beam.testing import TdmqEmulator

    with TdmqEmulator(cloud_rate=1000) as emu, emu.simulated_clients() as devices:
        devices.online("dev-a")
        devices.offline("dev-b")
        yield emu


def test_batch_files_with_real_use_flags(devices_emulator, tmp_path, monkeypatch, capsys):
    emu = devices_emulator
    events = [{"device": d, "n": i} for i, d in enumerate(["dev-a", "dev-b", "ghost", "dev-a"])] + [{"n": 9}]
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(json.dumps(e) for e in events))
    monkeypatch.setenv("ENRICH_TEST_PASSWORD", emu.password)
    secret_key = tmp_path / "secret-key"
    secret_key.write_text(emu.secret_key)
    argv = [
        "--input", str(source), "--output", str(tmp_path / "out"),
        "--endpoint", emu.http_url, "--username", emu.username, "--password-env", "ENRICH_TEST_PASSWORD",
        "--secret-id", emu.secret_id, "--secret-key-file", str(secret_key), "--tencent-region", "ap-guangzhou",
        "--instance-id", emu.instance_id, "--cloud-endpoint", emu.http_url, "--client-id-field", "device",
    ]  # fmt: skip
    assert enrich_job.main(argv) == 0
    lines = _numbers(capsys.readouterr().out)
    assert (lines["online"], lines["offline"], lines["unknown"]) == ("2", "1", "1")
    enriched = {(e["device"], e["n"]): e for e in read_json_lines(str(tmp_path / "out-0"))}
    assert enriched[("dev-a", 0)]["client"]["connection_status"] == "CONNECTED"
    assert enriched[("dev-b", 1)]["online"] is False
    assert enriched[("dev-b", 1)]["client"]["connection_status"] == "DISCONNECTED"
    assert enriched[("ghost", 2)]["client"] is None
    failed = read_json_lines(str(tmp_path / "out-failed"))
    assert len(failed) == 1 and "field 'device'" in failed[0]["reason"]


def _run_streaming_shape(emu, tmp_path, flags: list[str], client_ids: list[str], cloud, **build) -> dict:
    """The job's streaming shape on a TestStream of events for ``client_ids``: the output rows by client id."""
    args, _ = enrich_job._parser().parse_known_args(["--input_subscription", "projects/p/subscriptions/s", *flags])
    out_path = str(tmp_path / "out.jsonl")

    class Record(beam.DoFn):
        def process(self, line):
            with open(out_path, "a") as handle:
                handle.write(line + "\n")

    stream = (
        BeamTestStream()
        .add_elements([json.dumps({"client_id": client_id}).encode() for client_id in client_ids])
        .advance_processing_time(2)
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as pipeline:
        enrich_job.build_pipeline(
            pipeline, args, emu.connection(), cloud, source=stream, sink=beam.ParDo(Record()), **build
        )
    return {e["client_id"]: e for e in read_json_lines(out_path)}


def test_streaming_shape_on_a_test_stream(devices_emulator, tmp_path):
    emu = devices_emulator
    out = _run_streaming_shape(emu, tmp_path, [], ["dev-a", "ghost"], emu.cloud_config())
    assert out["dev-a"]["online"] is True and out["ghost"]["client"] is None


def test_streaming_shape_with_the_client_events_behind_the_query(devices_emulator, tmp_path):
    from apache_beam.utils.timestamp import Timestamp

    from tdmq_beam import ClientEvent

    # (Beam 2.77's runner for a TestStream cannot run the MQTT events read: docs/runners.md.) The
    # events tell what the service knows, so every answer is right whichever comes first.
    now = Timestamp.now()
    told = [ClientEvent("dev-a", "client_connected", now, "user0", None, "{}", now),
            ClientEvent("dev-b", "client_disconnected", now, "user0", "normal", "{}", now)]  # fmt: skip
    events = beam.Create(told).with_output_types(ClientEvent)
    rows = _run_streaming_shape(
        devices_emulator, tmp_path, ["--status-source", "events+query"], ["dev-a", "dev-b", "ghost"], None,
        client_events=events,
    )  # fmt: skip
    out = {client_id: row["online"] for client_id, row in rows.items()}
    assert out == {"dev-a": True, "dev-b": False, "ghost": False}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input", "x.jsonl"], "an input needs --endpoint"),
        (["--endpoint", "http://h", "--input", "x", "--output", "y", "--status-source", "events"],
         "needs the streaming input"),
        (["--endpoint", "http://h", "--input_subscription", "s", "--output_topic", "t", "--status-source",
          "events+query"], "cannot run on the DirectRunner"),
        (["--endpoint", "http://h", "--input_subscription", "s", "--output_topic", "t", "--status-source", "events",
          "--secret-id", "AKID", "--runner", "DataflowRunner"], "adds no client details"),
        (["--endpoint", "http://h", "--input_subscription", "s"], "go together"),
        (["--endpoint", "http://h"], "give --input and --output"),
        (["--endpoint", "http://h", "--input", "/nonexistent/events.jsonl", "--output", "y"],
         "--input /nonexistent/events.jsonl: no such file"),
        (["--endpoint", "http://h", "--input", __file__, "--output", "y"], "credentials are required"),
        (["--endpoint", "http://h", "--input", __file__, "--output", "y", "--username", "u", "--password-env", "P",
          "--password-file", "f"], "not both"),
        (["--endpoint", "http://h", "--input", __file__, "--output", "y", "--username", "u", "--password-env", "P",
          "--secret-id", "AKID", "--secret-key-env", "K"], "region is required"),
    ],
)  # fmt: skip
def test_bad_flags_exit_with_a_message(argv, message):
    with pytest.raises(SystemExit) as exited:
        enrich_job.main(argv)
    assert message in str(exited.value)


def test_generated_events_cover_known_and_unknown_ids():
    events = enrich_job.generate_events(500, ["a", "b"])
    ids = {e["client_id"] for e in events}
    assert {"a", "b"} <= ids and any(i.startswith("unknown-") for i in ids)
