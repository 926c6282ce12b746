"""The reader against a scripted malicious broker (loopback, bounded): protocol violations are
failures that name the packet, never a silent success or an endless reconnect; memory is bounded
in bytes; a broker's odd but legal answers (Server Keep Alive 0) do not switch off dead-peer
detection; messages on topics the read never subscribed to are acknowledged, not read."""

from __future__ import annotations

import time

import apache_beam as beam
import pytest
from hostile_broker import HostileBroker, publish_packet

from tdmq_beam import ProtocolViolationError, ReadFromTdmqMqtt, TdmqConnection
from tdmq_beam.mqtt import codec
from tdmq_beam.mqtt.codec import Prop
from tdmq_beam.service.subscriber import MqttSubscriber, SubscriptionSettings


def _connection(broker: HostileBroker) -> TdmqConnection:
    return TdmqConnection(
        "http://127.0.0.1:1", mqtt_endpoint=f"mqtt://127.0.0.1:{broker.port}", username="u", password="p"
    )


def _subscriber(broker: HostileBroker, **settings) -> MqttSubscriber:
    options = {"connect_timeout": 3.0, **settings}
    return MqttSubscriber(_connection(broker), SubscriptionSettings("hostile-0", ("t/#",), **options))


def _raw_publish(topic: bytes, properties: bytes, payload: bytes = b"x", packet_id: int = 1) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + packet_id.to_bytes(2, "big") + properties + payload
    return bytes((0x32,)) + codec.encode_varint(len(body)) + body


CONTENT_TYPE_TWICE = codec.encode_varint(8) + b"\x03\x00\x01a\x03\x00\x01b"  # property 0x03 appears twice

POISON = {
    "packet id 0 at QoS 1": (
        publish_packet("t/1", b"x", qos=1, packet_id=0), "a PUBLISH of 11 bytes: packet identifier 0"
    ),
    "a property twice": (_raw_publish(b"t/1", CONTENT_TYPE_TWICE), "property ContentType appears twice"),
    "a topic not UTF-8": (_raw_publish(b"t/\xff\xfe", b"\x00"), "string is not valid UTF-8"),
    "an undefined topic alias": (
        publish_packet("", b"x", properties={Prop.TOPIC_ALIAS: 3}),
        "topic alias 3 was never defined on this connection",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(POISON))
def test_a_malformed_packet_beside_the_suback_fails_the_start_naming_it(case):
    packet, named = POISON[case]
    with HostileBroker(after_suback=[packet]) as broker:
        subscriber = _subscriber(broker)
        try:
            with pytest.raises(ProtocolViolationError, match="broke the MQTT protocol on its first connection") as err:
                subscriber.start()
            assert named in str(err.value)
            assert broker.connections == 1  # not retried: the first connection already tells
        finally:
            subscriber.close(timeout=1)


def test_a_poison_message_fails_the_session_after_three_connections_with_back_off():
    poison = publish_packet("t/1", b"x", qos=1, packet_id=0)
    with HostileBroker(after_suback=lambda number: [] if number == 1 else [poison]) as broker:
        subscriber = _subscriber(broker)
        try:
            subscriber.start()  # the first connection is clean
            broker.inject(poison)  # then the broker starts sending the poison message, on every connection
            deadline = time.monotonic() + 15
            failure = None
            while failure is None and time.monotonic() < deadline:
                try:
                    subscriber.next_delivery()
                except ProtocolViolationError as exc:
                    failure = exc
                time.sleep(0.05)
            assert failure is not None, "the reader never gave up"
            assert "on 3 connections in a row" in str(failure) and "packet identifier 0" in str(failure)
            assert broker.connections == 3
            gaps = [b - a for a, b in zip(broker.connect_times, broker.connect_times[1:], strict=False)]
            assert all(gap >= 0.09 for gap in gaps), gaps  # backed off each time
            time.sleep(1.0)
            assert broker.connections == 3  # and stopped for good
            assert subscriber.take_stats().protocol_violations == 3
        finally:
            subscriber.close(timeout=1)


def test_a_bounded_read_fails_on_a_poison_message_instead_of_finishing_empty():
    poison = publish_packet("t/1", b"x", qos=1, packet_id=0)
    with HostileBroker(after_suback=[poison]) as broker:
        read = ReadFromTdmqMqtt(_connection(broker), "t/#", client_id_prefix="hostile-read", max_read_time=10)
        with pytest.raises(Exception, match="broke the MQTT protocol") as err:
            with beam.Pipeline() as pipeline:
                _ = pipeline | read
        assert "packet identifier 0" in str(err.value)


def test_the_reader_sends_and_enforces_its_maximum_packet_size():
    huge_header = bytes((0x30,)) + codec.encode_varint(256 * 1024 * 1024 - 1) + b"\x00\x03t/1"  # 256 MB announced
    with HostileBroker(after_suback=[huge_header]) as broker:
        subscriber = _subscriber(broker, max_packet_size=64 * 1024)
        try:
            with pytest.raises(ProtocolViolationError, match="over the Maximum Packet Size of 65536") as err:
                subscriber.start()
            assert "raise max_packet_size" in str(err.value)
            (connect,) = broker.connect_packets()
            assert connect.properties[Prop.MAXIMUM_PACKET_SIZE] == 64 * 1024
        finally:
            subscriber.close(timeout=1)


@pytest.mark.parametrize("prop", [Prop.RECEIVE_MAXIMUM, Prop.MAXIMUM_PACKET_SIZE])
def test_a_connack_with_a_zero_limit_is_a_protocol_violation(prop):
    with HostileBroker(connack_properties={prop: 0}) as broker:
        subscriber = _subscriber(broker)
        try:
            with pytest.raises(ProtocolViolationError, match=r"a CONNACK with (Receive Maximum|Maximum Packet Size) 0"):
                subscriber.start()
        finally:
            subscriber.close(timeout=1)


def test_server_keep_alive_zero_does_not_switch_off_dead_peer_detection():
    with HostileBroker(connack_properties={Prop.SERVER_KEEP_ALIVE: 0}, answer_pings=False) as broker:
        subscriber = _subscriber(broker, keepalive=1)
        try:
            subscriber.start()
            deadline = time.monotonic() + 8
            while broker.connections < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert broker.connections >= 2  # the silent broker was given up on and the reader came back
            pings = [first for first, _ in broker.received if first >> 4 == codec.PacketType.PINGREQ]
            assert pings  # it pinged at its own interval
        finally:
            subscriber.close(timeout=1)


def test_messages_on_topics_never_subscribed_are_acknowledged_not_read():
    stray = publish_packet("elsewhere/x", b"stray", qos=1, packet_id=1)
    wanted = publish_packet("t/1", b"wanted", qos=1, packet_id=2)
    with HostileBroker(after_suback=[stray, wanted]) as broker:
        subscriber = _subscriber(broker)
        try:
            subscriber.start()
            assert subscriber.wait(3)
            delivery = subscriber.next_delivery()
            assert delivery is not None and delivery.packet.topic == "t/1"
            assert subscriber.next_delivery() is None
            subscriber.acknowledge_through(delivery.generation, delivery.sequence)
            deadline = time.monotonic() + 3
            while len(broker.acknowledged()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert broker.acknowledged() == [1, 2]  # in the order received, the stray one too
            assert subscriber.take_stats().unexpected_topics == 1
        finally:
            subscriber.close(timeout=1)


def test_the_queue_is_bounded_in_bytes():
    megabyte = b"m" * (1024 * 1024)
    flood = [publish_packet(f"t/{i}", megabyte, qos=0) for i in range(120)]  # 120 MiB at QoS 0
    with HostileBroker(after_suback=flood) as broker:
        subscriber = _subscriber(broker)
        try:
            subscriber.start()
            time.sleep(1.5)
            queued = subscriber._ledger.ready
            assert 60 <= queued <= 70, queued  # reading paused at 64 MiB, not at 50,000 messages
            handed = 0
            deadline = time.monotonic() + 10
            while handed < 120 and time.monotonic() < deadline:
                handed += subscriber.next_delivery() is not None or (subscriber.wait(0.2) and 0)
            assert handed == 120  # reading resumed as the queue drained
        finally:
            subscriber.close(timeout=1)
