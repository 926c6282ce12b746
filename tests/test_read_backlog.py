"""ReadFromTdmqMqtt's backlog: the shared subscription's lag, polled from the emulator's cloud API,
reported as gauges and as the size of Beam's restrictions (what Dataflow scales streaming jobs on)."""

from __future__ import annotations

import logging
import math

import apache_beam as beam
import pytest
from apache_beam.io.unbounded_source import _UnboundedSourceRestriction
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.common import DoFnSignature

from tdmq_beam import ConfigurationError, ReadFromTdmqMqtt
from tdmq_beam.service.backlog_watch import BacklogSettings, BacklogWatches
from tdmq_beam.transforms import sized_read
from tdmq_beam.transforms.mqtt_source import MqttSource


def _lagging_group(paho, unique, count: int, payload: bytes = b"0123456789"):
    """A share group of one persistent session (client id ``{prefix}-0``, now disconnected) that
    the broker holds ``count`` messages for: (prefix, group, topic)."""
    prefix, group, topic = unique("lagr"), unique("lagg"), unique("lagt")
    member = paho(f"{prefix}-0", protocol=5, session_expiry=600)
    member.subscribe(f"$share/{group}/{topic}/#", 1)
    member.disconnect()
    publisher = paho()
    for i in range(count):
        publisher.publish(f"{topic}/{i}", payload, qos=1)
    publisher.disconnect()
    return prefix, group, topic


def test_the_backlog_is_polled_and_sized_per_reader(emulator, paho, unique):
    _, group, topic = _lagging_group(paho, unique, 9)
    settings = BacklogSettings(emulator.cloud_config(), (f"$share/{group}/{topic}/#",), interval=60.0)
    watches = BacklogWatches()
    backlog = watches.watch(settings)
    try:
        assert backlog.messages == 9 and backlog.failures == 0
        assert watches.watch(settings) is backlog  # one poller per process and subscription
        assert backlog.split_bytes(2) == 5  # one byte a message until a message is read: ceil(9 / 2)
        backlog.observe(3, 3 * 120)
        assert backlog.split_bytes(2) == math.ceil(9 / 2 * 120)
    finally:
        watches.stop_all()


def test_a_failing_poll_is_logged_once_without_the_secret_and_leaves_the_backlog_unknown(emulator, caplog):
    secret = "not-the-key-" + "s3cr3t" * 4
    cloud = emulator.cloud_config(secret_key=secret)
    watches = BacklogWatches()
    with caplog.at_level(logging.WARNING, logger="tdmq_beam.service.backlog_watch"):
        backlog = watches.watch(BacklogSettings(cloud, ("$share/g/t/#",), interval=0.05))
        try:
            assert backlog.messages is None and backlog.failures >= 1
            assert backlog.split_bytes(1) is None
        finally:
            watches.stop_all()
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and "AuthFailure" in warnings[0], warnings
    assert secret not in caplog.text


def test_the_read_reports_the_backlog_and_sizes_its_restrictions_by_it(emulator, paho, unique):
    prefix, group, topic = _lagging_group(paho, unique, 300)
    read = ReadFromTdmqMqtt(
        emulator.connection(),
        f"{topic}/#",
        client_id_prefix=prefix,
        share_group=group,
        max_records=300,
        max_records_per_bundle=50,
        cloud=emulator.cloud_config(),
        backlog_interval=60.0,  # one poll in this test: at the reader's start, when all 300 wait
    )
    pipeline = beam.Pipeline()
    _ = pipeline | read | beam.combiners.Count.Globally()
    result = pipeline.run()
    result.wait_until_finish()
    gauges = {
        r.key.metric.name: r.committed.value for r in result.metrics().query(MetricsFilter().with_namespace(
            "tdmq_beam.ReadFromTdmqMqtt"))["gauges"]
    }  # fmt: skip
    assert gauges["backlog_messages"] == 300
    assert gauges["split_backlog_bytes"] == 300 * 10  # the mean payload read is 10 bytes
    # Beam sizes a residual restriction by the source's split backlog.
    source = next(iter(MqttSource(read._spec).split(1)))
    assert sized_read._PROVIDER.restriction_size(source, _UnboundedSourceRestriction(source=source)) == 3000


def test_without_cloud_credentials_restrictions_keep_beams_size(emulator, unique):
    read = ReadFromTdmqMqtt(emulator.connection(), "t/#", client_id_prefix=unique("nolag"), share_group="g")
    source = next(iter(MqttSource(read._spec).split(1)))
    assert source.split_backlog_bytes() is None
    assert sized_read._PROVIDER.restriction_size(source, _UnboundedSourceRestriction(source=source)) == 1


def test_the_read_runs_on_the_backlog_sizing_provider():
    # The provider and DoFn subclass Beam's private wrapper: this fails should Beam change it.
    dofn = sized_read._ReadSizedDoFn(0.05, 10, 1.0)
    assert DoFnSignature(dofn).get_restriction_provider() is sized_read._PROVIDER


def test_cloud_needs_a_share_group_and_a_positive_interval(emulator):
    with pytest.raises(ConfigurationError, match="needs share_group"):
        ReadFromTdmqMqtt(emulator.connection(), "t/#", client_id_prefix="x", cloud=emulator.cloud_config())
    with pytest.raises(ConfigurationError, match="backlog_interval"):
        ReadFromTdmqMqtt(emulator.connection(), "t/#", client_id_prefix="x", share_group="g", backlog_interval=0)
    with pytest.raises(ConfigurationError, match="cloud must be a CloudApiConfig"):
        ReadFromTdmqMqtt(emulator.connection(), "t/#", client_id_prefix="x", share_group="g", cloud="secret")


def test_the_yaml_read_takes_the_cloud_keys_for_the_backlog(emulator, monkeypatch):
    from tdmq_beam.beam_yaml.transforms import YamlReadFromTdmqMqtt

    monkeypatch.setenv("TDMQ_SECRET_KEY", emulator.secret_key)
    keys = {"endpoint": emulator.http_url, "username": "user0", "password_env": "TDMQ_PASSWORD", "mqtt_endpoint": f"mqtt://127.0.0.1:{emulator.mqtt_port}",
            "topics": ["t/#"], "client_id_prefix": "yaml-lag", "share_group": "g"}  # fmt: skip
    cloud = {"secret_id": emulator.secret_id, "secret_key_env": "TDMQ_SECRET_KEY", "tencent_region": "ap-guangzhou",
             "instance_id": emulator.instance_id, "cloud_endpoint": emulator.http_url}  # fmt: skip
    backlog = YamlReadFromTdmqMqtt(**keys, **cloud, backlog_interval=5)._read._spec.backlog
    assert backlog is not None and backlog.interval == 5 and backlog.expressions == ("$share/g/t/#",)
    assert backlog.cloud.instance_id == emulator.instance_id
    assert YamlReadFromTdmqMqtt(**keys)._read._spec.backlog is None
    with pytest.raises(ConfigurationError, match="literal secret in a YAML pipeline is refused"):
        YamlReadFromTdmqMqtt(**keys, **cloud, secret_key="inline")
