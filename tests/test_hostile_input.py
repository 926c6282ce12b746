"""Hostile input: every line and every message either succeeds or becomes a dead letter with a reason.

Deep nesting (Python's JSON parser raises RecursionError, not ValueError), overlong lines and
random bytes, through the backfill's input reader, the message decoder and the client-event
parser; and hypothesis fuzzing of the same readers and of the MQTT codec's decoders.
"""

from __future__ import annotations

import glob
import io
import json
import re
from types import SimpleNamespace

import apache_beam as beam
import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mqtt_peers import PahoClient
from test_read import open_sessions, read

from tdmq_beam import DecodeMqttMessages, ReadFromTdmqMqtt, ReceivedMessage, UserProperty
from tdmq_beam.json_documents import load_json, nesting_depth
from tdmq_beam.mqtt import codec
from tdmq_beam.records.client_event import ClientEvent
from tdmq_beam.records.message_decoding import MessageDecoder
from tdmq_beam.records.payload import RecordError
from tdmq_beam.testing import TdmqEmulator
from tdmq_beam_pipelines import backfill_device_commands as backfill
from tdmq_beam_pipelines.command_input import _avro_records, _bounded_lines, _json_lines
from tdmq_beam_pipelines.service_flags import EXIT_RECORDS_FAILED

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

BRACKETS = "[" * 100_000 + "]" * 100_000


def _nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_deep_nesting_is_a_value_error_naming_the_limit():
    with pytest.raises(ValueError, match="nested deeper than the limit of 64 levels"):
        load_json(BRACKETS)
    with pytest.raises(ValueError, match="nested 900 levels deep, over the limit of 64"):
        load_json(json.dumps(_nested(900)).encode())
    assert load_json(json.dumps(_nested(64))) == _nested(64)
    assert load_json('"[[[[" ', max_depth=1) == "[[[["  # brackets in a string are no nesting
    assert nesting_depth(_nested(5000)) == 5000  # no recursion in the check itself
    assert nesting_depth([1, [2, {"x": []}]]) == 4 and nesting_depth(3) == 0


def test_hostile_lines_become_dead_letters_and_the_good_ones_are_published(tmp_path, monkeypatch, capsys):
    good = backfill.generate_commands(3, 3, 0, seed=11)
    deep = {**good[0], "command_id": "deep", "params": _nested(900)}
    lines = [
        json.dumps(good[0]),
        BRACKETS,  # line 2
        json.dumps(good[1]),
        json.dumps(deep),  # line 4
        json.dumps({**good[2], "params": {"blob": "x" * 3_000_000}}),  # line 5: 3 MB
        json.dumps(good[2]),
        json.dumps({**good[1], "command_id": "wild", "device_id": "dev#1"}),  # line 7: not a topic
        json.dumps({**good[1], "command_id": "big", "params": {"blob": "y" * 1_200_000}}),  # 8: over 1 MiB: not sent
    ]
    source = tmp_path / "commands.jsonl"
    source.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out" / "run"
    with TdmqEmulator() as emulator:  # its own: the subscriber takes everything published
        monkeypatch.setenv("HOSTILE_TEST_PASSWORD", emulator.password)
        subscriber = PahoClient(emulator.mqtt_port, "hostile-watcher")
        subscriber.connect()
        subscriber.subscribe("#", 1)
        argv = [
            "--input", str(source), "--output", str(output), "--endpoint", emulator.http_url, "--quiet",
            "--username", emulator.username, "--password-env", "HOSTILE_TEST_PASSWORD", "--max-line-bytes", "2000000",
        ]  # fmt: skip
        assert backfill.main(argv) == EXIT_RECORDS_FAILED
        received = subscriber.receive(3)
        assert subscriber.nothing_more()
        subscriber.disconnect()
    assert re.search(r"^retried:\s+0$", capsys.readouterr().out, re.M)  # a record refused before sending: no attempt
    assert sorted(json.loads(m.payload)["command_id"] for m in received) == sorted(c["command_id"] for c in good)
    failed = [json.loads(line) for name in glob.glob(f"{output}-failed*.jsonl") for line in open(name)]
    reasons = sorted(record["reason"] for record in failed)
    assert len(reasons) == 5, reasons
    assert reasons[0].startswith("commands.jsonl line 2: not valid JSON (nested deeper than the limit of 64")
    assert reasons[1].startswith("commands.jsonl line 4: not valid JSON (nested 901 levels deep")
    assert re.match(r"commands.jsonl line 5: a line of 3\d{6} bytes, over the limit of 2000000", reasons[2])
    assert reasons[3].startswith("commands.jsonl line 7: invalid record: topic 'devices/dev#1/commands'")
    assert reasons[4].startswith("commands.jsonl line 8: payload is 1200")
    overlong = next(record for record in failed if "line 5:" in record["reason"])
    assert len(json.dumps(overlong)) < 2000  # its first bytes, not the whole line
    assert all(len(json.dumps(record)) < 2_100_000 for record in failed)  # none over the line limit


def test_a_poison_payload_is_a_failed_row_and_acknowledged(emulator, paho, unique, tmp_path):
    schema = {
        "type": "record", "name": "Reading", "mqtt.topic": "poison/{device_id}",
        "mqtt.payload": {"encoding": "json"},
        "fields": [{"name": "device_id", "type": "string"}, {"name": "temperature", "type": "double"}],
    }  # fmt: skip
    connection = emulator.connection()
    prefix = unique("poison")
    open_sessions(connection, prefix, tmp_path, topics="poison/#")
    publisher = paho()
    publisher.publish("poison/d1", BRACKETS.encode(), qos=1)
    publisher.publish("poison/d2", json.dumps(_nested(900)).encode(), qos=1)
    publisher.publish("poison/d3", b'{"temperature": 20.5}', qos=1)
    failed_path, records_path = tmp_path / "failed.jsonl", tmp_path / "records.jsonl"
    with beam.Pipeline() as pipeline:
        decoded = (
            pipeline
            | ReadFromTdmqMqtt(connection, "poison/#", client_id_prefix=prefix, max_records=3)
            | DecodeMqttMessages(schema)
        )
        _ = (
            decoded.failed
            | "F" >> beam.Map(lambda f: f"{f.element.topic} {f.reason}")
            | "WF" >> beam.io.WriteToText(str(failed_path), shard_name_template="", num_shards=1)
        )
        _ = (
            decoded.records
            | "R" >> beam.Map(json.dumps)
            | "WR" >> beam.io.WriteToText(str(records_path), shard_name_template="", num_shards=1)
        )
    failures = sorted(failed_path.read_text().splitlines())
    assert [line.split()[0] for line in failures] == ["poison/d1", "poison/d2"]
    assert all("nested" in line and "limit of 64" in line for line in failures), failures
    assert json.loads(records_path.read_text()) == {"device_id": "d3", "temperature": 20.5}
    # Acknowledged: the next run of the same readers gets nothing again.
    assert read(connection, prefix, tmp_path, topics="poison/#", max_read_time=1.0) == []


# -- fuzzing ------------------------------------------------------------------------------------


def _readable(data: bytes) -> SimpleNamespace:
    """What `_json_lines` reads: a file whose ``open`` gives its bytes."""
    return SimpleNamespace(open=lambda: io.BytesIO(data))


@FUZZ
@given(st.binary(max_size=2000), st.integers(1, 300), st.integers(1, 64))
def test_bounded_lines_split_like_bytes_split(data, limit, chunk):
    expected = data.split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()  # the newline ending the last line ends no further line
    got = list(_bounded_lines(io.BytesIO(data), limit, chunk))
    assert [length for _, length in got] == [len(line) for line in expected] or (
        expected == [b""] * len(expected) and not got  # a file of bare newlines: empty lines of length 0
    )
    for (line, length), whole in zip(got, expected, strict=False):
        assert line == (whole if length <= limit else whole[:256])


@FUZZ
@given(st.lists(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))),
                max_size=20), st.integers(1, 500))  # fmt: skip
def test_json_lines_never_raise(lines, limit):
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    items = list(_json_lines(_readable(data), "f.jsonl", limit, 8))
    assert all(item.problem is not None or item.record is not None or item.raw == "null" for item in items)


def _json_values():
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=30,
    )


DECODER = MessageDecoder(
    {
        "type": "record", "name": "Reading", "mqtt.topic": "fuzz/{device_id}/{seq}",
        "mqtt.payload": {"encoding": "json"},
        "fields": [
            {"name": "device_id", "type": "string"}, {"name": "seq", "type": "long"},
            {"name": "temperature", "type": ["null", "double"], "default": None},
            {"name": "tags", "type": {"type": "map", "values": "string"}, "default": {}},
            {"name": "site", "type": ["null", "string"], "default": None, "mqtt.role": "user_property",
             "mqtt.key": "site"},
        ],
    },
    max_depth=8,
)  # fmt: skip


def _message(topic: str, payload: bytes, properties=()) -> ReceivedMessage:
    return ReceivedMessage(topic, payload, 1, False, False, [UserProperty(k, v) for k, v in properties],
                           None, None, None, None, None, None)  # fmt: skip


@FUZZ
@given(
    st.one_of(st.just("fuzz/d/1"), st.text(max_size=30)),
    st.one_of(st.binary(max_size=300), _json_values().map(lambda v: json.dumps(v).encode()),
              st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)),
    st.lists(st.tuples(st.sampled_from(["site", "x"]), st.text(max_size=10)), max_size=3),
)  # fmt: skip
def test_the_message_decoder_either_decodes_or_raises_record_error(topic, payload, properties):
    try:
        record = DECODER.decode(_message(topic, payload, properties))
    except RecordError as exc:
        assert str(exc)
    else:
        assert set(record) == {"device_id", "seq", "temperature", "tags", "site"}


@FUZZ
@given(
    st.sampled_from(["$events/client_connected", "$events/client_disconnected", "$events/other"]),
    st.one_of(st.binary(max_size=300), _json_values().map(lambda v: json.dumps(v).encode()),
              st.integers(1, 3000).map(lambda n: b"{\"a\":" * n + b"1" + b"}" * n)),
)  # fmt: skip
def test_client_events_either_parse_or_raise_record_error(topic, payload):
    try:
        event = ClientEvent.from_message(_message(topic, payload))
    except RecordError as exc:
        assert str(exc)
    else:
        assert event.client_id


DECODERS = [
    lambda first, body: codec.decode_publish(first, body, 5),
    lambda first, body: codec.decode_publish(first, body, 4),
    lambda first, body: codec.decode_connack(body, 5),
    lambda first, body: codec.decode_suback(body, 5),
    lambda first, body: codec.decode_packet_id(body, 5),
    lambda first, body: codec.decode_disconnect(body, 5),
    lambda first, body: codec.decode_connect(body),
    lambda first, body: codec.decode_subscribe(body, 5),
]


@FUZZ
@given(st.sampled_from(range(len(DECODERS))), st.integers(0, 15).map(lambda flags: 0x30 | flags),
       st.binary(max_size=200))  # fmt: skip
def test_the_codec_decoders_raise_only_malformed_packet(which, first, body):
    try:
        DECODERS[which](first, body)
    except codec.MalformedPacket:
        pass


@FUZZ
@given(st.binary(max_size=600), st.integers(1, 64))
def test_the_framer_bounds_packets_and_raises_only_malformed_packet(data, step):
    framer = codec.PacketFramer(128)
    try:
        for start in range(0, len(data), step):
            for _first, body, size in framer.feed(data[start : start + step]):
                assert size <= 128 and len(body) < size
    except codec.MalformedPacket:
        pass


def _avro_file() -> bytes:
    schema = json.loads((backfill.SCHEMAS / "device_command.avsc").read_text())
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(schema), backfill.generate_commands(20, 5, 0, seed=3))
    return out.getvalue()


AVRO = _avro_file()


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(AVRO) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(AVRO)))  # fmt: skip
def test_a_corrupt_avro_file_is_a_dead_letter_never_an_exception(flips, cut):
    data = bytearray(AVRO[:cut] if cut else AVRO)
    for position, value in flips:
        if position < len(data):
            data[position] = value
    readable = SimpleNamespace(open=lambda mime_type=None: io.BytesIO(bytes(data)))
    items = list(_avro_records(readable, "f.avro"))
    assert all(item.problem is None or item.problem.startswith("not a readable Avro file") for item in items)
