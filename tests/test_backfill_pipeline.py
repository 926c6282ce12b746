"""tdmq_beam_pipelines.backfill_device_commands: the demo on the embedded emulator and the real-use flags."""

from __future__ import annotations

import glob
import json
import re

import fastavro
import pytest

from tdmq_beam_pipelines import backfill_device_commands as backfill
from tdmq_beam_pipelines.service_flags import EXIT_RECORDS_FAILED, EXIT_USAGE


def _numbers(output: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w[\w/ ]*?):\s+(.+)$", output, re.M))


def test_demo_on_the_embedded_emulator(capsys):
    assert backfill.main(["--sample-commands", "400", "--sample-devices", "25", "--sample-invalid", "4"]) == 0
    lines = _numbers(capsys.readouterr().out)
    assert lines["read"] == "400"
    assert lines["published"] == "396"
    assert lines["failed"] == "4 (invalid_record=4)"
    assert lines["delivered"].startswith("396 ")
    assert int(lines["messages/s"].split()[0]) > 0


def test_real_use_flags_with_json_lines_and_avro_results(emulator, paho, tmp_path, monkeypatch, capsys):
    records = backfill.generate_commands(120, 10, 2, seed=3)
    records.append({"device_id": "dev-x", "command_id": "c", "command": "x", "issued_at": 0, "qos": 7})  # qos > 2
    source = tmp_path / "commands.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in records))
    subscriber = paho("backfill-test-sub")
    subscriber.subscribe("devices/+/commands", 1)
    monkeypatch.setenv("BACKFILL_TEST_PASSWORD", emulator.password)
    argv = [
        "--input", str(source), "--output", str(tmp_path / "out"), "--output-format", "avro",
        "--endpoint", emulator.http_url, "--username", emulator.username,
        "--password-env", "BACKFILL_TEST_PASSWORD", "--qos", "0", "--idempotency-key", "--max-attempts", "2",
        "--allow-failed",
    ]  # fmt: skip
    assert backfill.main(argv) == 0
    lines = _numbers(capsys.readouterr().out)
    assert (lines["read"], lines["published"]) == ("121", "118")
    assert lines["failed"] == "3 (invalid_record=3)"

    def read_avro(pattern: str) -> list[dict]:
        rows = []
        for name in glob.glob(pattern):
            with open(name, "rb") as handle:
                rows.extend(fastavro.reader(handle))
        return rows

    published = read_avro(str(tmp_path / "out-published*.avro"))
    failed = read_avro(str(tmp_path / "out-failed*.avro"))
    assert len(published) == 118 and len(failed) == 3
    assert {json.loads(r["element_json"])["command_id"] for r in published} == {r["command_id"] for r in records[2:120]}
    qos_failure = next(r for r in failed if json.loads(r["element_json"])["command_id"] == "c")
    assert "field 'qos'" in qos_failure["reason"]
    received = subscriber.receive(118, timeout=30)
    assert all(m.properties.UserProperty[-1][0] == "idempotency-key" for m in received)
    assert {json.loads(m.payload)["command_id"] for m in received} == {r["command_id"] for r in records[2:120]}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input", "x.avro"], "--input needs --endpoint"),
        (["--endpoint", "http://127.0.0.1:1"], "--input and --output are required"),
        (["--endpoint", "ftp://h", "--input", __file__, "--output", "y", "--username", "u", "--password-env", "P"],
         "http:// or https://"),
        (["--endpoint", "http://h", "--input", __file__, "--output", "y"], "credentials are required"),
    ],
)  # fmt: skip
def test_bad_flags_exit_with_a_message(argv, message):
    with pytest.raises(SystemExit) as exited:
        backfill.main(argv)
    assert message in str(exited.value)


def test_generated_sample_fits_the_schema():
    schema = fastavro.parse_schema(json.load(open(backfill.DEFAULT_SCHEMA)))
    records = backfill.generate_commands(50, 5, 1)
    assert all(fastavro.validation.validate(r, schema) for r in records)
    assert sum("#" in r["device_id"] for r in records) == 1


def test_bad_input_goes_to_failed_with_file_and_line(emulator, tmp_path, monkeypatch, capsys):
    good = backfill.generate_commands(3, 2, 0, seed=5)
    lines = [
        json.dumps(good[0]),
        '{"device_id": "dev-1", "command_id": ',  # line 2: not JSON
        json.dumps({**good[1], "device_id": 5}),  # line 3: an int where the schema says string
        json.dumps({**good[2], "issued_at": "2025-01-01T00:00:00Z"}),  # line 4: an ISO string for a long
        "",
        "[1, 2]",  # line 6: not an object
        json.dumps({**good[0], "device_id": "dev-#1"}),  # line 7: fits the schema, but no topic name
        json.dumps({**good[1], "params": {"blob": "x" * 1_100_000}}),  # line 8: a payload over 1 MiB
    ]
    source = tmp_path / "commands.jsonl"
    source.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("BACKFILL_TEST_PASSWORD", emulator.password)
    output = tmp_path / "out" / "run"
    argv = [
        "--input", str(source), "--output", str(output), "--endpoint", emulator.http_url,
        "--username", emulator.username, "--password-env", "BACKFILL_TEST_PASSWORD",
    ]  # fmt: skip
    assert backfill.main(argv) == EXIT_RECORDS_FAILED  # some records failed, and that was not allowed
    printed = capsys.readouterr().out
    summary = _numbers(printed)
    assert (summary["read"], summary["published"]) == ("7", "1")
    assert summary["failed"] == "6 (invalid_message=1, invalid_record=4, unparseable=1)"
    assert "  e.g. unparseable: commands.jsonl line 2: not valid JSON" in printed
    assert "  e.g. invalid_record: commands.jsonl line " in printed
    failed = []
    for name in glob.glob(str(output) + "-failed*.jsonl"):
        with open(name) as handle:
            failed.extend(json.loads(line) for line in handle)
    reasons = sorted(record["reason"] for record in failed)
    assert len(reasons) == 6
    assert reasons[0].startswith("commands.jsonl line 2: not valid JSON")
    assert reasons[1].startswith("commands.jsonl line 3: does not match the schema") and "device_id" in reasons[1]
    assert reasons[2].startswith("commands.jsonl line 4: does not match the schema") and "issued_at" in reasons[2]
    assert reasons[3].startswith("commands.jsonl line 6: a command must be a JSON object")
    # what only the write finds (the topic, the payload's size) names the line too
    assert reasons[4] == (
        "commands.jsonl line 7: invalid record: topic 'devices/dev-#1/commands' contains a wildcard ('+' or '#'); "
        "publish needs a topic name"
    )
    assert reasons[5].startswith("commands.jsonl line 8: payload is 11") and "the limit is 1048576" in reasons[5]
    assert {record["error_kind"] for record in failed} == {"unparseable", "invalid_record", "invalid_message"}
    wildcard = next(record for record in failed if "line 7" in record["reason"])
    assert wildcard["element"]["device_id"] == "dev-#1" and "location" not in wildcard["element"]
    assert not glob.glob(str(tmp_path / "out" / "beam-temp-*"))


def test_avro_records_that_do_not_fit_the_schema_name_their_position(emulator, tmp_path, monkeypatch, capsys):
    schema = json.loads((backfill.SCHEMAS / "device_command.avsc").read_text())
    loose = {**schema, "fields": [{**f, "type": ["null", "string", "long"]} if f["name"] == "device_id" else f
                                  for f in schema["fields"]]}  # fmt: skip
    records = backfill.generate_commands(4, 2, 0, seed=9)
    records[2]["device_id"] = 42  # valid for the file's schema, not for the command schema
    source = tmp_path / "commands.avro"
    with open(source, "wb") as handle:
        fastavro.writer(handle, fastavro.parse_schema(loose), records)
    monkeypatch.setenv("BACKFILL_TEST_PASSWORD", emulator.password)
    argv = [
        "--input", str(source), "--output", str(tmp_path / "out"), "--endpoint", emulator.http_url,
        "--username", emulator.username, "--password-env", "BACKFILL_TEST_PASSWORD", "--allow-failed",
    ]  # fmt: skip
    assert backfill.main(argv) == 0  # the failure was allowed
    summary = _numbers(capsys.readouterr().out)
    assert (summary["read"], summary["published"]) == ("4", "3")
    (failed_file,) = glob.glob(str(tmp_path / "out-failed*.jsonl"))
    (record,) = [json.loads(line) for line in open(failed_file)]
    assert record["reason"].startswith("commands.avro record 3: does not match the schema")


def _usage_exit(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        backfill.main(argv)
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line, no traceback
    return err


def test_configuration_mistakes_print_one_line_and_exit_2(emulator, tmp_path, monkeypatch, capsys):
    service = ["--endpoint", emulator.http_url, "--username", emulator.username]
    source = tmp_path / "c.jsonl"
    source.write_text("{}\n")
    io = ["--input", str(source), "--output", str(tmp_path / "out")]
    monkeypatch.delenv("BACKFILL_UNSET_VARIABLE", raising=False)
    assert "BACKFILL_UNSET_VARIABLE is not set" in _usage_exit(
        [*io, *service, "--password-env", "BACKFILL_UNSET_VARIABLE"], capsys
    )
    assert "--input and --output are required" in _usage_exit([*service, "--password-env", "X"], capsys)
    not_json = tmp_path / "schema.avsc"
    not_json.write_text("{not json")
    monkeypatch.setenv("BACKFILL_TEST_PASSWORD", emulator.password)
    password = ["--password-env", "BACKFILL_TEST_PASSWORD"]
    assert "is not JSON" in _usage_exit([*io, *service, *password, "--schema", str(not_json)], capsys)
    assert "tps must be positive" in _usage_exit(["--tps", "0"], capsys)  # the demo
    dask = ["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner", "--output-format", "avro"]
    assert "--output-format avro: on Beam's Dask runner the backfill writes JSON Lines; use jsonl" in _usage_exit(
        [*io, *service, *password, *dask], capsys
    )
    # A missing input file is named; a pattern matching nothing is an error unless asked for.
    output = ["--output", str(tmp_path / "out")]
    missing = str(tmp_path / "nope.jsonl")
    assert _usage_exit(["--input", missing, *output, *service, *password], capsys).endswith(
        f"--input {missing}: no such file\n"
    )
    empty = str(tmp_path / "none-*.jsonl")
    assert "matches no file (give --allow-empty-input" in _usage_exit(["--input", empty, *output, *service, *password],
                                                                      capsys)  # fmt: skip
    assert backfill.main(["--input", empty, *output, *service, *password, "--allow-empty-input", "--quiet"]) == 0
    assert _numbers(capsys.readouterr().out)["read"] == "0"


def test_preflight_names_the_cause_and_the_flag(emulator, tmp_path, monkeypatch, capsys):
    source = tmp_path / "c.jsonl"
    source.write_text("{}\n")
    io = ["--input", str(source), "--output", str(tmp_path / "out")]
    monkeypatch.setenv("BACKFILL_WRONG_PASSWORD", "wrong")
    wrong = [
        "--endpoint",
        emulator.http_url,
        "--username",
        emulator.username,
        "--password-env",
        "BACKFILL_WRONG_PASSWORD",
    ]
    assert "refused the credentials (401): check --username and --password-env" in _usage_exit([*io, *wrong], capsys)
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    nowhere = ["--endpoint", f"http://127.0.0.1:{port}", "--username", "u", "--password-env", "BACKFILL_WRONG_PASSWORD"]
    assert "cannot reach http://127.0.0.1" in _usage_exit([*io, *nowhere], capsys)
    https = ["--endpoint", f"https://127.0.0.1:{emulator.http_port}", "--username", "u",
             "--password-env", "BACKFILL_WRONG_PASSWORD"]  # fmt: skip
    assert "TLS with https://127.0.0.1" in _usage_exit([*io, *https], capsys)
    assert not (tmp_path / "out-published-00000-of-00001.jsonl").exists()  # no input was read


def test_json_lines_may_leave_out_fields_with_defaults(emulator, paho, tmp_path, monkeypatch, capsys):
    subscriber = paho("backfill-defaults-sub")
    subscriber.subscribe("devices/dev-1/commands", 1)
    source = tmp_path / "commands.jsonl"
    source.write_text('{"device_id": "dev-1", "command_id": "c-1", "command": "reboot", "issued_at": 0}\n')
    monkeypatch.setenv("BACKFILL_TEST_PASSWORD", emulator.password)
    argv = [
        "--input", str(source), "--output", str(tmp_path / "out"), "--endpoint", emulator.http_url,
        "--username", emulator.username, "--password-env", "BACKFILL_TEST_PASSWORD",
    ]  # fmt: skip
    assert backfill.main(argv) == 0
    assert _numbers(capsys.readouterr().out)["published"] == "1"
    payload = json.loads(subscriber.receive(1)[0].payload)
    assert payload["params"] == {} and payload["command"] == "reboot"  # params: the schema's default


def test_progress_lines_unless_quiet(capsys):
    argv = [
        "--sample-commands",
        "3000",
        "--sample-devices",
        "20",
        "--sample-invalid",
        "0",
        "--progress-interval",
        "0.01",
    ]
    assert backfill.main(argv) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("progress: ")]
    assert lines, "no progress line"
    assert "WriteToTdmqMqtt: " in lines[0] and " done (" in lines[0] and "/s; " in lines[0] and "retried" in lines[0]
    assert any("s to go" in line for line in lines)  # the demo knows its input size: an ETA
    assert backfill.main([*argv, "--quiet"]) == 0
    assert "progress: " not in capsys.readouterr().err


def test_verify_checks_what_the_service_stored(emulator, tmp_path, monkeypatch, capsys):
    records = backfill.generate_commands(40, 5, 0, seed=5)
    source = tmp_path / "commands.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in records))
    monkeypatch.setenv("BACKFILL_TEST_PASSWORD", emulator.password)
    monkeypatch.setenv("BACKFILL_TEST_SECRET_KEY", emulator.secret_key)
    service = [
        "--endpoint", emulator.http_url, "--username", emulator.username, "--password-env", "BACKFILL_TEST_PASSWORD",
        "--secret-id", emulator.secret_id, "--secret-key-env", "BACKFILL_TEST_SECRET_KEY",
        "--tencent-region", "ap-guangzhou", "--instance-id", emulator.instance_id,
        "--cloud-endpoint", emulator.http_url, "--quiet",
    ]  # fmt: skip
    output = tmp_path / "out"
    assert backfill.main(["--input", str(source), "--output", str(output), *service, "--verify"]) == 0
    lines = _numbers(capsys.readouterr().out)
    assert (lines["published"], lines["verified"], lines["missing"].split()[0]) == (
        "40",
        "40 (stored by the service)",
        "0",
    )
    verified = [json.loads(line) for name in glob.glob(f"{output}-verified-*") for line in open(name)]
    published = [json.loads(line) for name in glob.glob(f"{output}-published-*") for line in open(name)]
    assert {row["message_id"] for row in verified} == {row["message_id"] for row in published}
    first = verified[0]["element"]
    assert first["command"]["command_id"].startswith("cmd-") and first["topic"] == verified[0]["topic"]

    # A sample, in Avro: about half, the same half on every run (chosen by message id).
    sampled = tmp_path / "sampled"
    argv = ["--input", str(source), "--output", str(sampled), *service, "--verify", "--verify-sample", "0.5",
            "--output-format", "avro"]  # fmt: skip
    assert backfill.main(argv) == 0
    lines = _numbers(capsys.readouterr().out)
    rows = []
    for name in glob.glob(f"{sampled}-verified-*.avro"):
        with open(name, "rb") as handle:
            rows.extend(fastavro.reader(handle))
    assert 5 <= len(rows) <= 35 and lines["verified"].startswith(f"{len(rows)} ")
    assert all(row["store_time"] > 1_700_000_000_000 for row in rows)


def test_verify_finds_a_message_the_service_no_longer_holds(tmp_path, monkeypatch, capsys):
    from tdmq_beam.testing import TdmqEmulator

    records = backfill.generate_commands(5, 2, 0, seed=9)
    source = tmp_path / "commands.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in records))
    with TdmqEmulator(stored_messages=3) as emu:  # keeps the last 3: the first 2 are gone when verified
        monkeypatch.setenv("BACKFILL_TEST_PASSWORD", emu.password)
        monkeypatch.setenv("BACKFILL_TEST_SECRET_KEY", emu.secret_key)
        argv = [
            "--input", str(source), "--output", str(tmp_path / "out"), "--endpoint", emu.http_url,
            "--username", emu.username, "--password-env", "BACKFILL_TEST_PASSWORD", "--secret-id", emu.secret_id,
            "--secret-key-env", "BACKFILL_TEST_SECRET_KEY", "--tencent-region", "ap-guangzhou",
            "--instance-id", emu.instance_id, "--cloud-endpoint", emu.http_url, "--quiet", "--verify",
        ]  # fmt: skip
        assert backfill.main(argv) == EXIT_RECORDS_FAILED
    lines = _numbers(capsys.readouterr().out)
    assert lines["verified"].startswith("3 ") and lines["missing"].startswith("2 ")
    missing = [json.loads(line) for name in glob.glob(str(tmp_path / "out-missing-*")) for line in open(name)]
    assert len(missing) == 2 and all("holds no message with this id" in row["reason"] for row in missing)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--verify-sample", "0"], "--verify-sample must be within (0, 1]"),
        (["--endpoint", "http://127.0.0.1:1", "--input", __file__, "--output", "y", "--username", "u",
          "--password-env", "HOME", "--verify"], "--verify needs the cloud API flags"),
    ],
)  # fmt: skip
def test_verify_mistakes_exit_with_a_message(argv, message, capsys):
    assert _usage_exit(argv, capsys).count(message) == 1
