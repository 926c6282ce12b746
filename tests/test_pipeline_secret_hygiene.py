"""Sentinel secrets given by reference never leave their references: not in logs, output, failure
reasons, display data, pickled transforms or the pipeline graph, on any error path."""

from __future__ import annotations

import json
import logging

import apache_beam as beam
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.display import DisplayData
from beam_helpers import read_json_lines

from tdmq_beam import (
    EnrichWithClientStatus,
    MessageMapping,
    MqttMessage,
    RetryPolicy,
    Secret,
    SetClientKeepAlive,
    TdmqConnection,
    WriteToTdmqMqtt,
)
from tdmq_beam.testing import TdmqEmulator

PASSWORD = "SENTINEL-PIPELINE-PASSWORD-91c2"
SECRET_KEY = "SENTINEL-PIPELINE-SECRETKEY-91c2"
SENTINELS = (PASSWORD, SECRET_KEY)


def _clean(text: str | bytes, where: str) -> None:
    blob = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    for sentinel in SENTINELS:
        assert sentinel.encode() not in blob, f"a sentinel leaked through {where}"


def test_pipelines_with_sentinel_secrets(tmp_path, monkeypatch, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TDMQ_SENTINEL_PASSWORD", PASSWORD)
    key_file = tmp_path / "secret-key"
    key_file.write_text(SECRET_KEY)
    one_try = RetryPolicy.none()
    with TdmqEmulator() as emu:
        # Wrong on purpose: the emulator's user0 password is secret0, its SecretKey another.
        connection = TdmqConnection(
            emu.http_url, username="user0", password=Secret.env("TDMQ_SENTINEL_PASSWORD"), retry=one_try
        )
        refused_connection = TdmqConnection(
            "http://127.0.0.1:9", username="user0", password=Secret.env("TDMQ_SENTINEL_PASSWORD"), retry=one_try
        )
        cloud = emu.cloud_config(secret_key=Secret.file(key_file), retry=one_try)
        emu.set_faults(0.5, ("500",), seed=1)

        transforms = {
            "write": WriteToTdmqMqtt(connection, mapping=MessageMapping(topic="t/{id}", payload="body")),
            "write_refused": WriteToTdmqMqtt(refused_connection),
            "enrich": EnrichWithClientStatus(connection, cloud),
            "keepalive": SetClientKeepAlive(connection),
        }
        for name, transform in transforms.items():
            _clean(pickler.dumps(transform), f"the pickled {name} transform")
            _clean(repr([(i.key, i.value) for i in DisplayData.create_from(transform).items]), f"{name} display data")
            _clean(repr(transform), f"repr of {name}")

        records = [{"id": 1, "body": "x"}, {"id": "#", "body": "x"}, {"body": "no id"}]
        failed_path = str(tmp_path / "failed")
        pipeline = beam.Pipeline(options=PipelineOptions([]))
        results = [
            pipeline | "Records" >> beam.Create(records) | "Write" >> transforms["write"],
            pipeline | "Messages" >> beam.Create([MqttMessage("t", b"x")]) | "Refused" >> transforms["write_refused"],
        ]
        enriched = pipeline | "Events" >> beam.Create([{"client_id": "c"}, {"x": 1}]) | "Enrich" >> transforms["enrich"]
        kept = (
            pipeline
            | "KeepAlives" >> beam.Create([{"client_id": "c", "interval": 60}, {"client_id": "c", "interval": 5}])
            | "KeepAlive" >> transforms["keepalive"]
        )
        failures = (
            [r.failed for r in results] + [enriched.failed, kept.failed]
        ) | beam.Flatten() | beam.Map(lambda f: json.dumps(f.as_dict()))  # fmt: skip
        failures | beam.io.WriteToText(failed_path, shard_name_template="")
        _clean(pipeline.to_runner_api().SerializeToString(), "the pipeline graph")
        pipeline.run().wait_until_finish()

    failed = read_json_lines(failed_path)
    kinds = {record["error_kind"] for record in failed}
    assert {"authentication", "invalid_record", "transport"} <= kinds
    assert len(failed) == 8  # every element of every transform (3 + 1 + 2 + 2) failed, each with a reason
    for record in failed:
        _clean(json.dumps(record), "a failure record")
    captured = capfd.readouterr()
    _clean(captured.out + captured.err, "stdout and stderr")
    _clean(caplog.text, "logs")
