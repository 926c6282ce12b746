"""The read side where brokers and networks misbehave: cut connections, restarts, large backlogs,
process exits, takeovers, and the CONNACK answers a session must live with (issue 17).

Each test here failed on the read side before its session had one owner of the connection, state
per connection and a close that waits for its acknowledgements.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from brokers import CuttingProxy, Mosquitto, ScriptedBroker, connection_to
from mqtt_peers import PahoClient
from test_read import HERE, open_sessions, read, settled

from tdmq_beam import ConfigurationError, ReadFromTdmqMqtt
from tdmq_beam.mqtt import codec
from tdmq_beam.mqtt.codec import PacketType, Prop
from tdmq_beam.service.subscriber import MqttSubscriber, SubscriptionSettings
from tdmq_beam.testing import SimulatedClients, TdmqEmulator


def feed(port: int, count: int, *, start: int = 0, qos: int = 1, chunk: int = 500, pause: float = 0.0) -> None:
    """Publishes m{start}..m{start+count-1} on tele/dev-{i % 5} without waiting per message."""
    publisher = PahoClient(port, "")
    publisher.connect()
    infos = []
    for i in range(start, start + count):
        infos.append(publisher.client.publish(f"tele/dev-{i % 5}", f"m{i}".encode(), qos=qos))
        if pause and (i - start + 1) % chunk == 0:
            time.sleep(pause)
    deadline = time.monotonic() + 60
    for info in infos:
        info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
    assert all(info.is_published() for info in infos), "the feed did not get through within 60 s"
    publisher.disconnect()


def assert_nothing_lost(got: list[dict], expected: range) -> None:
    """Every message came, and every copy after the first is flagged DUP."""
    counts: dict[str, list[bool]] = {}
    for message in got:
        counts.setdefault(message["payload"], []).append(message["dup"])
    missing = {f"m{i}" for i in expected} - set(counts)
    assert not missing, f"{len(missing)} lost, e.g. {sorted(missing)[:5]}"
    unflagged = [payload for payload, dups in counts.items() if len(dups) > 1 and sum(dups) < len(dups) - 1]
    assert not unflagged, f"duplicates not flagged DUP: {unflagged[:5]}"


def read_with_counters(connection, prefix: str, tmp_path: Path, **options) -> tuple[list[dict], dict[str, int]]:
    path = tmp_path / f"counted-{prefix}.jsonl"
    pipeline = beam.Pipeline()
    _ = (
        pipeline
        | ReadFromTdmqMqtt(connection, "tele/#", client_id_prefix=prefix, **options)
        | beam.Map(lambda m: json.dumps({"payload": m.payload.decode(), "dup": m.dup}))
        | beam.io.WriteToText(str(path), shard_name_template="", num_shards=1)
    )
    result = pipeline.run()
    result.wait_until_finish()
    counters = {
        m.key.metric.name: m.committed
        for m in result.metrics().query(MetricsFilter().with_namespace("tdmq_beam.ReadFromTdmqMqtt"))["counters"]
    }
    return [json.loads(line) for line in path.read_text().splitlines()], counters


def test_connections_cut_every_half_second_to_two_lose_nothing(broker, unique, tmp_path):
    prefix = unique("cut")
    count = 20_000
    with CuttingProxy(broker.port) as proxy:
        connection = broker.connection(mqtt_endpoint=f"mqtt://127.0.0.1:{proxy.port}")
        open_sessions(broker.connection(), prefix, tmp_path)

        def stream() -> None:
            feed(broker.port, count, chunk=500, pause=0.2)  # about 8 s of feed
            time.sleep(2)
            proxy.cutting = False  # the tail may then drain

        feeder = threading.Thread(target=stream)
        feeder.start()
        got, counters = read_with_counters(connection, prefix, tmp_path, max_read_time=22)
        feeder.join()
        cuts = proxy.cuts

    assert cuts >= 4, cuts  # the proxy did cut, repeatedly
    assert_nothing_lost(got, range(count))
    assert counters["reconnects"] >= 1 and counters["reconnect_attempts"] >= counters["reconnects"]
    assert counters.get("acknowledged", 0) <= counters["received"]  # never acknowledged what was not read
    assert (settled(broker, f"{prefix}-0") or {"unacknowledged": 0})["unacknowledged"] == 0
    assert read(broker.connection(), prefix, tmp_path, max_read_time=1) == []


def test_a_broker_restart_mid_feed_loses_nothing(unique, tmp_path):
    with Mosquitto(tmp_path / "broker", persistence=True) as mosquitto:
        connection = mosquitto.connection()
        prefix = unique("restart")
        open_sessions(connection, prefix, tmp_path)
        result: dict[str, list] = {}
        reader = threading.Thread(
            target=lambda: result.setdefault("got", read(connection, prefix, tmp_path, max_read_time=16))
        )
        reader.start()
        feed(mosquitto.port, 5000, chunk=250, pause=0.1)
        mosquitto.restart()  # SIGTERM: mosquitto saves the session, its queue and what is in flight
        feed(mosquitto.port, 5000, start=5000, chunk=250, pause=0.1)
        reader.join()
        assert_nothing_lost(result["got"], range(10_000))
        assert read(connection, prefix, tmp_path, max_read_time=1) == []


def _reader_process(url: str, prefix: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HERE / "read_to_file.py"), "http://127.0.0.1:9", url, prefix, str(out), *extra],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("mqtt_version", [5, 4])
def test_a_bounded_qos2_read_over_tls_completes_before_its_process_exits(tls_files, unique, tmp_path, mqtt_version):
    tls = (tls_files["ca"], tls_files["server"], tls_files["server_key"])
    with Mosquitto(tmp_path / "broker", tls=tls) as mosquitto:
        connection = mosquitto.connection(tls=True, ca_cert=tls_files["ca"])
        prefix = unique(f"exit{mqtt_version}")
        options = ("--qos", "2", "--mqtt-version", str(mqtt_version), "--ca-cert", tls_files["ca"])
        open_sessions(connection, prefix, tmp_path, qos=2, mqtt_version=mqtt_version)
        feed(mosquitto.port, 2000, qos=2)
        out = tmp_path / "out.jsonl"
        url = f"mqtts://127.0.0.1:{mosquitto.tls_port}"
        run = _reader_process(url, prefix, out, "--max-records", "2000", *options)
        assert run.returncode == 0, run.stderr[-3000:]
        assert sorted(m["payload"] for m in _lines(out)) == sorted(f"m{i}" for i in range(2000))
        # Every PUBREC went out before the process exited: nothing comes again.
        assert read(connection, prefix, tmp_path, max_read_time=1, qos=2, mqtt_version=mqtt_version) == []


def test_a_bounded_qos2_read_leaves_nothing_in_flight_on_the_emulator(emulator, unique, tmp_path):
    connection = emulator.connection()
    prefix = unique("exit-emulator")
    open_sessions(connection, prefix, tmp_path, qos=2)
    feed(emulator.mqtt_port, 2000, qos=2)
    out = tmp_path / "out.jsonl"
    run = _reader_process(f"mqtt://127.0.0.1:{emulator.mqtt_port}", prefix, out, "--max-records", "2000", "--qos", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert len({m["payload"] for m in _lines(out)}) == 2000
    # The process is gone: PUBRECs, PUBRELs and PUBCOMPs all went before it exited.
    assert emulator.session_state(f"{prefix}-0") == {
        "connected": False, "delivered": 2000, "unacknowledged": 0, "queued": 0,
    }  # fmt: skip


def test_a_read_ending_on_a_bundle_boundary_acknowledges_everything(broker, unique, tmp_path):
    connection = broker.connection()
    prefix = unique("boundary")
    open_sessions(connection, prefix, tmp_path)
    feed(broker.port, 4000)
    got = read(connection, prefix, tmp_path, max_records=4000, max_records_per_bundle=1000)
    assert sorted(m["payload"] for m in got) == sorted(f"m{i}" for i in range(4000))
    if broker.name == "emulator":
        assert settled(broker, f"{prefix}-0") == {
            "connected": False, "delivered": 4000, "unacknowledged": 0, "queued": 0,
        }  # fmt: skip
    assert read(connection, prefix, tmp_path, max_read_time=1) == []


def test_a_backlog_sent_before_the_suback_is_read_at_the_brokers_pace(mosquitto_broker, unique):
    # mosquitto sends a resumed session's queue before it answers SUBSCRIBE: with a handshake
    # timeout far below the time the queue takes, the reader must read on, not give up.
    settings = SubscriptionSettings(unique("backlog"), ("tele/#",), connect_timeout=0.3)
    connection = mosquitto_broker.connection()
    first = MqttSubscriber(connection, settings)
    first.start()
    first.close()
    count = 30_000
    feed(mosquitto_broker.port, count)
    subscriber = MqttSubscriber(connection, settings)
    try:
        subscriber.start()
        seen = set()
        deadline = time.monotonic() + 60
        while len(seen) < count and time.monotonic() < deadline:
            delivery = subscriber.next_delivery()
            if delivery is None:
                subscriber.wait(0.5)
                continue
            seen.add(delivery.packet.payload)
            if len(seen) % 5000 == 0:
                subscriber.acknowledge_through(delivery.generation, delivery.sequence)
        assert len(seen) == count
        subscriber.acknowledge_through(subscriber.generation, subscriber.handed_out)
        assert subscriber.take_stats().reconnects == 0
    finally:
        subscriber.close()
    again = MqttSubscriber(connection, settings)
    try:
        again.start()
        again.wait(1.0)
        assert again.next_delivery() is None  # all were acknowledged
    finally:
        again.close()


def test_a_200000_message_backlog_is_drained_whole_on_the_emulator(unique, tmp_path):
    count = 200_000
    with TdmqEmulator(max_queued=count + 1000) as emulator:  # the default queue keeps 100,000
        connection = emulator.connection()
        prefix = unique("drain")
        open_sessions(connection, prefix, tmp_path)
        devices = SimulatedClients("127.0.0.1", emulator.mqtt_port, "user0", "secret0")
        devices.online("feeder")
        for first in range(0, count, 2000):
            batch = [(f"tele/dev-{i % 5}", f"m{i}".encode()) for i in range(first, first + 2000)]
            assert devices.publish("feeder", batch) == len(batch)
        devices.close()
        assert emulator.session_state(f"{prefix}-0")["queued"] == count  # type: ignore[index]
        got, _counters = read_with_counters(connection, prefix, tmp_path, max_records=count, max_read_time=240)
        assert len(got) == count and not any(m["dup"] for m in got)
        assert_nothing_lost(got, range(count))
        assert settled(emulator, f"{prefix}-0") == {
            "connected": False, "delivered": count, "unacknowledged": 0, "queued": 0,
        }  # fmt: skip


def test_a_second_reader_with_the_same_client_id_is_a_clear_error_not_a_fight(broker, unique, caplog):
    client_id = unique("clash")
    settings = SubscriptionSettings(client_id, ("tele/#",))
    first = MqttSubscriber(broker.connection(), settings)
    second = MqttSubscriber(broker.connection(), settings)
    try:
        first.start()
        with caplog.at_level(logging.WARNING, logger="tdmq_beam.service.subscriber"):
            second.start()  # the broker takes the session over from the first connection
            if broker.name == "mosquitto":
                # mosquitto 2.0.11 closes the first connection without the DISCONNECT 0x8E that
                # MQTT 5 (3.1.4) asks for, so the reader cannot know why: it says what to check.
                deadline = time.monotonic() + 10
                while "check that no other client uses client id" not in caplog.text:
                    assert time.monotonic() < deadline, caplog.text
                    time.sleep(0.05)
                return
            deadline = time.monotonic() + 10
            with pytest.raises(ConfigurationError, match=f"client id '{client_id}' took the session over"):
                while time.monotonic() < deadline:
                    first.next_delivery()
                    time.sleep(0.05)
        time.sleep(1.0)
        assert second.next_delivery() is None  # the first did not take it back
        assert second.take_stats().reconnects == 0
    finally:
        first.close()
        second.close()


def test_a_broker_that_lost_the_session_is_said_so(unique, tmp_path, caplog):
    with Mosquitto(tmp_path / "broker") as mosquitto:  # no persistence: a restart forgets sessions
        subscriber = MqttSubscriber(mosquitto.connection(), SubscriptionSettings(unique("lost"), ("tele/#",)))
        try:
            subscriber.start()
            with caplog.at_level(logging.WARNING, logger="tdmq_beam.service.subscriber"):
                mosquitto.restart()
                stats = subscriber.take_stats()
                deadline = time.monotonic() + 20
                while not stats.reconnects and time.monotonic() < deadline:
                    time.sleep(0.1)
                    more = subscriber.take_stats()
                    stats.reconnects += more.reconnects
                    stats.sessions_lost += more.sessions_lost
            assert (stats.reconnects, stats.sessions_lost) == (1, 1)
            assert "no longer had this session" in caplog.text
            feed(mosquitto.port, 1)  # subscribed again on the new session
            assert subscriber.wait(5) and subscriber.next_delivery().packet.payload == b"m0"  # type: ignore[union-attr]
        finally:
            subscriber.close()


def _publish(topic: str, packet_id: int, props: codec.Properties) -> bytes:
    return codec.encode_publish(
        codec.encode_utf8(topic), f"p{packet_id}".encode(), 1, False, False, packet_id, 5, props
    )


def test_connack_limits_and_server_topic_aliases_are_lived_with(unique, caplog):
    answers = {
        Prop.RECEIVE_MAXIMUM: 5,
        Prop.MAXIMUM_PACKET_SIZE: 4096,
        Prop.TOPIC_ALIAS_MAXIMUM: 2,
        Prop.SERVER_KEEP_ALIVE: 1,  # the broker wants a ping every second, not every 60
        Prop.ASSIGNED_CLIENT_IDENTIFIER: "given-by-broker",
    }
    aliased = [_publish("dev/7/tele", 1, {Prop.TOPIC_ALIAS: 1}), _publish("", 2, {Prop.TOPIC_ALIAS: 1})]
    with ScriptedBroker(answers, aliased) as scripted:
        connection = connection_to(scripted.port)
        subscriber = MqttSubscriber(connection, SubscriptionSettings(unique("answers"), ("dev/#",), keepalive=60))
        try:
            with caplog.at_level(logging.WARNING, logger="tdmq_beam.service.subscriber"):
                subscriber.start()
            topics = []
            deadline = time.monotonic() + 5
            while len(topics) < 2 and time.monotonic() < deadline:
                delivery = subscriber.next_delivery()
                if delivery is None:
                    subscriber.wait(0.2)
                    continue
                topics.append(delivery.packet.topic)
                assert Prop.TOPIC_ALIAS not in delivery.packet.properties
            assert topics == ["dev/7/tele", "dev/7/tele"]
            subscriber.acknowledge_through(subscriber.generation, subscriber.handed_out)
            time.sleep(1.5)
            assert PacketType.PINGREQ in scripted.types()  # Server Keep Alive obeyed
        finally:
            subscriber.close()
        connect = codec.decode_connect(scripted.received[0][1])
        assert connect.properties[Prop.TOPIC_ALIAS_MAXIMUM] > 0  # aliases were allowed
        acknowledged = [codec.decode_packet_id(body, 5).packet_id for kind, body in scripted.received if kind == 4]
        assert acknowledged == [1, 2]
        assert scripted.types()[-1] == PacketType.DISCONNECT
    assert "assigned client id 'given-by-broker'" in caplog.text


def test_a_subscribe_over_the_brokers_maximum_packet_size_is_a_clear_error(unique):
    with ScriptedBroker({Prop.MAXIMUM_PACKET_SIZE: 32}) as scripted:
        filters = tuple(f"devices/{i}/telemetry/#" for i in range(5))
        subscriber = MqttSubscriber(connection_to(scripted.port), SubscriptionSettings(unique("big"), filters))
        try:
            with pytest.raises(ConfigurationError, match="over the broker's Maximum Packet Size of 32"):
                subscriber.start()
        finally:
            subscriber.close()


def test_a_finished_read_can_end_its_sessions(broker, unique, tmp_path):
    # A reader that stops for good ends its session, so no broker keeps it (nor, for mosquitto,
    # its place in a shared group's rotation) until it expires. Without end_sessions the second
    # read would get the 60 messages left (and the 10 published after).
    connection = broker.connection()
    prefix = unique("ended")
    open_sessions(connection, prefix, tmp_path)
    feed(broker.port, 100)
    got = read(connection, prefix, tmp_path, max_records=40, end_sessions=True)
    assert len(got) == 40
    if broker.name == "emulator":
        deadline = time.monotonic() + 5
        while broker.session_state(f"{prefix}-0") is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert broker.session_state(f"{prefix}-0") is None
    feed(broker.port, 10, start=100)  # no session, no subscription: nothing is kept for the reader
    assert read(connection, prefix, tmp_path, max_read_time=1) == []


def test_end_sessions_is_checked():
    connection = connection_to(1883)
    with pytest.raises(ConfigurationError, match="give max_records or max_read_time"):
        ReadFromTdmqMqtt(connection, "a/#", client_id_prefix="p", end_sessions=True)
    with pytest.raises(ConfigurationError, match="needs mqtt_version 5"):
        ReadFromTdmqMqtt(connection, "a/#", client_id_prefix="p", end_sessions=True, max_records=5, mqtt_version=4)
    with pytest.raises(ConfigurationError, match="True or False"):
        ReadFromTdmqMqtt(connection, "a/#", client_id_prefix="p", end_sessions=1, max_records=5)
