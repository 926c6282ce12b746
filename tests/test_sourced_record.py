"""`SourcedRecord`: a dict to every transform, its source carried beside it and through Beam's coders."""

from __future__ import annotations

import json

from apache_beam.coders.coders import FastPrimitivesCoder

from tdmq_beam.records.payload import JsonPayload
from tdmq_beam.records.sourced_record import SourcedRecord, source_of


def test_the_record_wins_over_its_defaults_and_the_source_shows_nowhere():
    record = SourcedRecord("commands.jsonl line 3", {"device_id": "d", "qos": 1}, {"qos": None, "trace_id": None})
    assert record == {"device_id": "d", "qos": 1, "trace_id": None}
    assert json.loads(json.dumps(record)) == dict(record)  # no source in what is serialised
    assert json.loads(JsonPayload().encode(record)) == {"device_id": "d", "qos": 1, "trace_id": None}
    assert source_of(record) == "commands.jsonl line 3" and source_of({"device_id": "d"}, "none") == "none"


def test_it_keeps_its_source_through_beams_coder():
    coder = FastPrimitivesCoder()
    decoded = coder.decode(coder.encode(SourcedRecord(("a row",), {"k": "v"})))
    assert isinstance(decoded, SourcedRecord) and decoded == {"k": "v"} and decoded.source == ("a row",)
