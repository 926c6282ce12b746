"""ReadFromTdmqMqtt against the emulator, with real publishers (paho-mqtt) and real reader processes.

What is checked is delivery: every message published is read (nothing lost),
messages are acknowledged only once Beam committed them (a failed bundle's
and a killed reader's come again, flagged DUP), and the broker holds nothing
unacknowledged once a read is over.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from brokers import Mosquitto
from mqtt_peers import PahoClient
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tdmq_beam import (
    AuthenticationError,
    ConfigurationError,
    DecodeMqttMessages,
    ReadFromTdmqMqtt,
    ReceivedMessage,
    UserProperty,
)
from tdmq_beam.testing import TdmqEmulator

HERE = Path(__file__).resolve().parent


UNTRUSTED = (
    r"TLS handshake with .* failed \(.+\); the server.s certificate is not signed by a CA this machine trusts: "
    r"give ca_cert"
)


def _as_json(message: ReceivedMessage) -> str:
    fields = message._asdict()
    fields["payload"] = message.payload.decode()
    fields["correlation_data"] = message.correlation_data.decode() if message.correlation_data else None
    fields["user_properties"] = [list(prop) for prop in message.user_properties]
    fields["receive_time"] = message.receive_time.micros / 1e6
    return json.dumps(fields)


def read(connection, prefix: str, tmp_path, *args: str, topics="tele/#", **options) -> list[dict]:
    """Runs a bounded read and returns what it output, as dicts."""
    path = tmp_path / f"read-{prefix}-{time.monotonic_ns()}.jsonl"
    with beam.Pipeline(options=PipelineOptions(list(args))) as pipeline:
        _ = (
            pipeline
            | ReadFromTdmqMqtt(connection, topics, client_id_prefix=prefix, **options)
            | beam.Map(_as_json)
            | beam.io.WriteToText(str(path), shard_name_template="", num_shards=1)
        )
    return [json.loads(line) for line in path.read_text().splitlines()]


def open_sessions(connection, prefix: str, tmp_path, **options) -> None:
    """Creates the readers' persistent sessions (and subscriptions) on the broker."""
    assert read(connection, prefix, tmp_path, max_read_time=0.5, **options) == []


def publish(paho, count: int, *, qos: int = 1, start: int = 0, topic="tele/dev-{i}", properties=None) -> list[str]:
    """Publishes ``count`` messages through a new connected client from the factory ``paho``."""
    publisher = paho()
    payloads = [f"m{i}" for i in range(start, start + count)]
    for i, payload in zip(range(start, start + count), payloads, strict=True):
        publisher.publish(topic.format(i=i), payload.encode(), qos=qos, properties=properties)
    publisher.disconnect()
    return payloads


def settled(broker, client_id: str, timeout: float = 5.0) -> dict | None:
    """The broker's view of a session once nothing is left in flight (or after ``timeout``); None
    where the broker cannot say (mosquitto: the tests read the session again instead)."""
    deadline = time.monotonic() + timeout
    while True:
        state = broker.session_state(client_id)
        if state is None or state["unacknowledged"] == 0 or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def test_queued_messages_are_read_once_with_every_property_then_acknowledged(broker, unique, tmp_path):
    connection = broker.connection()
    paho = broker.publisher
    prefix = unique("queued")
    open_sessions(connection, prefix, tmp_path)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k", "1"), ("trace", "t-9"), ("k", "2")]
    props.ContentType = "text/plain"
    props.PayloadFormatIndicator = 1
    props.ResponseTopic = "replies/x"
    props.CorrelationData = b"corr-7"
    props.MessageExpiryInterval = 3600
    sent = publish(paho, 50, properties=props)  # while no reader runs: the session queues them

    got = read(connection, prefix, tmp_path, max_records=50)

    assert sorted(m["payload"] for m in got) == sorted(sent)
    first = got[0]
    assert first["topic"].startswith("tele/dev-") and first["qos"] == 1 and first["retained"] is False
    assert first["user_properties"] == [["k", "1"], ["trace", "t-9"], ["k", "2"]]  # order and repeats kept
    assert (first["content_type"], first["payload_format_indicator"]) == ("text/plain", 1)
    assert (first["response_topic"], first["correlation_data"]) == ("replies/x", "corr-7")
    assert 3590 <= first["message_expiry_interval"] <= 3600
    assert not any(m["dup"] for m in got)
    if broker.name == "emulator":
        state = settled(broker, f"{prefix}-0")
        assert state == {"connected": False, "delivered": 50, "unacknowledged": 0, "queued": 0}
    assert read(connection, prefix, tmp_path, max_read_time=1) == []  # all were acknowledged


class _FailOn(beam.DoFn):
    def __init__(self, payload: str) -> None:
        self._payload = payload

    def process(self, message):
        if message.payload.decode() == self._payload:
            raise RuntimeError(f"bundle fails on {self._payload}")
        yield message


def test_a_bundle_that_fails_is_not_acknowledged_and_comes_again(broker, unique, tmp_path):
    connection = broker.connection()
    prefix = unique("fails")
    open_sessions(connection, prefix, tmp_path)
    sent = publish(broker.publisher, 30)

    with pytest.raises(Exception, match="bundle fails on m7"):
        with beam.Pipeline() as pipeline:
            _ = (
                pipeline
                | ReadFromTdmqMqtt(connection, "tele/#", client_id_prefix=prefix, max_records=30)
                | beam.ParDo(_FailOn("m7"))
            )

    again = read(connection, prefix, tmp_path, max_read_time=2)
    by_payload = {m["payload"]: m for m in again}
    assert "m7" in by_payload and by_payload["m7"]["dup"] is True  # sent again, flagged
    assert set(sent) - {f"m{i}" for i in range(7)} <= set(by_payload)  # nothing after the failure is lost
    assert (settled(broker, f"{prefix}-0") or {"unacknowledged": 0})["unacknowledged"] == 0
    assert read(connection, prefix, tmp_path, max_read_time=0.5) == []


def _reader_process(port: int, prefix: str, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HERE / "read_to_file.py"), "http://127.0.0.1:9",
         f"mqtt://127.0.0.1:{port}", prefix, str(out), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _wait_for_lines(path: Path, count: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(_lines(path)) < count:
        if process.poll() is not None:
            raise AssertionError(f"the reader process ended: {process.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, f"the reader process read {len(_lines(path))} of {count} in {timeout}s"
        time.sleep(0.05)


def _publish_stream(port: int, count: int, interval: float) -> threading.Thread:
    def run() -> None:
        publisher = PahoClient(port, "")
        publisher.connect()
        for i in range(count):
            publisher.publish(f"tele/dev-{i % 5}", f"m{i}".encode(), qos=1)
            time.sleep(interval)
        publisher.disconnect()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_killed_reader_restarted_with_its_prefix_loses_nothing(broker, unique, tmp_path):
    prefix = unique("killed")
    connection = broker.connection()
    open_sessions(connection, prefix, tmp_path)
    first_out = tmp_path / "first.jsonl"
    process = _reader_process(broker.port, prefix, first_out, "--streaming")
    stream = _publish_stream(broker.port, 300, 0.01)
    try:
        _wait_for_lines(first_out, 60, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # mid-stream, no goodbye
        process.wait()
    stream.join()

    second = read(connection, prefix, tmp_path, "--streaming", max_read_time=4)

    first = _lines(first_out)
    seen_first = {m["payload"] for m in first}
    seen_second = {m["payload"] for m in second}
    assert {f"m{i}" for i in range(300)} - seen_first - seen_second == set()  # lost: none
    duplicates = seen_first & seen_second
    assert all(m["dup"] for m in second if m["payload"] in duplicates)  # every duplicate is flagged
    assert (settled(broker, f"{prefix}-0") or {"unacknowledged": 0})["unacknowledged"] == 0
    assert read(connection, prefix, tmp_path, max_read_time=0.5) == []


def test_shared_readers_split_the_load(broker, unique, tmp_path):
    connection = broker.connection()
    prefix = unique("split")
    options = {"share_group": unique("g"), "num_readers": 2}
    open_sessions(connection, prefix, tmp_path, **options)
    sent = publish(broker.publisher, 100)

    got = read(connection, prefix, tmp_path, max_records=100, **options)

    assert sorted(m["payload"] for m in got) == sorted(sent)  # each read once: the group split them
    if broker.name == "emulator":
        delivered = [settled(broker, f"{prefix}-{i}")["delivered"] for i in range(2)]  # type: ignore[index]
        assert all(count > 0 for count in delivered), delivered
        assert all(settled(broker, f"{prefix}-{i}")["unacknowledged"] == 0 for i in range(2))  # type: ignore[index]
    assert read(connection, prefix, tmp_path, max_read_time=0.5, **options) == []


def test_a_shared_reader_that_dies_loses_nothing(broker, unique, tmp_path):
    connection = broker.connection()
    group = unique("g")
    dying, staying = unique("dying"), unique("staying")
    dying_out = tmp_path / "dying.jsonl"
    process = _reader_process(broker.port, dying, dying_out, "--share-group", group)
    result: dict[str, list] = {}
    reader = threading.Thread(
        target=lambda: result.setdefault(
            "staying", read(connection, staying, tmp_path, share_group=group, max_read_time=12)
        )
    )
    try:
        broker.wait_connected(f"{dying}-0")
        reader.start()
        broker.wait_connected(f"{staying}-0")
        stream = _publish_stream(broker.port, 300, 0.01)
        _wait_for_lines(dying_out, 20, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    stream.join()
    reader.join()

    seen_dying = {m["payload"] for m in _lines(dying_out)}
    seen_staying = {m["payload"] for m in result["staying"]}
    assert seen_dying and seen_staying  # the group split the stream
    missing = {f"m{i}" for i in range(300)} - seen_dying - seen_staying
    if broker.name == "emulator":
        # The emulator hands a dead member's unacknowledged messages to the group at once.
        assert missing == set()
    else:
        # mosquitto 2.0 keeps the dead member's session in the group's rotation (mosquitto issues
        # 1747, 2662): its share of what came after the kill waits for it. Nothing is lost: the
        # member comes back and reads it.
        assert missing, "mosquitto handed the dead member's share to the group: update docs/read.md"
        back = read(connection, dying, tmp_path, share_group=group, max_read_time=3)
        assert missing - {m["payload"] for m in back} == set()


def test_qos2_and_mqtt_3_1_1_reads_acknowledge_after_commit(broker, unique, tmp_path):
    connection = broker.connection()
    for mqtt_version, qos in ((5, 2), (4, 1), (4, 2)):
        prefix = unique(f"v{mqtt_version}q{qos}")
        options = {"mqtt_version": mqtt_version, "qos": qos}
        open_sessions(connection, prefix, tmp_path, **options)
        sent = publish(broker.publisher, 40, qos=2)
        got = read(connection, prefix, tmp_path, max_records=40, **options)
        assert sorted(m["payload"] for m in got) == sorted(sent)
        assert {m["qos"] for m in got} == {qos}
        if mqtt_version == 4:
            assert all(m["user_properties"] == [] and m["content_type"] is None for m in got)
        assert (settled(broker, f"{prefix}-0") or {"unacknowledged": 0})["unacknowledged"] == 0
        assert read(connection, prefix, tmp_path, max_read_time=0.5, **options) == []


def test_the_watermark_follows_the_clock_while_topics_are_quiet(emulator, unique):
    from tdmq_beam.transforms.mqtt_source import MqttSource

    source = ReadFromTdmqMqtt(emulator.connection(), "quiet/#", client_id_prefix=unique("quiet"))._spec
    reader = MqttSource(source).create_reader(None, None)
    try:
        assert reader.start() is False  # nothing published
        first = reader.get_watermark()
        time.sleep(0.3)
        assert reader.advance() is False
        later = reader.get_watermark()
        assert later.micros - first.micros >= 250_000
        assert abs(later.micros / 1e6 - time.time()) < 1
    finally:
        reader._session.close()


def test_windows_close_and_event_time_comes_from_the_message(emulator, paho, unique, tmp_path):
    connection = emulator.connection()
    prefix = unique("windows")
    open_sessions(connection, prefix, tmp_path)
    sent = []
    for i in range(6):
        props = Properties(PacketTypes.PUBLISH)  # (paho adds to UserProperty on every assignment)
        props.UserProperty = [("ts", str(1_700_000_000 + 10 * i))]  # three 20-second windows
        sent += publish(paho, 1, start=i, properties=props)
    path = tmp_path / "windows.jsonl"
    with beam.Pipeline(options=PipelineOptions(["--streaming"])) as pipeline:
        _ = (
            pipeline
            | ReadFromTdmqMqtt(
                connection, "tele/#", client_id_prefix=prefix, max_records=6,
                timestamp_fn=lambda m: int(m.user_property("ts")), event_time_delay=10**9,
            )
            | beam.WindowInto(beam.window.FixedWindows(20))
            | beam.Map(lambda m: 1)
            | beam.CombineGlobally(sum).without_defaults()
            | beam.Map(str)
            | beam.io.WriteToText(str(path), shard_name_template="", num_shards=1)
        )  # fmt: skip
    assert sorted(path.read_text().split()) == ["2", "2", "2"]


def test_decoding_sends_what_does_not_fit_to_failed(emulator, paho, unique, tmp_path):
    schema = {
        "type": "record", "name": "Reading",
        "mqtt.topic": "tele/{device_id}",
        "mqtt.payload": {"encoding": "json", "fields": ["temperature"]},
        "fields": [
            {"name": "device_id", "type": "string"},
            {"name": "temperature", "type": "double"},
            {"name": "site", "type": ["null", "string"], "default": None, "mqtt.role": "user_property",
             "mqtt.key": "site"},
        ],
    }  # fmt: skip
    connection = emulator.connection()
    prefix = unique("decode")
    open_sessions(connection, prefix, tmp_path)
    publisher = paho()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("site", "north")]
    publisher.publish("tele/d1", b'{"temperature": 21.5}', qos=1, properties=props)
    publisher.publish("tele/d2", b"not json", qos=1)
    publisher.publish("tele/d3", b'{"temperature": "warm"}', qos=1)
    records_path, failed_path = tmp_path / "records.jsonl", tmp_path / "failed.jsonl"
    with beam.Pipeline() as pipeline:
        decoded = (
            pipeline
            | ReadFromTdmqMqtt(connection, "tele/#", client_id_prefix=prefix, max_records=3)
            | DecodeMqttMessages(schema)
        )
        _ = (
            decoded.records
            | "R" >> beam.Map(json.dumps)
            | "WR" >> beam.io.WriteToText(str(records_path), shard_name_template="", num_shards=1)
        )
        _ = (
            decoded.failed
            | "F" >> beam.Map(lambda f: json.dumps(f.as_dict()))
            | "WF" >> beam.io.WriteToText(str(failed_path), shard_name_template="", num_shards=1)
        )
    records = [json.loads(line) for line in records_path.read_text().splitlines()]
    assert records == [{"device_id": "d1", "temperature": 21.5, "site": "north"}]
    failed = sorted((json.loads(line) for line in failed_path.read_text().splitlines()), key=lambda f: f["topic"])
    assert [f["topic"] for f in failed] == ["tele/d2", "tele/d3"]
    assert "payload is not JSON" in failed[0]["reason"]
    assert "temperature" in failed[1]["reason"] or "Reading" in failed[1]["reason"]
    assert json.loads(failed[0]["element_json"])["topic"] == "tele/d2"  # the raw message is kept


def test_deduplicate_window_drops_repeated_idempotency_keys(emulator, paho, unique, tmp_path):
    connection = emulator.connection()
    prefix = unique("dedup")
    open_sessions(connection, prefix, tmp_path)
    publisher = paho()
    for key in ("a", "b", "a", "c", "b"):
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("idempotency-key", key)]
        publisher.publish("tele/x", key.encode(), qos=1, properties=props)
    publisher.publish("tele/x", b"no-key", qos=1)
    publisher.publish("tele/x", b"no-key", qos=1)

    got = read(connection, prefix, tmp_path, max_records=7, deduplicate_window=60)

    assert sorted(m["payload"] for m in got) == ["a", "b", "c", "no-key", "no-key"]


def test_tls_and_mutual_tls(tls_files, unique, tmp_path):
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    files = {}
    for name, blob in (("ca", ca.cert_pem), ("server_key", server.private_key_pem)):
        files[name] = tmp_path / f"{name}.pem"
        blob.write_to_path(str(files[name]))
    files["server"] = tmp_path / "server.pem"
    for index, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(files["server"]), append=index > 0)
    prefix = unique("mtls")
    reader_cert = ca.issue_cert(f"{prefix}-0", common_name=f"{prefix}-0")  # mTLS: the CN is the client id
    files["reader"], files["reader_key"] = tmp_path / "reader.pem", tmp_path / "reader_key.pem"
    reader_cert.private_key_pem.write_to_path(str(files["reader_key"]))
    for index, blob in enumerate(reader_cert.cert_chain_pems):
        blob.write_to_path(str(files["reader"]), append=index > 0)

    with TdmqEmulator(
        tls_cert=str(files["server"]), tls_key=str(files["server_key"]), client_ca=str(files["ca"]), mqtts_port=0
    ) as emulator:
        mqtts = f"mqtts://127.0.0.1:{emulator.mqtts_port}"
        tls = emulator.connection(mqtt_endpoint=mqtts, ca_cert=str(files["ca"]))
        mtls = emulator.connection(
            mqtt_endpoint=mqtts, ca_cert=str(files["ca"]), username=None, password=None,
            client_cert=str(files["reader"]), client_key=str(files["reader_key"]),
        )  # fmt: skip
        for connection, name in ((tls, unique("tls")), (mtls, prefix)):
            open_sessions(connection, name, tmp_path)
            publisher = PahoClient(emulator.mqtt_port, "")
            publisher.connect()
            publisher.publish("tele/secure", f"to {name}".encode(), qos=1)
            publisher.disconnect()
            got = read(connection, name, tmp_path, max_records=1)
            assert [m["payload"] for m in got] == [f"to {name}"]

        untrusted = emulator.connection(mqtt_endpoint=mqtts)  # the system trust store does not know the CA
        with pytest.raises(
            Exception,
            match=UNTRUSTED,
        ):
            read(untrusted, unique("untrusted"), tmp_path, max_read_time=0.5)


def test_mutual_tls_on_mosquitto(tls_files, unique, tmp_path):
    tls = (tls_files["ca"], tls_files["server"], tls_files["server_key"])
    with Mosquitto(tmp_path / "broker", tls=tls, require_certificate=True) as mosquitto:
        mtls = mosquitto.connection(
            tls=True, ca_cert=tls_files["ca"], username=None, password=None,
            client_cert=tls_files["device"], client_key=tls_files["device_key"],
        )  # fmt: skip
        prefix = unique("mtls")
        open_sessions(mtls, prefix, tmp_path)
        publisher = PahoClient(mosquitto.port, "")
        publisher.connect()
        for i in range(5):
            publisher.publish("tele/secure", f"m{i}".encode(), qos=1)
        publisher.disconnect()
        got = read(mtls, prefix, tmp_path, max_records=5)
        assert sorted(m["payload"] for m in got) == [f"m{i}" for i in range(5)]
        no_certificate = mosquitto.connection(tls=True, ca_cert=tls_files["ca"])
        with pytest.raises(Exception, match="refuses a missing or untrusted client certificate"):
            read(no_certificate, unique("nocert"), tmp_path, max_read_time=0.5)


def test_refusals_and_configuration_mistakes_are_clear(emulator, unique, tmp_path):
    wrong = emulator.connection(password="wrong")
    with pytest.raises(Exception, match=r"refused the connection \(reason code 0x86") as caught:
        read(wrong, unique("refused"), tmp_path, max_read_time=0.5)
    assert "wrong" not in str(caught.value)
    # Under the pipeline's wrapping, the reader's own error is the typed one.
    from tdmq_beam.service.subscriber import MqttSubscriber, SubscriptionSettings

    subscriber = MqttSubscriber(wrong, SubscriptionSettings(unique("refused"), ("a/#",)))
    try:
        with pytest.raises(AuthenticationError, match="reason code 0x86"):
            subscriber.start()
    finally:
        subscriber.close()
    connection = emulator.connection()
    with pytest.raises(ConfigurationError, match="needs share_group"):
        ReadFromTdmqMqtt(connection, "a/#", client_id_prefix="p", num_readers=2)
    with pytest.raises(ConfigurationError, match="mqtt_endpoint"):
        ReadFromTdmqMqtt(emulator.connection(mqtt_endpoint=None), "a/#", client_id_prefix="p")
    with pytest.raises(ConfigurationError, match="not a valid topic filter"):
        ReadFromTdmqMqtt(connection, "a/#/b", client_id_prefix="p")
    with pytest.raises(ConfigurationError, match="share_group="):
        ReadFromTdmqMqtt(connection, "$share/g/a", client_id_prefix="p")
    with pytest.raises(ConfigurationError, match="mqtt_version"):
        ReadFromTdmqMqtt(connection, "a", client_id_prefix="p", mqtt_version=3)


def test_received_message_rows_have_a_schema():
    from apache_beam.typehints.schemas import named_fields_from_element_type

    fields = dict(named_fields_from_element_type(ReceivedMessage))
    assert fields["topic"] is str and fields["payload"] is bytes
    assert set(fields) >= {"dup", "user_properties", "correlation_data", "receive_time"}
    coder = beam.coders.registry.get_coder(ReceivedMessage)
    message = ReceivedMessage(
        "a/b", b"x", 1, False, True, [UserProperty("k", "v"), UserProperty("k", "w")], None, 1, None, b"c", 5,
        beam.utils.timestamp.Timestamp(1),
    )  # fmt: skip
    assert coder.decode(coder.encode(message)) == message


def test_metrics_and_lineage_hold_no_secret(emulator, paho, unique, tmp_path):
    from apache_beam.metrics.metric import Lineage, MetricsFilter

    connection = emulator.connection()
    prefix = unique("metrics")
    open_sessions(connection, prefix, tmp_path)
    publish(paho, 10)
    pipeline = beam.Pipeline()
    _ = pipeline | ReadFromTdmqMqtt(connection, "tele/#", client_id_prefix=prefix, max_records=10) | beam.Map(len)
    result = pipeline.run()
    result.wait_until_finish()
    counters = {
        m.key.metric.name: m.committed
        for m in result.metrics().query(MetricsFilter().with_namespace("tdmq_beam.ReadFromTdmqMqtt"))["counters"]
    }
    assert counters["received"] == 10 and counters.get("redelivered", 0) == 0
    sources = Lineage.query(result.metrics(), Lineage.SOURCE)
    assert sources == {f"tdmq_mqtt:topic:127.0.0.1:{emulator.mqtt_port}.tele/#"}
    everything = repr(result.metrics().query(MetricsFilter())) + repr(sources)
    assert emulator.password not in everything
