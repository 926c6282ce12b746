"""Beam Lineage from the Python transforms: sinks for what is published and keep-alives set, sources
for status lookups and the read side (in test_read.py), in the forms Beam's own IOs use."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics.metric import Lineage

from tdmq_beam import EnrichWithClientStatus, SetClientKeepAlive, WriteToTdmqMqtt
from tdmq_beam.records.mapping import MessageMapping


def test_publishing_enriching_and_keepalive_report_lineage(emulator):
    connection = emulator.connection()
    instance = emulator.http_url.split("//", 1)[1]
    with emulator.simulated_clients() as devices:
        devices.online("lineage-dev", keepalive=60)
        pipeline = beam.Pipeline()
        records = pipeline | beam.Create([{"client_id": "lineage-dev", "room": r, "interval": 120} for r in "ab"])
        _ = records | WriteToTdmqMqtt(connection, mapping=MessageMapping(topic="rooms/{room}", payload="room"))
        _ = records | EnrichWithClientStatus(connection, cloud=emulator.cloud_config())
        _ = records | SetClientKeepAlive(connection)
        result = pipeline.run()
        result.wait_until_finish()
    sinks = Lineage.query(result.metrics(), Lineage.SINK)
    sources = Lineage.query(result.metrics(), Lineage.SOURCE)
    assert sinks == {
        f"tdmq_mqtt:topic:{instance}.rooms/a",
        f"tdmq_mqtt:topic:{instance}.rooms/b",
        f"tdmq_mqtt:keepalive:{instance}",
    }
    assert sources == {f"tdmq_mqtt:client_status:{instance}", f"tencentcloud_mqtt:clients:{emulator.instance_id}"}
    assert emulator.password not in repr(sinks | sources)
