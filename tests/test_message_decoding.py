"""MessageDecoder: received messages back into records, the reverse of avro_mapping (pure logic)."""

from __future__ import annotations

import io
import json

import fastavro
import pytest
from apache_beam.utils.timestamp import Timestamp

from tdmq_beam import ConfigurationError, MessageDecoder, ReceivedMessage, UserProperty
from tdmq_beam.records.payload import RecordError

COMMAND = "schemas/device_command.avsc"


def message(topic: str, payload: bytes, *, user_properties=(), **props) -> ReceivedMessage:
    fields = dict.fromkeys(
        ("content_type", "payload_format_indicator", "response_topic", "correlation_data", "message_expiry_interval")
    )
    fields.update(props)
    return ReceivedMessage(
        topic, payload, 1, False, False, [UserProperty(k, v) for k, v in user_properties], **fields,
        receive_time=Timestamp(1),
    )  # fmt: skip


def test_a_device_command_comes_back_as_written():
    decoder = MessageDecoder(COMMAND)
    payload = json.dumps({"command_id": "c-1", "command": "reboot", "params": {"a": "1"}, "issued_at": 1700000000000})
    record = decoder.decode(
        message("devices/dev-9/commands", payload.encode(), user_properties=[("trace-id", "t-1")],
                correlation_data=b"c-1", response_topic="replies/dev-9", message_expiry_interval=60)
    )  # fmt: skip
    assert record["device_id"] == "dev-9" and record["command"] == "reboot" and record["params"] == {"a": "1"}
    assert record["command_id"] == "c-1"  # correlation data (bytes) back into a string field
    assert (record["reply_topic"], record["expiry_seconds"], record["trace_id"]) == ("replies/dev-9", 60, "t-1")
    assert record["qos"] == 1 and record["retained"] is False


def test_avro_payloads_and_typed_topic_levels():
    schema = {
        "type": "record", "name": "Reading", "mqtt.topic": "sites/{site}/{floor}",
        "mqtt.payload": {"encoding": "avro"},
        "fields": [{"name": "site", "type": "string"}, {"name": "floor", "type": "int"},
                   {"name": "value", "type": "double"}],
    }  # fmt: skip
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), {"site": "x", "floor": 3, "value": 1.5})
    decoder = MessageDecoder(schema)
    assert decoder.decode(message("sites/x/3", out.getvalue())) == {"site": "x", "floor": 3, "value": 1.5}
    with pytest.raises(RecordError, match="cannot hold 'top'"):
        decoder.decode(message("sites/x/top", out.getvalue()))
    with pytest.raises(RecordError, match="not an Avro 'Reading' record"):
        decoder.decode(message("sites/x/3", b"\xff"))
    with pytest.raises(RecordError, match="does not match the template"):
        decoder.decode(message("other/x/3", out.getvalue()))


def test_field_payloads_and_user_properties_as_a_map():
    schema = {
        "type": "record", "name": "Raw", "mqtt.topic": "raw/{id}",
        "fields": [{"name": "id", "type": "string"}, {"name": "body", "type": "string", "mqtt.role": "payload"},
                   {"name": "props", "type": {"type": "map", "values": "string"}, "mqtt.role": "user_properties"}],
    }  # fmt: skip
    decoder = MessageDecoder(schema)
    record = decoder.decode(message("raw/7", "héllo".encode(), user_properties=[("a", "1"), ("b", "2")]))
    assert record == {"id": "7", "body": "héllo", "props": {"a": "1", "b": "2"}}
    with pytest.raises(RecordError, match="not UTF-8"):
        decoder.decode(message("raw/7", b"\xff"))


def test_a_callable_topic_or_a_bad_schema_is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        MessageDecoder({"type": "record", "name": "X", "fields": [{"name": "a", "type": "string"}]})
