"""Mapping records onto messages (pure logic): roles, defaults, payload encodings, Avro validation."""

from __future__ import annotations

import io
import json
import os
from typing import NamedTuple

import apache_beam as beam
import fastavro
import pytest

from tdmq_beam import AvroPayload, IdempotencyKey, JsonPayload, MessageMapping, MqttMessage, avro_mapping
from tdmq_beam.records.fields import MappingError
from tdmq_beam.records.mapping import MessageBuilder, MessageDefaults

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "..", "schemas", "device_command.avsc")
SCHEMA = json.load(open(SCHEMA_PATH))


def bare_schema(**field_types) -> dict:
    return {"type": "record", "name": "R", "fields": [{"name": n, "type": t} for n, t in field_types.items()]}


class Command(NamedTuple):
    device: str
    body: bytes


def test_rows_namedtuples_and_dicts_map_alike():
    builder = MessageBuilder(MessageMapping(topic="d/{device}", payload="body"))
    for element in ({"device": "a", "body": b"x"}, beam.Row(device="a", body=b"x"), Command("a", b"x")):
        message = builder.build(element)
        assert (message.topic, message.payload) == ("d/a", b"x")


def test_callables_for_topic_and_payload():
    mapping = MessageMapping(topic=lambda r: f"t/{r['n'] * 2}", payload=lambda r: str(r["n"]))
    message = MessageBuilder(mapping).build({"n": 21})
    assert (message.topic, message.payload) == ("t/42", b"21")
    bad = MessageBuilder(MessageMapping(topic=lambda r: 5, payload=lambda r: b""))
    with pytest.raises(MappingError, match="topic callable returned int"):
        bad.build({})


def test_defaults_yield_to_record_fields():
    defaults = MessageDefaults(qos=0, content_type="d/t", message_expiry_interval=5, user_properties=[("a", "1")])
    mapping = MessageMapping(topic="t", payload="p", qos="q", user_properties="props")
    builder = MessageBuilder(mapping, defaults)
    own = builder.build({"p": "x", "q": 2, "props": {"b": "2"}})
    assert (own.qos, own.content_type, own.message_expiry_interval) == (2, "d/t", 5)
    assert own.user_properties == (("a", "1"), ("b", "2"))
    fallback = builder.build({"p": "x", "q": None, "props": [("c", "3"), ("c", "4")]})
    assert fallback.qos == 0 and fallback.user_properties == (("a", "1"), ("c", "3"), ("c", "4"))


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"p": "x", "q": 3}, "q"),
        ({"p": "x", "q": 1, "props": {"k": 1}}, "props"),
        ({"p": "x", "q": 1, "props": 7}, "props"),
        ({"q": 1}, "p"),
    ],
)
def test_record_errors_name_the_field(record, field):
    builder = MessageBuilder(MessageMapping(topic="t", payload="p", qos="q", user_properties="props"))
    with pytest.raises(MappingError, match=f"field '{field}'"):
        builder.build(record)


def test_json_and_avro_payloads():
    record = {"device_id": "d", "command_id": "c", "command": "reboot", "params": {}, "issued_at": 0}
    assert json.loads(JsonPayload(["command", "params"]).encode(record)) == {"command": "reboot", "params": {}}
    assert json.loads(JsonPayload().encode({"b": b"\x00\x01"})) == {"b": "AAE="}
    schema = bare_schema(device="string", n="long")
    encoded = AvroPayload(schema).encode({"device": "d", "n": 5})
    assert fastavro.schemaless_reader(io.BytesIO(encoded), fastavro.parse_schema(schema)) == {"device": "d", "n": 5}
    with pytest.raises(ValueError, match="does not match the Avro schema"):
        AvroPayload(schema).encode({"device": "d", "n": "five"})


def test_idempotency_key_is_deterministic_and_distinguishes():
    key = IdempotencyKey()
    first = key.key_for(MqttMessage("t", b"x", user_properties=[("a", "1")]), None)
    assert first == key.key_for(MqttMessage("t", b"x", user_properties=[("a", "1")]), None)
    assert first != key.key_for(MqttMessage("t", b"y", user_properties=[("a", "1")]), None)
    assert first != key.key_for(MqttMessage("t", b"x", qos=2, user_properties=[("a", "1")]), None)
    assert len(first) == 32
    builder = MessageBuilder(
        MessageMapping(topic="t", payload="p"), idempotency_key=IdempotencyKey("dedup", field="id")
    )
    assert builder.build({"p": "x", "id": 7}).user_properties == (("dedup", "7"),)
    with pytest.raises(MappingError, match="field 'id'"):
        builder.build({"p": "x"})


def test_mapping_construction_errors():
    with pytest.raises(ValueError, match="expected '}'"):
        MessageMapping(topic="a/{b", payload="p")
    with pytest.raises(ValueError, match="Single '}'"):
        MessageMapping(topic="a/}b", payload="p")
    with pytest.raises(ValueError, match=r"\{name\}"):
        MessageMapping(topic="a/{b:>3}", payload="p")
    with pytest.raises(ValueError, match="qos must name a field"):
        MessageMapping(topic="t", payload="p", qos=1)
    with pytest.raises(ValueError, match="payload must be"):
        MessageMapping(topic="t", payload=5)


# -- Avro ------------------------------------------------------------------------------------------


def test_schema_annotations():
    mapping = avro_mapping(SCHEMA_PATH)
    assert mapping.topic == "devices/{device_id}/commands"
    assert (mapping.qos, mapping.retained, mapping.message_expiry_interval) == ("qos", "retained", "expiry_seconds")
    assert mapping.user_properties == {"trace-id": "trace_id"}
    assert isinstance(mapping.payload, JsonPayload) and mapping.payload.content_type == "application/json"
    assert avro_mapping(json.dumps(SCHEMA)).fields() == mapping.fields()


def test_mapping_file_over_a_bare_schema(tmp_path):
    schema = bare_schema(device="string", body="bytes", prio=["null", "int"], tags={"type": "map", "values": "string"})
    spec = {
        "topic": "x/{device}",
        "payload": {"encoding": "field", "field": "body"},
        "roles": {"qos": "prio"},
        "user_properties": "tags",
    }
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(spec))
    mapping = avro_mapping(schema, path)
    message = MessageBuilder(mapping).build({"device": "d", "body": b"\x01", "prio": 2, "tags": {"k": "v"}})
    assert (message.topic, message.payload, message.qos, message.user_properties) == ("x/d", b"\x01", 2, (("k", "v"),))
    avro = avro_mapping(schema, {"topic": "x/{device}", "payload": {"encoding": "avro"}})
    assert isinstance(avro.payload, AvroPayload)


@pytest.mark.parametrize(
    ("schema", "spec", "problem"),
    [
        (bare_schema(a="string"), {"topic": "t/{missing}", "payload": "a"}, "field 'missing'"),
        (bare_schema(a="string"), {"topic": "t", "payload": "nope"}, "field 'nope'"),
        (bare_schema(a="string", q="string"), {"topic": "t", "payload": "a", "roles": {"qos": "q"}},
         "field 'q' is string; as qos it must be int or long"),
        (bare_schema(a="string", r="int"), {"topic": "t", "payload": "a", "roles": {"retained": "r"}},
         "field 'r' is int; as retained it must be boolean"),
        (bare_schema(a="long"), {"topic": "t", "payload": "a"}, "field 'a' is long; as payload"),
        (bare_schema(a="string"), {"topic": "t", "payload": "a", "roles": {"speed": "a"}}, "unknown role 'speed'"),
        (bare_schema(a="string"), {"payload": "a"}, "no topic"),
        (bare_schema(a="string"), {"topic": "t"}, "no payload"),
        (bare_schema(a="string"), {"topic": "t", "payload": {"encoding": "xml"}}, "unknown payload encoding"),
        (bare_schema(a="string", m={"type": "map", "values": "long"}),
         {"topic": "t", "payload": "a", "user_properties": "m"}, "field 'm'"),
        (bare_schema(a="string"), {"topic": "t", "payload": "a", "extra": 1}, "unknown key"),
        ({"type": "record", "name": "R", "fields": [{"name": "a", "type": "nonsense"}]}, {}, "not a valid Avro schema"),
    ],
)  # fmt: skip
def test_avro_validation_names_the_problem(schema, spec, problem):
    with pytest.raises(ValueError, match=None) as caught:
        avro_mapping(schema, spec)
    assert problem in str(caught.value)


def test_unreadable_schema_and_mapping_files(tmp_path):
    with pytest.raises(ValueError, match="cannot read schema file"):
        avro_mapping(tmp_path / "missing.avsc")
    with pytest.raises(ValueError, match="cannot read mapping file"):
        avro_mapping(SCHEMA_PATH, tmp_path / "missing.json")
