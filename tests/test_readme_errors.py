"""Every error text the docs (README, docs/, CONTRIBUTING) quote is the text the code prints."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import apache_beam as beam
import pytest

from tdmq_beam import MessageMapping, WriteToTdmqMqtt
from tdmq_beam.records.record_check import RecordCheck
from tdmq_beam_pipelines import backfill_device_commands as backfill
from tdmq_beam_pipelines.command_input import _ReadFile

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
README = " ".join(" ".join(path.read_text(encoding="utf-8") for path in DOCS).split())


def quoted(text: str) -> None:
    assert f"`{text}`" in README or text in README, f"the docs do not quote: {text}"


def test_invalid_record_reason(emulator, tmp_path):
    path = str(tmp_path / "failed")
    with beam.Pipeline() as pipeline:
        result = (
            pipeline
            | beam.Create([{"t": "x", "body": "b", "q": 3}])
            | WriteToTdmqMqtt(emulator.connection(), mapping=MessageMapping(topic="{t}", payload="body", qos="q"))
        )
        (
            result.failed
            | beam.Map(lambda r: r.reason.replace("'q'", "'qos'"))
            | beam.io.WriteToText(path, shard_name_template="")
        )
    (reason,) = open(path).read().splitlines()
    quoted(reason)


def test_schema_mismatch_reason():
    check = RecordCheck(json.loads((backfill.SCHEMAS / "device_command.avsc").read_text()), noun="command")
    problem = check.problem({"device_id": 5, "command_id": "c", "command": "x", "issued_at": 0})
    quoted(f"commands.jsonl line 3: {problem}")


def test_unparseable_line_reason():
    class Readable:  # the two things _ReadFile asks of Beam's ReadableFile
        class metadata:
            path = "/data/commands.jsonl"

        @staticmethod
        def open(**_options):
            return io.BytesIO(b'{"device_id": "d"}\n{"device_id": \n')

    schema = json.loads((backfill.SCHEMAS / "device_command.avsc").read_text())
    read = _ReadFile(schema, "auto", "readme-test", pairs=True)
    read.setup()
    outputs = list(read.process(Readable()))
    reason = next(value.reason for tag, value in outputs if tag == "failed" and "line 2" in value.reason)
    assert reason.startswith("commands.jsonl line 2: not valid JSON (")
    quoted(reason.split(" (")[0] + " (...)")


def test_preflight_refusal(emulator, tmp_path, monkeypatch, capsys):
    source = tmp_path / "c.jsonl"
    source.write_text("{}\n")
    monkeypatch.setenv("README_WRONG_PASSWORD", "wrong")
    argv = ["--input", str(source), "--output", str(tmp_path / "out"), "--endpoint", emulator.http_url,
            "--username", "user0", "--password-env", "README_WRONG_PASSWORD"]  # fmt: skip
    with pytest.raises(SystemExit):
        backfill.main(argv)
    printed = capsys.readouterr().err.strip()
    quoted(re.sub(r"http://127\.0\.0\.1:\d+", "http://h:8080", printed))


def test_acl_refusal_reason():
    from tdmq_beam import AuthenticationError, MqttMessage, TdmqClient
    from tdmq_beam.emulator.config import Acl
    from tdmq_beam.testing import TdmqEmulator

    acl = Acl.from_json({"rules": [{"user": "user0", "action": "publish", "topic": "y", "permission": "deny"}]})
    with TdmqEmulator(acl=acl) as emulator:
        client = TdmqClient(emulator.connection())
        try:
            with pytest.raises(AuthenticationError) as caught:
                client.publish(MqttMessage(topic="y", payload=b"p"))
        finally:
            client.close()
    quoted(str(caught.value).replace("'user0'", "'x'"))


def test_mapping_role_problem():
    from tdmq_beam import ConfigurationError, avro_mapping

    schema = {"type": "record", "name": "R", "mqtt.topic": "t/{q}", "mqtt.payload": "q",
              "fields": [{"name": "q", "type": "string", "mqtt.role": "qos"}]}  # fmt: skip
    with pytest.raises(ConfigurationError) as caught:
        avro_mapping(schema)
    quoted(str(caught.value))


def test_yaml_literal_secret_refusal():
    from tdmq_beam.beam_yaml.transforms import YamlWriteToTdmqMqtt

    with pytest.raises(ValueError) as caught:
        YamlWriteToTdmqMqtt(endpoint="http://h:8080", username="u", password="literal", topic="t")
    quoted(f'"{caught.value}"')
