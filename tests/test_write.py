"""WriteToTdmqMqtt end to end on the emulator, checked by a paho MQTT 5 subscriber."""

from __future__ import annotations

import json
import os
import time

import apache_beam as beam
import fastavro
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.transforms import window
from beam_helpers import MULTI_PROCESS, read_json_lines, run

from tdmq_beam import (
    Batching,
    IdempotencyKey,
    JsonPayload,
    MessageMapping,
    MqttMessage,
    RetryPolicy,
    TdmqConnection,
    WriteToTdmqMqtt,
    avro_mapping,
)
from tdmq_beam.emulator.config import Acl
from tdmq_beam.testing import TdmqEmulator

SCHEMAS = os.path.join(os.path.dirname(__file__), "..", "schemas")
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)


def collect_until(subscriber, count: int, timeout: float = 30) -> list:
    messages = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        messages.extend(subscriber.receive(1, timeout=max(0.1, deadline - time.monotonic())))
    return messages


def test_records_end_to_end_with_every_property(emulator, paho, unique, tmp_path):
    base = unique("e2e")
    subscriber = paho(unique("s"))
    subscriber.subscribe(f"{base}/#", 2)
    records = [
        {
            "device_id": f"dev-{i}",
            "body": f'{{"seq": {i}}}',
            "qos": i % 3,
            "expiry": 100 + i,
            "reply": f"{base}-replies/dev-{i}",
            "corr": f"corr-{i}",
            "trace": f"trace-{i}",
            "pfi": 1,
            "ctype": None if i % 2 else "application/json",
        }
        for i in range(60)
    ]
    mapping = MessageMapping(
        topic=base + "/{device_id}/commands",
        payload="body",
        qos="qos",
        message_expiry_interval="expiry",
        response_topic="reply",
        correlation_data="corr",
        payload_format_indicator="pfi",
        content_type="ctype",
        user_properties={"trace-id": "trace", "device": "device_id"},
    )
    write = WriteToTdmqMqtt(
        emulator.connection(),
        mapping=mapping,
        content_type="text/plain",
        user_properties=[("source", "backfill")],
        idempotency_key=IdempotencyKey(),
    )
    published, failed = run(lambda p: p | beam.Create(records) | write, tmp_path)
    assert failed == []
    assert len(published) == 60
    assert len({r["message_id"] for r in published}) == 60
    assert {r["attempts"] for r in published} == {1}
    by_topic = {r["topic"]: json.loads(r["element_json"]) for r in published}

    messages = collect_until(subscriber, 60)
    assert len(messages) == 60
    keys = set()
    for message in messages:
        record = by_topic[message.topic]
        i = int(record["device_id"].split("-")[1])
        assert message.topic == f"{base}/dev-{i}/commands"
        assert message.payload == f'{{"seq": {i}}}'.encode()
        assert message.qos == i % 3
        props = message.properties
        assert props.MessageExpiryInterval in (100 + i, 99 + i)
        assert props.ResponseTopic == f"{base}-replies/dev-{i}"
        assert props.CorrelationData == f"corr-{i}".encode()
        assert props.PayloadFormatIndicator == 1
        assert props.ContentType == ("text/plain" if i % 2 else "application/json")
        pairs = props.UserProperty
        assert pairs[:3] == [("source", "backfill"), ("trace-id", f"trace-{i}"), ("device", f"dev-{i}")]
        assert pairs[3][0] == "idempotency-key" and len(pairs[3][1]) == 32
        keys.add(pairs[3][1])
    assert len(keys) == 60
    assert subscriber.nothing_more()


def test_mqtt_message_inputs_keep_their_fields_and_take_defaults(emulator, paho, unique, tmp_path):
    topic = unique("msg")
    subscriber = paho(unique("s"))
    subscriber.subscribe(topic, 1)
    messages = [
        MqttMessage(topic, b"own", qos=0, content_type="own/type", user_properties=[("k", "v")]),
        MqttMessage(topic, b"defaulted", message_expiry_interval=None),
    ]
    write = WriteToTdmqMqtt(emulator.connection(), content_type="default/type", message_expiry_interval=300, qos=2)
    published, failed = run(lambda p: p | beam.Create(messages) | write, tmp_path)
    assert (len(published), failed) == (2, [])
    received = {m.payload: m for m in collect_until(subscriber, 2)}
    own, defaulted = received[b"own"], received[b"defaulted"]
    assert own.qos == 0 and own.properties.ContentType == "own/type"
    assert own.properties.UserProperty == [("k", "v")]
    assert defaulted.qos == 1  # a message's qos always applies
    assert defaulted.properties.ContentType == "default/type"
    assert defaulted.properties.MessageExpiryInterval in (299, 300)


def test_multi_process_direct_runner(emulator, paho, unique, tmp_path):
    topic = unique("mp")
    subscriber = paho(unique("s"))
    subscriber.subscribe(f"{topic}/#", 1)
    messages = [MqttMessage(f"{topic}/{i % 7}", str(i)) for i in range(1500)]
    published, failed = run(
        lambda p: p | beam.Create(messages, reshuffle=False) | WriteToTdmqMqtt(emulator.connection()),
        tmp_path,
        *MULTI_PROCESS,
    )
    assert failed == [] and len(published) == 1500
    received = collect_until(subscriber, 1500)
    assert sorted(int(m.payload) for m in received) == list(range(1500))


def test_streaming_test_stream_keeps_timestamps_and_windows(emulator, paho, unique, tmp_path):
    topic = unique("stream")
    subscriber = paho(unique("s"))
    subscriber.subscribe(topic, 1)
    stream = (
        BeamTestStream()
        .advance_watermark_to(0)
        .add_elements([window.TimestampedValue(MqttMessage(topic, f"a{i}"), 1 + i) for i in range(3)])
        .advance_processing_time(2)
        .add_elements([window.TimestampedValue(MqttMessage(topic, f"b{i}"), 12 + i) for i in range(3)])
        .advance_processing_time(2)
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True

    out_path = str(tmp_path / "stamped.jsonl")

    class Stamp(beam.DoFn):
        """Records what arrives with its timestamp and window (assert_that would see it as late
        once the test stream moves the watermark to infinity)."""

        def process(self, result, timestamp=beam.DoFn.TimestampParam, win=beam.DoFn.WindowParam):
            with open(out_path, "a") as handle:
                payload = result.element.payload.decode() if hasattr(result.element, "payload") else "?"
                kind = type(result).__name__
                handle.write(json.dumps([kind, payload, float(timestamp), float(win.start)]) + "\n")

    with beam.Pipeline(options=options) as pipeline:
        result = (
            pipeline
            | stream
            | beam.WindowInto(window.FixedWindows(10))
            | WriteToTdmqMqtt(emulator.connection(), batching={"max_buffering_duration_secs": 0.5})
        )
        result.published | "StampPublished" >> beam.ParDo(Stamp())
        result.failed | "StampFailed" >> beam.ParDo(Stamp())
    stamped = sorted(tuple(json.loads(line)) for line in open(out_path))
    assert stamped == [
        ("PublishedMessage", "a0", 1, 0), ("PublishedMessage", "a1", 2, 0), ("PublishedMessage", "a2", 3, 0),
        ("PublishedMessage", "b0", 12, 10), ("PublishedMessage", "b1", 13, 10), ("PublishedMessage", "b2", 14, 10),
    ]  # fmt: skip
    assert sorted(m.payload for m in collect_until(subscriber, 6)) == sorted(
        f"{p}{i}".encode() for p in "ab" for i in range(3)
    )


@pytest.mark.parametrize("kinds", [("500",), ("429",), ("reset",), ("500", "429", "reset")])
def test_faults_exact_accounting(kinds, paho, unique, tmp_path):
    with TdmqEmulator() as emu:
        emu.set_faults(0.3, kinds, seed=11, retry_after=0)
        subscriber = paho(unique("s"), port=emu.mqtt_port)
        subscriber.subscribe("acct/#", 1)
        n = 400
        messages = [MqttMessage(f"acct/{i}", str(i)) for i in range(n)]
        connection = emu.connection(retry=FAST_RETRY, adaptive_throttling=False)
        published, failed = run(lambda p: p | beam.Create(messages) | WriteToTdmqMqtt(connection), tmp_path)
        assert len(published) + len(failed) == n
        elements = [r["element_json"] for r in published + failed]
        assert len(set(elements)) == n  # no element twice
        assert failed, "a 30% fault rate with 3 attempts leaves some failures"
        for record in failed:
            assert record["attempts"] == 3 and record["reason"].startswith("gave up after 3 attempts")
            assert record["error_kind"] in ("server_error", "rate_limited", "transport")
        published_topics = {r["topic"] for r in published}
        received = collect_until(subscriber, len(published))
        assert {m.topic for m in received} == published_topics


def test_bad_inputs_each_fail_with_a_clear_reason(emulator, tmp_path):
    mapping = MessageMapping(topic="bad/{device}", payload="body", qos="qos")
    records = [
        {"device": "ok", "body": "fine", "qos": 1},
        {"device": "#", "body": "x", "qos": 1},
        {"device": "big", "body": "x" * 2000, "qos": 1},
        {"device": "q", "body": "x", "qos": 3},
        {"device": "q2", "body": "x", "qos": "1"},
        {"body": "no device"},
        {"device": "nobody", "qos": 1},
        {"device": "b", "body": 12, "qos": 1},
    ]
    write = WriteToTdmqMqtt(emulator.connection(max_payload_bytes=1000), mapping=mapping)
    published, failed = run(lambda p: p | beam.Create(records) | write, tmp_path)
    assert [json.loads(r["element_json"])["device"] for r in published] == ["ok"]
    reasons = {json.loads(r["element_json"]).get("device", "-"): r for r in failed}
    assert "wildcard" in reasons["#"]["reason"]
    assert "2000 bytes; the limit is 1000" in reasons["big"]["reason"]
    assert "field 'qos'" in reasons["q"]["reason"] and "0 or 1 or 2" in reasons["q"]["reason"]
    assert "field 'qos'" in reasons["q2"]["reason"]
    assert "field 'device'" in reasons["-"]["reason"] and "missing" in reasons["-"]["reason"]
    assert "field 'body'" in reasons["nobody"]["reason"]
    assert "field 'body'" in reasons["b"]["reason"] and "bytes or str" in reasons["b"]["reason"]
    assert all(r["attempts"] == 0 and r["status"] is None for r in failed)
    assert reasons["#"]["error_kind"] == "invalid_record"
    assert reasons["big"]["error_kind"] == "invalid_message"


def test_elements_without_mapping_and_permanent_refusals(unique, tmp_path):
    acl = Acl.from_json({"rules": [{"user": "*", "action": "publish", "topic": "locked/#", "permission": "deny"}]})
    with TdmqEmulator(acl=acl) as emu:
        elements = [MqttMessage("locked/a", b"x"), MqttMessage("open/a", b"x"), {"no": "mapping"}, 42]
        write = WriteToTdmqMqtt(emu.connection(retry=FAST_RETRY))
        published, failed = run(lambda p: p | beam.Create(elements) | write, tmp_path)
    assert [r["topic"] for r in published] == ["open/a"]
    kinds = sorted((r["error_kind"], r["status"], r["attempts"]) for r in failed)
    assert kinds == [("authentication", 401, 1), ("invalid_record", None, 0), ("invalid_record", None, 0)]
    assert any("need a mapping" in r["reason"] for r in failed)
    assert any("not allowed to publish to 'locked/a'" in r["reason"] for r in failed)


def test_avro_files_through_the_schema_mapping(emulator, paho, unique, tmp_path):
    schema_path = os.path.join(SCHEMAS, "device_command.avsc")
    schema = json.load(open(schema_path))
    base = unique("avro")
    records = [
        {
            "device_id": f"{base}-{i}",
            "command_id": f"cmd-{i}",
            "command": "reboot",
            "params": {"delay": str(i)},
            "issued_at": 1_700_000_000_000 + i,
            "qos": 1,
            "retained": None,
            "expiry_seconds": 600,
            "reply_topic": None,
            "trace_id": f"t-{i}",
        }
        for i in range(20)
    ]
    avro_file = tmp_path / "commands.avro"
    with open(avro_file, "wb") as handle:
        fastavro.writer(handle, fastavro.parse_schema(schema), records)
    subscriber = paho(unique("s"))
    subscriber.subscribe("devices/+/commands", 1)
    write = WriteToTdmqMqtt(emulator.connection(), mapping=avro_mapping(schema_path))
    published, failed = run(lambda p: p | beam.io.ReadFromAvro(str(avro_file)) | write, tmp_path)
    assert (len(published), failed) == (20, [])
    received = [m for m in collect_until(subscriber, 20) if base in m.topic]
    assert len(received) == 20
    for message in received:
        i = int(message.topic.split("/")[1].rsplit("-", 1)[1])
        body = json.loads(message.payload)
        assert body == {
            "command_id": f"cmd-{i}",
            "command": "reboot",
            "params": {"delay": str(i)},
            "issued_at": body["issued_at"],
        }
        assert body["issued_at"].startswith("2023-11-14T22:13:20")
        assert message.properties.ContentType == "application/json"
        assert message.properties.CorrelationData == f"cmd-{i}".encode()
        assert message.properties.UserProperty == [("trace-id", f"t-{i}")]
        assert message.properties.MessageExpiryInterval in (599, 600)


def test_metrics_and_display_data(emulator, tmp_path):
    secret = "SENTINEL-DISPLAY-SECRET"
    connection = emulator.connection(password=secret)
    write = WriteToTdmqMqtt(connection, qos=0, mapping=MessageMapping(topic="m/{k}", payload=JsonPayload()))
    from apache_beam.transforms.display import DisplayData

    items = DisplayData.create_from(write).items
    shown = repr([(item.key, item.value) for item in items])
    assert "endpoint" in shown and "m/{k}" in shown and secret not in shown

    pipeline = beam.Pipeline()
    _ = (
        pipeline
        | beam.Create([{"k": i} for i in range(30)] + [{"x": 1}])
        | WriteToTdmqMqtt(emulator.connection(), mapping=MessageMapping(topic="m/{k}", payload=JsonPayload()))
    )
    outcome = pipeline.run()
    outcome.wait_until_finish()
    counters = {
        m.key.metric.name: m.committed
        for m in outcome.metrics().query(MetricsFilter().with_namespace("tdmq_beam.WriteToTdmqMqtt"))["counters"]
    }
    assert counters["published"] == 30 and counters["failed"] == 1
    distributions = outcome.metrics().query(MetricsFilter().with_name("publish_latency_ms"))["distributions"]
    assert distributions and distributions[0].committed.count == 30


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"connection": "http://x"}, "TdmqConnection"),
        ({"mapping": {"topic": "x"}}, "MessageMapping"),
        ({"qos": 3}, "invalid transform default"),
        ({"message_expiry_interval": -5}, "invalid transform default"),
        ({"user_properties": [("k",)]}, "invalid transform default"),
        ({"response_topic": "a/#"}, "invalid transform default"),
        ({"batching": {"batch_size": 0}}, "batch_size"),
        ({"batching": "fast"}, "batching"),
        ({"idempotency_key": "yes"}, "idempotency_key"),
    ],
)
def test_configuration_errors_fail_at_construction(emulator, kwargs, problem):
    arguments = {"connection": emulator.connection(), **kwargs}
    connection = arguments.pop("connection")
    with pytest.raises(ValueError, match=None) as caught:
        WriteToTdmqMqtt(connection, **arguments)
    assert problem in str(caught.value)


def test_published_results_file_schema_round_trip(tmp_path):
    from tdmq_beam import FailedMessage, PublishedMessage
    from tdmq_beam.records.avro_mapping import load_schema

    published = PublishedMessage({"a": b"\x00"}, "t", "ID", 1).as_dict()
    failed = FailedMessage({"a": 1}, None, None, "invalid_record", "why", 0).as_dict()
    for name, record in (("published_message", published), ("failed_message", failed)):
        schema = fastavro.parse_schema(load_schema(os.path.join(SCHEMAS, f"{name}.avsc")))
        path = tmp_path / f"{name}.avro"
        with open(path, "wb") as handle:
            fastavro.writer(handle, schema, [record])
        with open(path, "rb") as handle:
            assert list(fastavro.reader(handle)) == [record]
    assert read_json_lines(str(tmp_path / "nothing")) == []


def test_streaming_input_batches_across_bundles(emulator):
    def labels(streaming: bool, **kwargs) -> set[str]:
        options = PipelineOptions([])
        options.view_as(StandardOptions).streaming = streaming
        pipeline = beam.Pipeline(options=options)
        _ = pipeline | beam.Create([MqttMessage("t", b"x")]) | WriteToTdmqMqtt(emulator.connection(), **kwargs)
        proto = pipeline.to_runner_api()
        return {t.unique_name.split("/")[-1] for t in proto.components.transforms.values()}

    assert "Batch" in labels(True)
    assert "Batch" not in labels(False)
    assert "Batch" in labels(False, batching="sharded")
    assert "Batch" not in labels(True, batching="bundle")


@pytest.mark.parametrize("batching", ["bundle", "sharded"])
def test_an_element_in_several_windows_is_published_once(batching, paho, unique, tmp_path):
    with TdmqEmulator() as emu:
        topic = unique("sliding")
        out_path = str(tmp_path / "windows.jsonl")

        class Record(beam.DoFn):
            def process(self, result, win=beam.DoFn.WindowParam):
                with open(out_path, "a") as handle:
                    handle.write(json.dumps([result.element.payload.decode(), float(win.start)]) + "\n")

        with beam.Pipeline(options=PipelineOptions([])) as pipeline:
            result = (
                pipeline
                | beam.Create([(MqttMessage(topic, f"m{i}"), 12 + i) for i in range(3)])
                | beam.MapTuple(lambda message, ts: window.TimestampedValue(message, ts))
                | beam.WindowInto(window.SlidingWindows(10, 5))
                | WriteToTdmqMqtt(emu.connection(), batching=Batching(mode=batching, max_buffering_duration_secs=0.2))
            )
            result.published | beam.ParDo(Record())
        windows = sorted(tuple(json.loads(line)) for line in open(out_path))
        assert windows == [("m0", 5), ("m0", 10), ("m1", 5), ("m1", 10), ("m2", 5), ("m2", 10)]
        assert emu.stats()["requests"]["publish"] == {"200": 3}  # once per element, not per window


def test_an_accepted_publish_without_a_message_id_is_published_once(tmp_path):
    """A server that answers 200 but sends no X-Message-Id: the element is published (no id), never resent."""
    import asyncio
    import threading

    from aiohttp import web

    requests: list[str] = []
    ready = threading.Event()
    state: dict = {}

    async def accept(request: web.Request) -> web.Response:
        requests.append(request.path)
        await request.read()
        return web.Response(status=200)

    def serve() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/topics/{topic}", accept)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        state["port"] = runner.addresses[0][1]
        state["loop"] = loop
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        connection = TdmqConnection(f"http://127.0.0.1:{state['port']}", username="u", password="p")
        pipeline = beam.Pipeline()
        published_path = str(tmp_path / "published.jsonl")
        result = pipeline | beam.Create([MqttMessage(f"t/{i}", b"x") for i in range(5)]) | WriteToTdmqMqtt(connection)
        (
            result.published
            | beam.Map(lambda r: json.dumps(r.as_dict()))
            | beam.io.WriteToText(published_path, shard_name_template="")
        )
        outcome = pipeline.run()
        outcome.wait_until_finish()
    finally:
        state["loop"].call_soon_threadsafe(state["loop"].stop)
        thread.join(10)
    published = read_json_lines(published_path)
    assert len(published) == 5 and {record["message_id"] for record in published} == {None}
    assert len(requests) == 5  # not one sent again
    counters = {
        m.key.metric.name: m.committed
        for m in outcome.metrics().query(MetricsFilter().with_namespace("tdmq_beam.WriteToTdmqMqtt"))["counters"]
    }
    assert counters["published"] == 5 and counters["published_without_id"] == 5
