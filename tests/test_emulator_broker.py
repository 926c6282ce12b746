"""The emulator's MQTT broker, driven by paho-mqtt (3.1.1 and 5) and by raw sockets."""

from __future__ import annotations

import json
import struct
import time

import pytest
from mqtt_peers import PahoClient, RawClient, connect_packet, packet, subscribe_packet
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tdmq_beam.emulator.config import Acl
from tdmq_beam.testing import TdmqEmulator

PROTOCOLS = [4, 5]


def _props(**values) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props


# -- connecting ------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_connect_checks_credentials(emulator, protocol, unique):
    ok = PahoClient(emulator.mqtt_port, unique("c"), protocol=protocol)
    assert not ok.connect()[1].is_failure
    ok.disconnect()
    for username, password in (("user0", "wrong"), ("nobody", "secret0"), (None, None)):
        client = PahoClient(emulator.mqtt_port, unique("c"), protocol=protocol, username=username, password=password)
        _flags, rc, _props = client.connect()
        assert rc.is_failure
        assert rc.getName() == "Bad user name or password", rc
        client.disconnect()


def test_anonymous_only_when_allowed(unique):
    with TdmqEmulator(allow_anonymous=True) as open_emulator:
        client = PahoClient(open_emulator.mqtt_port, unique("anon"), username=None)
        assert not client.connect()[1].is_failure
        client.disconnect()


def test_unsupported_protocol_level_is_refused(emulator):
    raw = RawClient(emulator.mqtt_port)
    raw.send(packet(0x10, b"\x00\x04MQTT\x07\x02\x00\x3c\x00\x01x"))
    connack = raw.read()
    assert connack.type == 2 and connack.body[1] == 0x01
    assert raw.read() is None


def test_zero_length_client_id(emulator):
    client = PahoClient(emulator.mqtt_port, "", protocol=5)
    _flags, rc, props = client.connect()
    assert not rc.is_failure
    assigned = props.AssignedClientIdentifier
    assert assigned
    assert assigned in emulator.online_clients()
    client.disconnect()

    v311 = PahoClient(emulator.mqtt_port, "", protocol=4, clean=True)
    assert not v311.connect()[1].is_failure
    v311.disconnect()

    raw = RawClient(emulator.mqtt_port)
    raw.send(connect_packet("", clean=False))
    connack = raw.read()
    assert connack.body == b"\x00\x02"  # identifier rejected


def test_user_without_connect_permission_is_refused(unique):
    acl = Acl.from_json({"rules": [{"user": "blocked", "action": "connect", "permission": "deny"}]})
    with TdmqEmulator(users={"user0": "secret0", "blocked": "pw"}, acl=acl) as emu:
        client = PahoClient(emu.mqtt_port, unique("c"), username="blocked", password="pw", protocol=5)
        assert client.connect()[1].value == 0x87
        client.disconnect()


# -- publish and subscribe ------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_and_receive_at_each_qos(paho, protocol, qos, unique):
    topic = unique("qos") + "/x"
    subscriber = paho(unique("sub"), protocol=protocol)
    assert subscriber.subscribe(topic, qos) == [qos]
    publisher = paho(unique("pub"), protocol=protocol)
    for index in range(5):
        publisher.publish(topic, f"m{index}".encode(), qos=qos)
    received = subscriber.receive(5)
    assert [m.payload for m in received] == [f"m{i}".encode() for i in range(5)]
    assert {m.qos for m in received} == {qos}
    assert subscriber.nothing_more()


def test_wildcards_and_dollar_topics(paho, unique):
    base = unique("wild")
    plus = paho(unique("s"))
    plus.subscribe(f"{base}/+/state", 0)
    hash_all = paho(unique("s"))
    hash_all.subscribe("#", 0)
    publisher = paho(unique("p"))
    publisher.publish(f"{base}/dev1/state", b"a")
    publisher.publish(f"{base}/dev1/other", b"b")
    publisher.publish(f"{base}/dev1/state/deeper", b"c")
    assert [m.payload for m in plus.receive(1)] == [b"a"]
    assert plus.nothing_more()
    seen = set()
    deadline = time.monotonic() + 5
    while len(seen) < 3 and time.monotonic() < deadline:
        message = hash_all.receive(1)[0]
        assert not message.topic.startswith("$"), message.topic  # '#' never matches $-topics
        if message.topic.startswith(base):
            seen.add(message.payload)
    assert seen == {b"a", b"b", b"c"}


def test_overlapping_subscriptions_deliver_one_copy_at_highest_qos(paho, unique):
    base = unique("overlap")
    subscriber = paho(unique("s"))
    subscriber.subscribe(f"{base}/+", 0)
    subscriber.subscribe(f"{base}/#", 2)
    subscriber.subscribe(f"{base}/a", 1)
    paho(unique("p")).publish(f"{base}/a", b"once", qos=2)
    message = subscriber.receive(1)[0]
    assert message.qos == 2
    assert subscriber.nothing_more()


def test_retained_messages(paho, unique):
    topic = unique("retained") + "/state"
    publisher = paho(unique("p"))
    publisher.publish(topic, b"first", qos=1, retain=True)
    publisher.publish(topic, b"second", qos=1, retain=True)
    late = paho(unique("s"))
    late.subscribe(topic, 1)
    message = late.receive(1)[0]
    assert (message.payload, message.retain) == (b"second", True)
    publisher.publish(topic, b"live", qos=1, retain=True)
    live = late.receive(1)[0]
    assert (live.payload, live.retain) == (b"live", False)  # to existing subscribers: retain flag cleared
    publisher.publish(topic, b"", qos=1, retain=True)  # clears
    assert late.receive(1)[0].payload == b""
    later = paho(unique("s"))
    later.subscribe(topic, 1)
    assert later.nothing_more()


def test_mqtt5_properties_forwarded_unchanged(paho, unique):
    topic = unique("props")
    subscriber = paho(unique("s"))
    subscriber.subscribe(topic, 1)
    props = _props(
        PayloadFormatIndicator=1,
        ContentType="application/json",
        ResponseTopic="reply/here",
        CorrelationData=b"\x00\x01corr",
        MessageExpiryInterval=3600,
    )
    props.UserProperty = ("k", "v1")
    props.UserProperty = ("a", "x")
    props.UserProperty = ("k", "v2")
    paho(unique("p")).publish(topic, b'{"on": true}', qos=1, properties=props)
    got = subscriber.receive(1)[0].properties
    assert got.PayloadFormatIndicator == 1
    assert got.ContentType == "application/json"
    assert got.ResponseTopic == "reply/here"
    assert got.CorrelationData == b"\x00\x01corr"
    assert 3599 <= got.MessageExpiryInterval <= 3600
    assert got.UserProperty == [("k", "v1"), ("a", "x"), ("k", "v2")]


def test_suback_failure_for_filters_the_acl_denies(unique):
    acl = Acl.from_json({"rules": [{"user": "*", "action": "subscribe", "topic": "secret/#", "permission": "deny"}]})
    with TdmqEmulator(acl=acl) as emu:
        for protocol in PROTOCOLS:
            client = PahoClient(emu.mqtt_port, unique("c"), protocol=protocol)
            client.connect()
            assert client.subscribe("secret/+/x", 1) == [0x80]
            assert client.subscribe("open/x", 1) == [1]
            client.disconnect()


def test_publish_outside_acl_is_not_delivered(unique):
    acl = Acl.from_json({"rules": [{"user": "user0", "action": "publish", "topic": "ro/#", "permission": "deny"}]})
    with TdmqEmulator(acl=acl) as emu:
        subscriber = PahoClient(emu.mqtt_port, unique("s"))
        subscriber.connect()
        subscriber.subscribe("#", 1)
        publisher = PahoClient(emu.mqtt_port, unique("p"))
        publisher.connect()
        publisher.publish("ro/x", b"denied", qos=1)
        publisher.publish("rw/x", b"allowed", qos=1)
        assert [m.payload for m in subscriber.receive(1)] == [b"allowed"]
        assert subscriber.nothing_more()
        subscriber.disconnect()
        publisher.disconnect()


# -- sessions ---------------------------------------------------------------------------


def test_persistent_session_v311_queues_while_offline(paho, unique):
    client_id = unique("persist")
    topic = unique("t")
    first = paho(client_id, protocol=4, clean=False)
    first.subscribe(topic, 1)
    first.disconnect()
    publisher = paho(unique("p"))
    for index in range(3):
        publisher.publish(topic, f"q{index}".encode(), qos=1)
    publisher.publish(topic, b"qos0-dropped", qos=0)
    again = PahoClient(first.port, client_id, protocol=4, clean=False)
    flags, _rc, _ = again.connect()
    assert flags.session_present
    assert [m.payload for m in again.receive(3)] == [b"q0", b"q1", b"q2"]
    assert again.nothing_more()
    again.disconnect()


def test_session_expiry_interval_v5(paho, unique):
    client_id = unique("expiry")
    short = paho(client_id, protocol=5, clean=True, session_expiry=1)
    short.subscribe("x/" + client_id, 1)
    short.disconnect()
    time.sleep(1.6)
    again = PahoClient(short.port, client_id, protocol=5, clean=False, session_expiry=60)
    flags, _, _ = again.connect()
    assert not flags.session_present  # expired after 1 s
    # DISCONNECT carrying a session expiry of 0 ends the session at once.
    props = Properties(PacketTypes.DISCONNECT)
    props.SessionExpiryInterval = 0
    again.disconnect(properties=props)
    third = PahoClient(short.port, client_id, protocol=5, clean=False, session_expiry=60)
    flags, _, _ = third.connect()
    assert not flags.session_present
    third.disconnect()
    fourth = PahoClient(short.port, client_id, protocol=5, clean=False, session_expiry=60)
    assert fourth.connect()[0].session_present  # kept: the session said 60 s
    fourth.disconnect()


def test_inflight_messages_are_redelivered_with_dup_after_reconnect(emulator, paho, unique):
    client_id = unique("inflight")
    topic = unique("t")
    raw = RawClient(emulator.mqtt_port)
    raw.send(connect_packet(client_id, clean=False))
    assert raw.read().body == b"\x00\x00"
    raw.send(subscribe_packet(1, topic, 1))
    assert raw.read().type == 9
    paho(unique("p")).publish(topic, b"unacked", qos=1)
    first = raw.read()
    assert first.type == 3 and not first.first & 0x08
    raw.close()  # no PUBACK

    again = RawClient(emulator.mqtt_port)
    again.send(connect_packet(client_id, clean=False))
    assert again.read().body == b"\x01\x00"  # session present, accepted
    redelivered = again.read()
    assert redelivered.type == 3 and redelivered.first & 0x08  # DUP
    assert redelivered.body.endswith(b"unacked")
    packet_id = redelivered.body[2 + len(topic) : 4 + len(topic)]
    again.send(packet(0x40, packet_id))  # PUBACK
    again.send(packet(0xE0, b""))
    again.close()


def test_message_expiry_counts_down_while_queued(paho, unique):
    client_id = unique("exp")
    topic = unique("t")
    subscriber = paho(client_id, protocol=5, clean=True, session_expiry=300)
    subscriber.subscribe(topic, 1)
    subscriber.disconnect()
    publisher = paho(unique("p"))
    publisher.publish(topic, b"short", qos=1, properties=_props(MessageExpiryInterval=1))
    publisher.publish(topic, b"long", qos=1, properties=_props(MessageExpiryInterval=60))
    time.sleep(2.2)
    again = PahoClient(subscriber.port, client_id, protocol=5, clean=False, session_expiry=300)
    again.connect()
    message = again.receive(1)[0]
    assert message.payload == b"long"
    assert 55 <= message.properties.MessageExpiryInterval <= 58
    assert again.nothing_more()
    again.disconnect()


# -- wills, keep-alive, takeover -----------------------------------------------------------


def test_will_published_on_abnormal_close_only(paho, unique):
    will_topic = unique("will")
    watcher = paho(unique("w"))
    watcher.subscribe(will_topic, 1)
    crashing = paho(unique("c"), will=(will_topic, b"gone", 1, False))
    crashing.drop()
    assert watcher.receive(1)[0].payload == b"gone"
    polite = paho(unique("c"), will=(will_topic, b"should-not-appear", 1, False))
    polite.disconnect()
    assert watcher.nothing_more()


def test_keepalive_enforced_at_one_and_a_half_times(emulator, paho, unique):
    will_topic = unique("will")
    events = paho(unique("ev"))
    events.subscribe("$events/client_disconnected", 0)
    watcher = paho(unique("w"))
    watcher.subscribe(will_topic, 1)
    client_id = unique("silent")
    raw = RawClient(emulator.mqtt_port)
    started = time.monotonic()
    raw.send(connect_packet(client_id, keepalive=1, will=(will_topic, b"timed-out")))
    assert raw.read().type == 2
    assert raw.closed_by_server(timeout=5)
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 3.0
    assert watcher.receive(1)[0].payload == b"timed-out"
    reasons = {}
    while client_id not in reasons:
        event = json.loads(events.receive(1)[0].payload)
        reasons[event["clientid"]] = event["reason"]
    assert reasons[client_id] == "keepalive_timeout"


def test_pings_keep_a_connection_alive(emulator, unique):
    raw = RawClient(emulator.mqtt_port)
    raw.send(connect_packet(unique("pinger"), keepalive=1))
    assert raw.read().type == 2
    for _ in range(4):
        time.sleep(0.6)
        raw.send(packet(0xC0, b""))
        assert raw.read().type == 13  # PINGRESP
    raw.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_id_takeover(paho, protocol, unique):
    client_id = unique("dup")
    events = paho(unique("ev"))
    events.subscribe("$events/client_disconnected", 0)
    first = paho(client_id, protocol=protocol)
    paho(client_id, protocol=protocol)
    first.disconnects.get(timeout=5)
    event = json.loads(events.receive(1)[0].payload)
    assert (event["clientid"], event["reason"]) == (client_id, "takeovered")


# -- events ----------------------------------------------------------------------------------


def test_client_events(paho, unique):
    events = paho(unique("ev"))
    events.subscribe("$events/#", 0)
    client_id = unique("evented")
    client = paho(client_id, protocol=5)
    client.subscribe("some/filter", 1)
    client.client.unsubscribe("some/filter")
    time.sleep(0.2)
    client.disconnect()
    seen = {}
    deadline = time.monotonic() + 5
    while len(seen) < 4 and time.monotonic() < deadline:
        message = events.receive(1)[0]
        event = json.loads(message.payload)
        if event["clientid"] == client_id:
            seen[message.topic] = event
    connected = seen["$events/client_connected"]
    assert connected["event"] == "client.connected"
    assert connected["username"] == "user0"
    assert connected["proto_ver"] == 5 and connected["keepalive"] == 60 and connected["clean_start"] is True
    assert connected["connected_at"] > 0 and connected["timestamp"] > 0 and ":" in connected["node"]
    assert seen["$events/session_subscribed"]["topic"] == "some/filter"
    assert seen["$events/session_unsubscribed"]["topic"] == "some/filter"
    disconnected = seen["$events/client_disconnected"]
    assert disconnected["event"] == "client.disconnected" and disconnected["reason"] == "normal"
    assert disconnected["disconnected_at"] > 0 and ":" in disconnected["peername"]


# -- robustness ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x30\x03\x00\x05a",  # PUBLISH before CONNECT
        b"\x10\xff\xff\xff\xff\x7f",  # remaining length of 5 bytes
        packet(0x10, b"\x00\x04MQTT\x04\x03\x00\x3c\x00\x01x"),  # reserved CONNECT flag
        packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x05\xff\xfe\xfd\xfc\xfb"),  # bad UTF-8
    ],
)
def test_malformed_packet_closes_only_that_connection(emulator, paho, garbage, unique):
    bystander = paho(unique("ok"))
    topic = unique("t")
    bystander.subscribe(topic, 1)
    raw = RawClient(emulator.mqtt_port)
    raw.send(garbage)
    assert raw.closed_by_server(timeout=5)
    paho(unique("p")).publish(topic, b"still-serving", qos=1)
    assert bystander.receive(1)[0].payload == b"still-serving"


def test_malformed_packet_after_connect_closes_and_sends_will(emulator, paho, unique):
    will_topic = unique("will")
    watcher = paho(unique("w"))
    watcher.subscribe(will_topic, 1)
    raw = RawClient(emulator.mqtt_port)
    raw.send(connect_packet(unique("bad"), will=(will_topic, b"bye")))
    assert raw.read().type == 2
    raw.send(packet(0x82, struct.pack(">H", 1) + b"\x00\x01a\x03"))  # SUBSCRIBE with QoS 3
    assert raw.closed_by_server(timeout=5)
    assert watcher.receive(1)[0].payload == b"bye"


def test_packets_over_the_maximum_size_are_refused(unique):
    with TdmqEmulator(max_packet_size=1024) as emu:
        raw = RawClient(emu.mqtt_port)
        raw.send(connect_packet(unique("big")))
        assert raw.read().type == 2
        raw.send(packet(0x30, b"\x00\x01a" + b"x" * 2000))
        assert raw.closed_by_server(timeout=5)


def test_a_session_belongs_to_its_user(unique):
    """Another user can neither resume a session (and read what it holds), take over its live
    connection, nor end it with a clean start; its own user can."""
    acl = Acl.from_json({"rules": [{"user": "intruder", "action": "subscribe", "topic": "secret/#",
                                    "permission": "deny"}]})  # fmt: skip
    with TdmqEmulator(users={"user0": "secret0", "intruder": "pw"}, acl=acl) as emu:
        for protocol in PROTOCOLS:
            victim_id = unique("victim")
            victim = PahoClient(emu.mqtt_port, victim_id, protocol=protocol, clean=False, session_expiry=600)
            victim.connect()
            victim.subscribe("secret/#", 1)
            for clean in (False, True):  # taking over the live connection, resuming or ending the session
                intruder = PahoClient(emu.mqtt_port, victim_id, protocol=protocol, username="intruder",
                                      password="pw", clean=clean, session_expiry=600)  # fmt: skip
                _flags, rc, _props = intruder.connect()
                assert rc.is_failure and rc.value in (0x87, 5), rc  # Not authorized (MQTT 5 / 3.1.1)
                intruder.drop()
            victim.disconnect()
            publisher = PahoClient(emu.mqtt_port, unique("pub"), protocol=5)
            publisher.connect()
            publisher.publish("secret/plan", b"for the victim only", qos=1)
            publisher.disconnect()
            intruder = PahoClient(emu.mqtt_port, victim_id, protocol=protocol, username="intruder", password="pw",
                                  clean=False, session_expiry=600)  # fmt: skip
            assert intruder.connect()[1].is_failure
            assert intruder.nothing_more()
            intruder.drop()
            back = PahoClient(emu.mqtt_port, victim_id, protocol=protocol, clean=False, session_expiry=600)
            assert not back.connect()[1].is_failure
            assert [m.payload for m in back.receive(1)] == [b"for the victim only"]  # still the victim's
            back.disconnect()


# -- bounds: connections, session lifetime, retained bytes, slow subscribers -----------------


def test_connections_past_the_limit_are_refused_but_a_takeover_is_not(unique):
    with TdmqEmulator(max_connections=2) as emu:
        first = PahoClient(emu.mqtt_port, unique("a"))
        first.connect()
        second = PahoClient(emu.mqtt_port, unique("b"), protocol=4)
        second.connect()
        for protocol, name in ((5, "Quota exceeded"), (4, "Server unavailable")):  # 3.1.1: return code 3
            third = PahoClient(emu.mqtt_port, unique("c"), protocol=protocol)
            rc = third.connect()[1]
            assert rc.is_failure and rc.getName() == name, rc
            third.drop()
        again = PahoClient(emu.mqtt_port, first.client._client_id.decode())  # takes the first's place
        assert not again.connect()[1].is_failure
        again.disconnect()
        second.disconnect()


def test_connections_from_one_address_are_capped_when_asked(unique):
    with TdmqEmulator(max_connections_per_address=1) as emu:
        first = PahoClient(emu.mqtt_port, unique("a"))
        first.connect()
        second = PahoClient(emu.mqtt_port, unique("b"))
        rc = second.connect()[1]
        assert rc.is_failure and rc.getName() == "Quota exceeded", rc
        second.drop()
        first.disconnect()


def test_sessions_expire_after_the_cap_mqtt_3_1_1_ones_too(unique):
    with TdmqEmulator(max_session_expiry=1) as emu:
        v5_id, v3_id = unique("v5"), unique("v3")
        v5 = PahoClient(emu.mqtt_port, v5_id, clean=False, session_expiry=600)
        _flags, rc, props = v5.connect()
        assert not rc.is_failure and props.SessionExpiryInterval == 1  # told in CONNACK
        v3 = PahoClient(emu.mqtt_port, v3_id, protocol=4, clean=False)
        v3.connect()
        v5.disconnect()
        v3.disconnect()
        time.sleep(0.3)
        assert emu.session_state(v3_id) is not None
        deadline = time.monotonic() + 5
        while (emu.session_state(v5_id) or emu.session_state(v3_id)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert emu.session_state(v5_id) is None and emu.session_state(v3_id) is None


def test_retained_messages_are_bounded_in_bytes(unique):
    with TdmqEmulator(max_retained_bytes=10) as emu:
        publisher = PahoClient(emu.mqtt_port, unique("p"))
        publisher.connect()
        publisher.publish("keep/a", b"12345678", qos=1, retain=True)
        publisher.publish("keep/b", b"abcdefgh", qos=1, retain=True)  # would pass 10 bytes: not retained
        publisher.publish("keep/a", b"123", qos=1, retain=True)  # replaces a: 3 bytes now
        publisher.publish("keep/c", b"xyz", qos=1, retain=True)
        subscriber = PahoClient(emu.mqtt_port, unique("s"))
        subscriber.connect()
        subscriber.subscribe("keep/#", 1)
        got = sorted((m.topic, m.payload) for m in subscriber.receive(2))
        assert got == [("keep/a", b"123"), ("keep/c", b"xyz")] and subscriber.nothing_more()
        assert emu.stats()["messages"]["retained_refused_full"] == 1
        publisher.disconnect()
        subscriber.disconnect()


def test_a_subscriber_that_does_not_read_cannot_grow_the_brokers_memory(unique):
    with TdmqEmulator(max_write_buffer=256 * 1024) as emu:
        stalled = RawClient(emu.mqtt_port)  # subscribes, then never reads
        stalled.send(connect_packet(unique("stalled")))
        assert stalled.read().type == 2
        stalled.send(subscribe_packet(1, "flood/#", 0))
        assert stalled.read().type == 9
        publisher = PahoClient(emu.mqtt_port, unique("p"))
        publisher.connect()
        kilobytes = b"k" * 16 * 1024
        for i in range(1500):  # 24 MiB at QoS 0: far more than the socket buffers hold
            publisher.publish(f"flood/{i}", kilobytes, qos=0)
        deadline = time.monotonic() + 20
        while emu.stats()["messages"]["messages_dropped_slow_subscriber"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert emu.stats()["messages"]["messages_dropped_slow_subscriber"] > 0
        publisher.disconnect()
        stalled.close()


def test_what_waits_for_an_absent_client_is_bounded_in_bytes(unique):
    with TdmqEmulator(max_queued_bytes=3000) as emu:
        client_id, topic = unique("away"), unique("q")
        away = PahoClient(emu.mqtt_port, client_id, clean=False, session_expiry=600)
        away.connect()
        away.subscribe(f"{topic}/#", 1)
        away.disconnect()
        publisher = PahoClient(emu.mqtt_port, unique("p"))
        publisher.connect()
        for i in range(5):
            publisher.publish(f"{topic}/{i}", bytes([48 + i]) * 1000, qos=1)  # 5,000 bytes for 3,000 of room
        publisher.disconnect()
        back = PahoClient(emu.mqtt_port, client_id, clean=False, session_expiry=600)
        back.connect()
        assert [m.topic for m in back.receive(3)] == [f"{topic}/{i}" for i in (2, 3, 4)] and back.nothing_more()
        assert emu.stats()["messages"]["messages_dropped_queue_full"] == 2
        back.disconnect()
