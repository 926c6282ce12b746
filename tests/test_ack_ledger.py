"""The read side's acknowledgement rules, without sockets: `AckLedger` across connections and QoS 2."""

from __future__ import annotations

import pytest

from tdmq_beam.mqtt import codec
from tdmq_beam.mqtt.ack_ledger import AckLedger
from tdmq_beam.mqtt.codec import PacketType, Prop, ProtocolError


def publish(packet_id: int, qos: int = 1, topic: str = "t/a", dup: bool = False, **props) -> codec.Publish:
    return codec.Publish(topic, f"p{packet_id}".encode(), qos, False, dup, packet_id, dict(props))


def acks(data: bytes, level: int = 5) -> list[tuple[int, int]]:
    """(packet type, packet id) of each acknowledgement in ``data``."""
    return [
        (first >> 4, codec.decode_packet_id(body, level).packet_id)
        for first, body, _ in codec.PacketFramer().feed(data)
    ]


def receive(ledger: AckLedger, *packet_ids: int, qos: int = 1) -> None:
    for packet_id in packet_ids:
        ledger.receive(publish(packet_id, qos), now=0.0, wall_time=1.0)


def hand_out(ledger: AckLedger, count: int) -> list[int]:
    return [ledger.hand_out().packet.packet_id for _ in range(count)]  # type: ignore[union-attr]


def test_acknowledges_in_order_only_what_was_handed_out():
    ledger = AckLedger(5)
    ledger.connection_opened("A")
    receive(ledger, 1, 2, 3, 4)
    assert hand_out(ledger, 2) == [1, 2]
    # A mark past what was handed out still acknowledges only what was handed out.
    done = ledger.acknowledge("A", 99, now=0.0)
    assert acks(done.data) == [(PacketType.PUBACK, 1), (PacketType.PUBACK, 2)]
    assert done.count == 2 and not done.stale
    assert ledger.unacknowledged == 2
    assert ledger.acknowledge("A", ledger.handed_out, now=0.0).count == 0  # nothing twice


def test_a_mark_of_an_ended_connection_acknowledges_nothing_on_the_new_one():
    # The lost-message case of issue 17: 50 queued, the connection drops, a new one
    # redelivers them with new packet ids; an acknowledgement naming the old one must
    # not acknowledge the new connection's messages that were never handed out.
    ledger = AckLedger(5)
    ledger.connection_opened("A")
    receive(ledger, *range(1, 51))
    hand_out(ledger, 50)
    mark = (ledger.generation, ledger.handed_out)
    ledger.connection_closed()
    ledger.connection_opened("B")
    receive(ledger, *range(101, 151))
    assert ledger.acknowledge(*mark, now=0.0).stale
    assert ledger.unacknowledged == 50
    hand_out(ledger, 1)
    done = ledger.acknowledge(ledger.generation, ledger.handed_out, now=0.0)
    assert acks(done.data) == [(PacketType.PUBACK, 101)]
    assert ledger.unacknowledged == 49  # the broker still holds them


def test_a_mark_cut_across_a_reconnect_names_no_message_of_the_new_connection():
    ledger = AckLedger(5)
    ledger.connection_opened("A")
    receive(ledger, 1, 2)
    hand_out(ledger, 2)
    ledger.connection_closed()
    ledger.connection_opened("B")  # before the mark is cut: it names B with A's last sequence
    receive(ledger, 7, 8)
    assert ledger.acknowledge("B", 2, now=0.0).count == 0


def test_deliveries_of_an_ended_connection_are_not_handed_out():
    ledger = AckLedger(5)
    ledger.connection_opened("A")
    receive(ledger, 1, 2)
    ledger.connection_closed()
    assert ledger.hand_out() is None and ledger.ready == 0
    ledger.connection_opened("B")
    receive(ledger, 5)
    assert hand_out(ledger, 1) == [5]


def test_resumes_decides_when_the_broker_must_send_again():
    ledger = AckLedger(5)
    assert ledger.resumes("", 0)  # a first start
    ledger.connection_opened("A")
    receive(ledger, 1, 2, 3)
    assert ledger.resumes("", 0)  # nothing handed out yet
    hand_out(ledger, 2)
    assert ledger.resumes("A", ledger.handed_out)  # exactly where it stands
    assert not ledger.resumes("A", 1)  # message 2 went to a bundle that failed
    assert not ledger.resumes("", 0)
    ledger.connection_closed()
    assert ledger.resumes("A", 1)  # the next connection sends 2 and 3 again anyway
    ledger.connection_opened("B")
    receive(ledger, 9)
    assert ledger.resumes("A", 1)
    hand_out(ledger, 1)
    assert not ledger.resumes("A", 1)


def test_qos2_completion_outlives_the_connection():
    ledger = AckLedger(5)
    ledger.connection_opened("A")
    receive(ledger, 1, 2, qos=2)
    hand_out(ledger, 2)
    done = ledger.acknowledge("A", ledger.handed_out, now=0.0)
    assert acks(done.data) == [(PacketType.PUBREC, 1), (PacketType.PUBREC, 2)]
    assert ledger.owes_completion
    assert acks(ledger.release(1)) == [(PacketType.PUBCOMP, 1)]
    ledger.connection_closed()
    ledger.connection_opened("B")
    assert ledger.owes_completion  # the broker sends PUBREL 2 again on the new connection
    assert acks(ledger.release(2)) == [(PacketType.PUBCOMP, 2)]
    assert not ledger.owes_completion


def test_a_qos2_message_sent_again_is_a_delivery_to_commit_not_one_to_complete():
    ledger = AckLedger(5)
    ledger.connection_opened("A")
    receive(ledger, 4, qos=2)
    hand_out(ledger, 1)
    ledger.acknowledge("A", ledger.handed_out, now=0.0)  # the PUBREC is lost with the connection
    ledger.connection_closed()
    ledger.connection_opened("B")
    ledger.receive(publish(4, qos=2, dup=True), now=0.0, wall_time=1.0)
    assert not ledger.owes_completion and ledger.unacknowledged == 1


def test_an_unknown_pubrel_is_still_completed():
    # A PUBREC sent by an earlier process: the message was committed, so the answer is success.
    ledger = AckLedger(4)
    ledger.connection_opened("A")
    data = ledger.release(77)
    assert acks(data, 4) == [(PacketType.PUBCOMP, 77)] and data == codec.encode_ack(PacketType.PUBCOMP, 77, 0, 4)


def test_topic_aliases_are_resolved_per_connection():
    ledger = AckLedger(5, topic_alias_maximum=10)
    ledger.connection_opened("A")
    first = codec.Publish("dev/7/tele", b"x", 1, False, False, 1, {Prop.TOPIC_ALIAS: 3})
    second = codec.Publish("", b"y", 1, False, False, 2, {Prop.TOPIC_ALIAS: 3})
    ledger.receive(first, 0.0, 1.0)
    ledger.receive(second, 0.0, 1.0)
    assert second.topic == "dev/7/tele" and Prop.TOPIC_ALIAS not in second.properties
    ledger.connection_closed()
    ledger.connection_opened("B")
    with pytest.raises(ProtocolError, match="never defined"):
        ledger.receive(codec.Publish("", b"z", 1, False, False, 3, {Prop.TOPIC_ALIAS: 3}), 0.0, 1.0)
    with pytest.raises(ProtocolError, match=r"outside 1\.\.10"):
        ledger.receive(codec.Publish("a", b"z", 1, False, False, 4, {Prop.TOPIC_ALIAS: 11}), 0.0, 1.0)
    with pytest.raises(ProtocolError, match="without a topic"):
        ledger.receive(codec.Publish("", b"z", 1, False, False, 5, {}), 0.0, 1.0)


def test_mqtt_3_1_1_acknowledgements_have_no_reason_code():
    ledger = AckLedger(4)
    ledger.connection_opened("A")
    receive(ledger, 9)
    hand_out(ledger, 1)
    assert ledger.acknowledge("A", ledger.handed_out, now=0.0).data == b"\x40\x02\x00\x09"


def test_a_message_not_expected_is_acknowledged_in_its_place_never_handed_out():
    ledger = AckLedger(5, topic_alias_maximum=4)
    ledger.connection_opened("A")
    wanted = lambda topic: topic.startswith("t/")  # noqa: E731
    assert ledger.receive(publish(1, topic="t/a"), now=0.0, wall_time=1.0, expected=wanted) is not None
    assert ledger.receive(publish(2, topic="other/x"), now=0.0, wall_time=1.0, expected=wanted) is None
    # An alias is resolved before the test: an aliased stray is a stray too.
    aliased = codec.Publish("other/y", b"y", 1, False, False, 3, {Prop.TOPIC_ALIAS: 1})
    ledger.receive(aliased, now=0.0, wall_time=1.0, expected=wanted)
    again = codec.Publish("", b"z", 1, False, False, 4, {Prop.TOPIC_ALIAS: 1})
    assert ledger.receive(again, now=0.0, wall_time=1.0, expected=wanted) is None
    ledger.receive(publish(5, topic="t/b"), now=0.0, wall_time=1.0, expected=wanted)
    assert hand_out(ledger, 2) == [1, 5] and ledger.hand_out() is None
    # Acknowledging through the last one handed out acknowledges the strays between, in order.
    through = ledger.handed_out
    assert acks(ledger.acknowledge("A", through, now=0.0).data) == [(PacketType.PUBACK, i) for i in (1, 2, 3, 4, 5)]
