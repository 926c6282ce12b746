"""The telemetry ingest pipeline: its demo end to end, real flags against the emulator, and its usage errors."""

from __future__ import annotations

import glob
import json
import os

import pytest

from tdmq_beam.testing import TdmqEmulator
from tdmq_beam_pipelines import ingest_device_telemetry


def test_the_demo_reads_everything_the_devices_published(capsys):
    status = ingest_device_telemetry.main(
        ["--quiet", "--demo-devices", "5", "--demo-rate", "200", "--demo-seconds", "2", "--demo-invalid", "4"]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    lines = dict(line.split(":", 1) for line in out.splitlines() if ":" in line and not line.startswith("emulator"))
    assert int(lines["published"]) == 400
    assert int(lines["received"]) >= 400
    assert int(lines["failed"]) == 4 and int(lines["decoded"]) >= 396
    assert int(lines["lost"]) == 0
    assert "latency p50/p99" in lines


@pytest.mark.parametrize("source", ["events", "events+query"])
def test_the_demo_with_the_client_events_as_the_status_source(source, capsys):
    # The demo's devices connect before the pipeline starts, so no event ever tells of them:
    # the events alone answer "unknown", the events with the query behind ask the service.
    argv = ["--quiet", "--demo-devices", "4", "--demo-rate", "100", "--demo-seconds", "1", "--demo-invalid", "0"]
    assert ingest_device_telemetry.main([*argv, "--status-source", source]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(":", 1) for line in out.splitlines() if ":" in line and not line.startswith("emulator"))
    assert int(lines["lost"]) == 0 and int(lines["received"]) == 100  # the events' reader is not counted
    if source == "events":
        assert int(lines["online"].split()[0]) == 0 and int(lines["unknown"].split()[0]) == int(lines["decoded"])
    else:
        assert int(lines["online"].split()[0]) == int(lines["decoded"]) and "unknown" not in lines


def test_a_bounded_ingest_of_what_is_queued_with_real_flags(tmp_path, capsys):
    with TdmqEmulator() as emulator, emulator.simulated_clients() as devices:
        devices.online("sensor-a")
        flags = [
            "--endpoint", emulator.http_url, "--mqtt-endpoint", f"mqtt://127.0.0.1:{emulator.mqtt_port}",
            "--username", emulator.username, "--password-env", "INGEST_TEST_PASSWORD",
            "--client-id-prefix", "ingest-test", "--quiet", "--output", str(tmp_path / "out"),
        ]  # fmt: skip
        os.environ["INGEST_TEST_PASSWORD"] = emulator.password
        try:
            # First run: opens the shared sessions; nothing is queued yet.
            assert ingest_device_telemetry.main([*flags, "--max-read-time", "1"]) == 0
            readings = [(f"devices/sensor-{'a' if i % 2 else 'b'}/telemetry",
                         json.dumps({"seq": i, "sent_at": 1_700_000_000_000 + i, "temperature": 21.0}).encode())
                        for i in range(30)]  # fmt: skip
            assert devices.publish("sensor-a", readings) == 30
            # With the cloud API flags the read polls its backlog: all 30 wait when it starts.
            os.environ["INGEST_TEST_SECRET_KEY"] = emulator.secret_key
            cloud = ["--secret-id", emulator.secret_id, "--secret-key-env", "INGEST_TEST_SECRET_KEY",
                     "--tencent-region", "ap-guangzhou", "--instance-id", emulator.instance_id,
                     "--cloud-endpoint", emulator.http_url]  # fmt: skip
            assert ingest_device_telemetry.main([*flags, *cloud, "--max-records", "30"]) == 0
        finally:
            os.environ.pop("INGEST_TEST_PASSWORD", None)
            os.environ.pop("INGEST_TEST_SECRET_KEY", None)
    records = [json.loads(line) for name in glob.glob(str(tmp_path / "out-0*.jsonl")) for line in open(name)]
    assert sorted(record["seq"] for record in records) == list(range(30))
    by_device = {record["device_id"]: record["online"] for record in records}
    assert by_device == {"sensor-a": True, "sensor-b": False}  # sensor-b never connected
    assert all(record["ingested_at"] >= record["sent_at"] for record in records)
    out = capsys.readouterr().out
    assert "received:        30" in out
    assert "backlog:         30 messages" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-readers", "2", "--share-group", ""], "needs --share-group"),
        (["--schema", "/nonexistent.avsc"], "does not exist"),
        (["--mqtt-endpoint", "mqtt://h:1883"], "need --endpoint"),
        (["--endpoint", "http://127.0.0.1:9", "--username", "u", "--password-env", "X", "--output", "o"],
         "give --mqtt-endpoint"),
        (["--endpoint", "http://127.0.0.1:9", "--mqtt-endpoint", "ftp://h", "--username", "u",
          "--password-env", "X", "--output", "o", "--max-records", "1"], "mqtt_endpoint must start with mqtt://"),
        (["--status-source", "events", "--secret-id", "AKID"], "adds no client details"),
        (["--backlog-interval", "-1"], "--backlog-interval must be 0 (none) or positive"),
        (["--endpoint", "http://127.0.0.1:9", "--mqtt-endpoint", "mqtt://127.0.0.1:9", "--username", "u",
          "--password-env", "X", "--output", "o"], "--output (files) needs an end: give --max-records"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        ingest_device_telemetry.main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        ingest_device_telemetry.main(["--help"])
    out = capsys.readouterr().out
    assert "(default: ingest-telemetry)" in out and "(default: 2)" in out
