"""The transforms' results as Beam users expect them: attributes, unpacking, element types, ErrorHandler,
and ConfigurationError for settings that cannot work."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.error_handling import ErrorHandler
from beam_helpers import read_json_lines

from tdmq_beam import (
    ConfigurationError,
    EnrichWithClientStatus,
    FailedMessage,
    KeepAliveSet,
    MessageDefaults,
    MessageMapping,
    PublishedMessage,
    SetClientKeepAlive,
    WriteToTdmqMqtt,
)

RECORDS = [{"device": f"d{i}", "body": "on"} for i in range(5)] + [{"body": "no device"}]
MAPPING = MessageMapping(topic="results/{device}", payload="body")


def _write_records(emulator, tmp_path) -> tuple[list[str], list[str]]:
    """RECORDS through WriteToTdmqMqtt, unpacking its result; (published topics, failure reasons)."""
    published_path, failed_path = str(tmp_path / "published"), str(tmp_path / "failed")
    with beam.Pipeline(options=PipelineOptions([])) as pipeline:
        published, failed = pipeline | beam.Create(RECORDS) | WriteToTdmqMqtt(emulator.connection(), mapping=MAPPING)
        assert published.element_type is PublishedMessage and failed.element_type is FailedMessage
        published | beam.Map(lambda r: r.topic) | beam.io.WriteToText(published_path, shard_name_template="")
        failed | "F" >> beam.Map(lambda r: r.reason) | "WF" >> beam.io.WriteToText(failed_path, shard_name_template="")
    return open(published_path).read().split(), open(failed_path).read().splitlines()


def test_results_unpack_and_carry_element_types(emulator, paho, tmp_path, unique):
    subscriber = paho(unique("s"))
    subscriber.subscribe("results/#", 1)
    topics, reasons = _write_records(emulator, tmp_path)
    assert sorted(topics) == [f"results/d{i}" for i in range(5)]
    assert len(reasons) == 1 and "device" in reasons[0]
    assert len(subscriber.receive(5)) == 5

    pipeline = beam.Pipeline()
    updated, failed = pipeline | "K" >> beam.Create([]) | SetClientKeepAlive(emulator.connection(), interval=60)
    assert updated.element_type is KeepAliveSet and failed.element_type is FailedMessage
    result = pipeline | "E" >> beam.Create([]) | EnrichWithClientStatus(emulator.connection())
    enriched, failed = result
    assert enriched is result.enriched and failed.element_type is FailedMessage


def test_error_handler_receives_the_failures(emulator, tmp_path):
    errors_path = str(tmp_path / "errors.jsonl")
    with beam.Pipeline(options=PipelineOptions([])) as pipeline:
        consumer = beam.Map(lambda r: json.dumps(r.as_dict())) | beam.io.WriteToText(
            errors_path, shard_name_template=""
        )
        with ErrorHandler(consumer) as handler:
            write = WriteToTdmqMqtt(emulator.connection(), mapping=MAPPING).with_error_handler(handler)
            _ = pipeline | beam.Create(RECORDS) | write
    errors = read_json_lines(errors_path)
    assert len(errors) == 1
    assert errors[0]["error_kind"] == "invalid_record" and "device" in errors[0]["reason"]


def test_defaults_as_one_object(emulator, paho, unique):
    topic = unique("defaults")
    subscriber = paho(unique("s"), protocol=5)
    subscriber.subscribe(topic, 1)
    defaults = MessageDefaults(content_type="text/plain", user_properties=(("source", "defaults"),))
    with beam.Pipeline() as pipeline:
        _ = (
            pipeline
            | beam.Create([{"t": topic, "body": "x"}])
            | WriteToTdmqMqtt(
                emulator.connection(), mapping=MessageMapping(topic="{t}", payload="body"), defaults=defaults
            )
        )
    message = subscriber.receive(1)[0]
    assert message.properties.ContentType == "text/plain"
    assert message.properties.UserProperty == [("source", "defaults")]
    with pytest.raises(ConfigurationError, match="not both"):
        WriteToTdmqMqtt(emulator.connection(), qos=0, defaults=defaults)


@pytest.mark.parametrize(
    "make",
    [
        lambda c: WriteToTdmqMqtt("http://x"),
        lambda c: WriteToTdmqMqtt(c, batching={"batch_size": 0}),
        lambda c: WriteToTdmqMqtt(c, batching={"batch_size": True}),
        lambda c: WriteToTdmqMqtt(c).with_batching(max_pending_batches=0),
        lambda c: WriteToTdmqMqtt(c, batching="sometimes"),
        lambda c: WriteToTdmqMqtt(c, mapping={"topic": "x"}),
        lambda c: EnrichWithClientStatus(c, cloud="creds"),
        lambda c: EnrichWithClientStatus(c, on_failure="ignore"),
        lambda c: EnrichWithClientStatus(c, status_ttl=-1),
        lambda c: SetClientKeepAlive(c, interval=5),
    ],
)
def test_bad_settings_raise_configuration_error(emulator, make):
    with pytest.raises(ConfigurationError):
        make(emulator.connection())


def test_outputs_as_pairs_where_a_runner_would_mix_tagged_outputs(emulator, tmp_path, monkeypatch):
    """The shape used on Beam's Dask runner (one output of (tag, value), split by FlatMaps), run here."""
    from tdmq_beam.transforms.runner_limits import RunnerCapabilities

    mixing = RunnerCapabilities(tagged_outputs=False)
    monkeypatch.setattr(RunnerCapabilities, "of", classmethod(lambda cls, pipeline: mixing))
    topics, reasons = _write_records(emulator, tmp_path)
    assert sorted(topics) == [f"results/d{i}" for i in range(5)]
    assert len(reasons) == 1 and "device" in reasons[0]
