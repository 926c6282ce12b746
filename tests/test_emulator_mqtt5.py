"""The emulator's MQTT 5 server features, each checked from a real peer: paho-mqtt (3.1.1 and 5) and raw
sockets whose properties paho packs and reads."""

from __future__ import annotations

import json
import queue
import time

import pytest
from mqtt_peers import (
    PahoClient,
    RawClient,
    ack_packet,
    connect5_packet,
    connect_packet,
    packet,
    properties,
    publish5_packet,
    read_publish5,
    read_reason,
    subscribe5_packet,
    subscribe_packet,
)
from paho.mqtt.client import SubscribeOptions
from paho.mqtt.packettypes import PacketTypes
from polling import eventually

from tdmq_beam.emulator.config import Acl
from tdmq_beam.testing import TdmqEmulator

PROTOCOLS = [4, 5]


def raw5(port: int, client_id: str, **options) -> tuple[RawClient, int, object]:
    """A raw MQTT 5 client, connected; returns (client, CONNACK flags byte, CONNACK properties)."""
    raw = RawClient(port)
    raw.send(connect5_packet(client_id, **options))
    connack = raw.read()
    assert connack.type == 2, connack
    code, props = read_reason(connack, PacketTypes.CONNACK, 1)
    assert code == 0, hex(code)
    return raw, connack.body[0], props


def _drain(client: PahoClient, wait: float = 0.6) -> list:
    """Every message ``client`` receives until it has been quiet for ``wait`` seconds."""
    out = []
    while True:
        try:
            out.append(client.messages.get(timeout=wait))
        except queue.Empty:
            return out


# -- CONNACK ----------------------------------------------------------------------------------


def test_connack_announces_what_the_broker_offers(emulator, unique):
    raw, _flags, props = raw5(emulator.mqtt_port, unique("c"), RequestResponseInformation=1)
    assert props.SharedSubscriptionAvailable == 1
    assert props.RetainAvailable == 1
    assert props.WildcardSubscriptionAvailable == 1
    assert props.SubscriptionIdentifierAvailable == 1
    assert props.ReceiveMaximum == 16
    assert props.MaximumPacketSize == emulator.config.max_packet_size
    assert props.TopicAliasMaximum == emulator.config.topic_alias_maximum
    assert props.ResponseInformation  # asked for with Request Response Information
    assert not hasattr(props, "ServerKeepAlive")  # the client's own keep-alive stands
    raw.close()


def test_server_keep_alive_caps_the_clients(unique):
    with TdmqEmulator(max_keepalive=30) as emu:
        client = PahoClient(emu.mqtt_port, unique("c"), protocol=5, keepalive=60)
        _flags, rc, props = client.connect()
        assert not rc.is_failure and props.ServerKeepAlive == 30
        client.disconnect()
        raw, _flags, props = raw5(emu.mqtt_port, unique("c"), keepalive=0)
        assert props.ServerKeepAlive == 30  # keep-alive 0 asked, 30 imposed
        raw.close()
        client = PahoClient(emu.mqtt_port, unique("c"), protocol=5, keepalive=20)
        _flags, rc, props = client.connect()
        assert not hasattr(props, "ServerKeepAlive")
        client.disconnect()


def test_server_keep_alive_is_enforced(unique):
    with TdmqEmulator(max_keepalive=1) as emu:
        raw, _flags, props = raw5(emu.mqtt_port, unique("c"), keepalive=60)
        assert props.ServerKeepAlive == 1
        started = time.monotonic()
        disconnect = raw.read(timeout=5)
        assert disconnect.type == 14 and disconnect.body[0] == 0x8D  # keep-alive timeout
        assert 1.4 <= time.monotonic() - started < 3.5


# -- shared subscriptions -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shared_subscription_splits_messages_round_robin(paho, protocol, unique):
    topic = unique("shared") + "/telemetry"
    group = unique("g")
    members = [paho(unique("m"), protocol=protocol) for _ in range(3)]
    for member in members:
        assert member.subscribe(f"$share/{group}/{topic.split('/')[0]}/+", 1) == [1]
    ordinary = paho(unique("o"), protocol=protocol)
    ordinary.subscribe(topic, 1)
    publisher = paho(unique("p"))
    for index in range(30):
        publisher.publish(topic, f"m{index}".encode(), qos=1)
    everyone = ordinary.receive(30)
    assert [m.payload for m in everyone] == [f"m{i}".encode() for i in range(30)]  # unaffected by the group
    shares = [_drain(member) for member in members]
    payloads = [m.payload for share in shares for m in share]
    assert sorted(payloads) == sorted(f"m{i}".encode() for i in range(30))  # each message once
    assert [len(share) for share in shares] == [10, 10, 10]  # round robin


def test_shared_and_ordinary_subscription_of_one_client_get_a_copy_each(paho, unique):
    topic = unique("both")
    client = paho(unique("c"))
    client.subscribe(topic, 1)
    client.subscribe(f"$share/{unique('g')}/{topic}", 1)
    paho(unique("p")).publish(topic, b"x", qos=1)
    assert [m.payload for m in client.receive(2)] == [b"x", b"x"]


def test_shared_messages_skip_members_with_a_full_window(emulator, paho, unique):
    topic = unique("window")
    group = unique("g")
    # A raw member that never acknowledges, with room for 2 unacknowledged messages.
    slow, _flags, _props = raw5(emulator.mqtt_port, unique("slow"), ReceiveMaximum=2)
    slow.send(subscribe5_packet(1, [(f"$share/{group}/{topic}", 1)]))
    assert slow.read().type == 9
    fast = paho(unique("fast"))
    fast.subscribe(f"$share/{group}/{topic}", 1)
    publisher = paho(unique("p"))
    for index in range(10):
        publisher.publish(topic, f"m{index}".encode(), qos=1)
    fast_got = [m.payload for m in _drain(fast)]
    slow_got = [read_publish5(slow.read(timeout=2)).payload for _ in range(2)]
    assert slow.quiet(0.5)
    assert sorted(fast_got + slow_got) == sorted(f"m{i}".encode() for i in range(10))
    assert len(slow_got) == 2 and len(fast_got) == 8


def test_unacknowledged_shared_messages_go_to_another_member(emulator, paho, unique):
    topic = unique("handover")
    group = unique("g")
    crashing_id = unique("crash")
    crashing, _flags, _props = raw5(emulator.mqtt_port, crashing_id, clean=False, SessionExpiryInterval=300)
    crashing.send(subscribe5_packet(1, [(f"$share/{group}/{topic}", 1)]))
    assert crashing.read().type == 9
    publisher = paho(unique("p"))
    for index in range(4):
        publisher.publish(topic, f"m{index}".encode(), qos=1)
    received = [read_publish5(crashing.read()) for _ in range(4)]
    crashing.send(ack_packet(4, received[0].packet_id))  # acknowledges only the first
    held = eventually(lambda: emulator.session_state(crashing_id), until=lambda state: state["unacknowledged"] == 3)
    assert held["unacknowledged"] == 3
    crashing.close()  # crashes with three unacknowledged
    survivor = paho(unique("survivor"))
    survivor.subscribe(f"$share/{group}/{topic}", 1)
    assert sorted(m.payload for m in survivor.receive(3)) == [b"m1", b"m2", b"m3"]
    assert survivor.nothing_more()


def test_unacknowledged_shared_messages_return_to_a_resumed_member(emulator, paho, unique):
    topic = unique("resume")
    group = unique("g")
    client_id = unique("only")
    first, _flags, _props = raw5(emulator.mqtt_port, client_id, clean=False, SessionExpiryInterval=300)
    first.send(subscribe5_packet(1, [(f"$share/{group}/{topic}", 1)]))
    assert first.read().type == 9
    publisher = paho(unique("p"))
    publisher.publish(topic, b"kept", qos=1)
    assert read_publish5(first.read()).payload == b"kept"
    first.close()  # no PUBACK, and no other member
    publisher.publish(topic, b"while-away", qos=1)
    again, flags, _props = raw5(emulator.mqtt_port, client_id, clean=False, SessionExpiryInterval=300)
    assert flags & 0x01  # session present
    got = [read_publish5(again.read()) for _ in range(2)]
    assert [p.payload for p in got] == [b"kept", b"while-away"]
    for item in got:
        again.send(ack_packet(4, item.packet_id))
    assert again.quiet(0.5)
    again.close()


def test_shared_subscription_gets_no_retained_messages_and_keeps_its_identifier(paho, unique):
    topic = unique("retained-shared")
    publisher = paho(unique("p"))
    publisher.publish(topic, b"old", qos=1, retain=True)
    member = paho(unique("m"))
    member.client.subscribe(
        f"$share/{unique('g')}/{topic}",
        options=SubscribeOptions(qos=1),
        properties=properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42),
    )
    member.subacks.get(timeout=5)
    assert member.nothing_more()  # no retained message on a shared subscription
    publisher.publish(topic, b"new", qos=1)
    message = member.receive(1)[0]
    assert message.payload == b"new" and message.properties.SubscriptionIdentifier == [42]


def test_shared_subscriptions_in_acl_events_and_cloud_api(unique):
    acl = Acl.from_json({"rules": [{"action": "subscribe", "topic": "secret/#", "permission": "deny"}]})
    with TdmqEmulator(acl=acl) as emu:
        events = PahoClient(emu.mqtt_port, unique("ev"))
        events.connect()
        events.subscribe("$events/session_subscribed", 0)
        client_id = unique("member")
        member = PahoClient(emu.mqtt_port, client_id, protocol=5)
        member.connect()
        assert member.subscribe("$share/g1/secret/x", 1) == [0x80]  # the ACL judges the filter
        assert member.subscribe("$share/g1/open/+", 1) == [1]
        assert member.subscribe("$share//open/x", 1) == [0x8F]  # empty group: invalid filter
        event = json.loads(events.receive(1)[0].payload)
        while event["clientid"] != client_id:  # skip the watcher's own subscription
            event = json.loads(events.receive(1)[0].payload)
        assert event["topic"] == "$share/g1/open/+"
        assert event["subopts"]["share"] == "g1"
        from tdmq_beam.service.client import TdmqClient

        with TdmqClient(emu.connection(), cloud=emu.cloud_config()) as client:
            details = client.describe_client(client_id)
        assert [(s.topic_filter, s.qos) for s in details.subscriptions] == [("$share/g1/open/+", 1)]
        member.disconnect()
        events.disconnect()


def test_no_local_on_a_shared_subscription_is_a_protocol_error(emulator, unique):
    raw, _flags, _props = raw5(emulator.mqtt_port, unique("c"))
    raw.send(subscribe5_packet(1, [(f"$share/g/{unique('t')}", 0x04 | 1)]))
    disconnect = raw.read()
    assert disconnect.type == 14 and disconnect.body[0] == 0x82
    assert raw.read() is None


# -- flow control ------------------------------------------------------------------------------------


def test_receive_maximum_bounds_unacknowledged_messages(emulator, paho, unique):
    topic = unique("flow")
    raw, _flags, _props = raw5(emulator.mqtt_port, unique("c"), ReceiveMaximum=3)
    raw.send(subscribe5_packet(1, [(topic, 1)]))
    assert raw.read().type == 9
    publisher = paho(unique("p"))
    for index in range(8):
        publisher.publish(topic, f"m{index}".encode(), qos=1)
    first = [read_publish5(raw.read()) for _ in range(3)]
    assert raw.quiet(0.5)  # a fourth would exceed Receive Maximum
    received = [p.payload for p in first]
    pending = list(first)
    while len(received) < 8:
        raw.send(ack_packet(4, pending.pop(0).packet_id))
        item = read_publish5(raw.read())
        pending.append(item)
        received.append(item.payload)
    assert received == [f"m{i}".encode() for i in range(8)]  # queued in order
    raw.close()


def test_client_exceeding_the_servers_receive_maximum_is_disconnected(unique):
    with TdmqEmulator(max_inflight=2) as emu:
        raw, _flags, props = raw5(emu.mqtt_port, unique("c"))
        assert props.ReceiveMaximum == 2
        for packet_id in (1, 2):  # QoS 2 without PUBREL: two unacknowledged
            raw.send(publish5_packet("t/x", b"x", qos=2, packet_id=packet_id))
            assert raw.read().type == 5
        raw.send(publish5_packet("t/x", b"x", qos=2, packet_id=3))
        disconnect = raw.read()
        assert disconnect.type == 14 and disconnect.body[0] == 0x93


# -- topic aliases ----------------------------------------------------------------------------------


def test_broker_sends_topic_aliases_on_repeated_topics(emulator, paho, unique):
    topic = unique("alias") + "/a/long/topic/name"
    raw, _flags, _props = raw5(emulator.mqtt_port, unique("c"), TopicAliasMaximum=2)
    raw.send(subscribe5_packet(1, [(topic.split("/")[0] + "/#", 0)]))
    assert raw.read().type == 9
    publisher = paho(unique("p"))
    topics = [topic, topic, topic + "2", topic + "3", topic + "3", topic]
    for name in topics:
        publisher.publish(name, b"x", qos=0)
    got = [read_publish5(raw.read()) for _ in topics]
    seen = [(p.topic, getattr(p.properties, "TopicAlias", None)) for p in got]
    assert seen == [
        (topic, 1),  # alias 1 set
        ("", 1),  # and used
        (topic + "2", 2),
        (topic + "3", None),  # no alias left: the full topic
        (topic + "3", None),
        ("", 1),
    ]
    raw.close()


def test_paho_without_topic_alias_maximum_gets_full_topics(paho, unique):
    topic = unique("noalias")
    subscriber = paho(unique("s"))
    subscriber.subscribe(topic, 0)
    publisher = paho(unique("p"))
    for _ in range(3):
        publisher.publish(topic, b"x")
    assert [m.topic for m in subscriber.receive(3)] == [topic] * 3


def test_broker_accepts_client_topic_aliases(emulator, paho, unique):
    topic = unique("inalias")
    subscriber = paho(unique("s"))
    subscriber.subscribe(topic, 1)
    raw, _flags, _props = raw5(emulator.mqtt_port, unique("c"))
    raw.send(publish5_packet(topic, b"one", qos=1, packet_id=1, TopicAlias=3))
    raw.send(publish5_packet("", b"two", qos=1, packet_id=2, TopicAlias=3))
    assert [raw.read().type, raw.read().type] == [4, 4]
    assert [(m.topic, m.payload) for m in subscriber.receive(2)] == [(topic, b"one"), (topic, b"two")]
    raw.send(publish5_packet("", b"three", qos=1, packet_id=3, TopicAlias=9))  # never set
    disconnect = raw.read()
    assert disconnect.type == 14 and disconnect.body[0] == 0x82
    bad, _flags, _props = raw5(emulator.mqtt_port, unique("c"))
    bad.send(publish5_packet(topic, b"x", qos=0, TopicAlias=emulator.config.topic_alias_maximum + 1))
    disconnect = bad.read()
    assert disconnect.type == 14 and disconnect.body[0] == 0x94  # Topic Alias invalid


# -- wills ---------------------------------------------------------------------------------------------


def test_will_delay_interval(emulator, paho, unique):
    will_topic = unique("will")
    watcher = paho(unique("w"))
    watcher.subscribe(will_topic, 1)
    client_id = unique("delayed")
    raw, _flags, _props = raw5(
        emulator.mqtt_port, client_id, clean=False, SessionExpiryInterval=60,
        will=(will_topic, b"late", {"WillDelayInterval": 1}),
    )  # fmt: skip
    raw.close()
    assert watcher.nothing_more(0.6)  # not yet
    assert watcher.receive(1, timeout=3)[0].payload == b"late"


def test_will_not_sent_when_the_client_comes_back_in_time(emulator, paho, unique):
    will_topic = unique("will")
    watcher = paho(unique("w"))
    watcher.subscribe(will_topic, 1)
    client_id = unique("flaky")
    raw, _flags, _props = raw5(
        emulator.mqtt_port, client_id, clean=False, SessionExpiryInterval=60,
        will=(will_topic, b"never", {"WillDelayInterval": 2}),
    )  # fmt: skip
    raw.close()
    time.sleep(0.5)
    again, flags, _props = raw5(emulator.mqtt_port, client_id, clean=False, SessionExpiryInterval=60)
    assert flags & 0x01
    assert watcher.nothing_more(2.5)
    again.send(packet(0xE0, b"\x00"))
    again.close()


def test_will_sent_when_the_session_ends_before_the_delay(emulator, paho, unique):
    will_topic = unique("will")
    watcher = paho(unique("w"))
    watcher.subscribe(will_topic, 1)
    raw, _flags, _props = raw5(
        emulator.mqtt_port, unique("short"), clean=False, SessionExpiryInterval=1,
        will=(will_topic, b"session-ended", {"WillDelayInterval": 30}),
    )  # fmt: skip
    raw.close()
    started = time.monotonic()
    assert watcher.receive(1, timeout=4)[0].payload == b"session-ended"
    assert time.monotonic() - started < 3


# -- packet sizes, reason strings, disconnect reasons ---------------------------------------------------


def test_messages_over_the_clients_maximum_packet_size_are_dropped_for_it(emulator, paho, unique):
    topic = unique("small")
    raw, _flags, _props = raw5(emulator.mqtt_port, unique("c"), MaximumPacketSize=200)
    raw.send(subscribe5_packet(1, [(topic, 1)]))
    assert raw.read().type == 9
    bystander = paho(unique("b"))
    bystander.subscribe(topic, 1)
    before = emulator.stats()["messages"]["messages_dropped_too_large"]
    publisher = paho(unique("p"))
    publisher.publish(topic, b"x" * 500, qos=1)
    publisher.publish(topic, b"fits", qos=1)
    got = read_publish5(raw.read())
    assert got.payload == b"fits"  # the large one never reached it, and it is still connected
    raw.send(ack_packet(4, got.packet_id))
    assert [m.payload for m in bystander.receive(2)] == [b"x" * 500, b"fits"]
    assert emulator.stats()["messages"]["messages_dropped_too_large"] == before + 1
    raw.close()


def test_reason_strings_only_when_the_client_allows_them(unique):
    acl = Acl.from_json({"rules": [{"action": "publish", "topic": "ro/#", "permission": "deny"}]})
    with TdmqEmulator(acl=acl) as emu:
        talkative, _flags, _props = raw5(emu.mqtt_port, unique("c"))
        talkative.send(publish5_packet("ro/x", b"x", qos=1, packet_id=1))
        code, props = read_reason(talkative.read(), PacketTypes.PUBACK, 2)
        assert code == 0x87 and "not allowed" in props.ReasonString
        quiet, _flags, _props = raw5(emu.mqtt_port, unique("c"), RequestProblemInformation=0)
        quiet.send(publish5_packet("ro/x", b"x", qos=1, packet_id=1))
        code, props = read_reason(quiet.read(), PacketTypes.PUBACK, 2)
        assert code == 0x87 and not hasattr(props, "ReasonString")
        talkative.close()
        quiet.close()


def test_publishing_to_dollar_topics_is_refused(emulator, paho, unique):
    events = paho(unique("ev"))
    events.subscribe("$events/#", 0)
    raw, _flags, _props = raw5(emulator.mqtt_port, unique("spoof"))
    raw.send(publish5_packet("$events/client_connected", b'{"clientid":"fake"}', qos=1, packet_id=1))
    code, _props = read_reason(raw.read(), PacketTypes.PUBACK, 2)
    assert code == 0x87
    spoofed = [m for m in _drain(events, 0.5) if b"fake" in m.payload]
    assert spoofed == []
    raw.close()


def test_publishing_to_sys_topics_is_refused(emulator, unique):
    raw, _flags, _props = raw5(emulator.mqtt_port, unique("spoof"))
    raw.send(publish5_packet("$SYS/broker/uptime", b"1", qos=1, packet_id=1))
    code, props = read_reason(raw.read(), PacketTypes.PUBACK, 2)
    assert code == 0x87 and "$SYS/..." in props.ReasonString
    raw.close()


def test_other_dollar_topics_are_topics_that_first_level_wildcards_skip(broker, unique):
    # MQTT 5, 4.7.2: '$' topics are not matched by '#' or '+' at the first level; only the service's
    # own roots ($events, $SYS) are refused. The Paho interop suite's test_dollar_topics, on both brokers.
    root = "$" + unique("own")
    exact, dollar_wildcard, hash_all, plus_first = (broker.publisher() for _ in range(4))
    exact.subscribe(f"{root}/state", 1)
    dollar_wildcard.subscribe(f"{root}/#", 1)
    hash_all.subscribe("#", 1)
    plus_first.subscribe("+/state", 1)
    publisher = broker.publisher()
    publisher.publish(f"{root}/state", b"on", qos=1)
    assert [(m.topic, m.payload) for m in exact.receive(1)] == [(f"{root}/state", b"on")]
    assert [m.payload for m in dollar_wildcard.receive(1)] == [b"on"]
    for wildcard in (hash_all, plus_first):
        seen = _drain(wildcard, 0.5)
        assert [m.topic for m in seen if m.topic.startswith("$")] == []
    for client in (exact, dollar_wildcard, hash_all, plus_first, publisher):
        client.disconnect()


def test_server_disconnect_reason_codes(emulator, paho, unique):
    client_id = unique("taken")
    first = paho(client_id, protocol=5)
    paho(client_id, protocol=5)
    assert first.disconnects.get(timeout=5).value == 0x8E  # session taken over
    raw, _flags, _props = raw5(emulator.mqtt_port, unique("c"))
    raw.send(connect5_packet("again"))  # a second CONNECT
    disconnect = raw.read()
    assert disconnect.type == 14 and disconnect.body[0] == 0x82
    _code, props = read_reason(disconnect, PacketTypes.DISCONNECT, 0)
    assert "second CONNECT" in props.ReasonString


# -- subscription options and limits ------------------------------------------------------------------------


def test_no_local_and_retain_as_published(paho, unique):
    topic = unique("opts")
    client = paho(unique("c"), protocol=5)
    client.subscribe(topic, 1, noLocal=True, retainAsPublished=True)
    client.publish(topic, b"own", qos=1)
    assert client.nothing_more()  # No Local: not its own
    paho(unique("p")).publish(topic, b"other", qos=1, retain=True)
    message = client.receive(1)[0]
    assert (message.payload, message.retain) == (b"other", True)  # Retain As Published


@pytest.mark.parametrize("handling, expected", [(0, [b"r", b"r"]), (1, [b"r"]), (2, [])])
def test_retain_handling(paho, unique, handling, expected):
    topic = unique("rh")
    paho(unique("p")).publish(topic, b"r", qos=1, retain=True)
    client = paho(unique("c"), protocol=5)
    client.subscribe(topic, 1, retainHandling=handling)
    client.subscribe(topic, 1, retainHandling=handling)  # again: 1 sends only on a new subscription
    assert [m.payload for m in _drain(client, 0.5)] == expected


@pytest.mark.parametrize("protocol, refused", [(4, 0x80), (5, 0x97)])
def test_subscriptions_per_client_are_limited(unique, protocol, refused):
    with TdmqEmulator(max_subscriptions=3) as emu:
        client = PahoClient(emu.mqtt_port, unique("c"), protocol=protocol)
        client.connect()
        for index in range(3):
            assert client.subscribe(f"t/{index}", 1) == [1]
        assert client.subscribe("t/0", 2) == [2]  # replacing one is not a new one
        assert client.subscribe("t/3", 1) == [refused]
        client.disconnect()


def test_acl_rules_can_match_a_client_id(unique):
    acl = Acl.from_json(
        {"rules": [{"clientid": "sensor-9", "action": "publish", "topic": "cmd/#", "permission": "deny"}]}
    )
    with TdmqEmulator(acl=acl) as emu:
        watcher = PahoClient(emu.mqtt_port, unique("w"))
        watcher.connect()
        watcher.subscribe("cmd/#", 1)
        for client_id, payload in (("sensor-9", b"denied"), (unique("other"), b"allowed")):
            client = PahoClient(emu.mqtt_port, client_id)
            client.connect()
            client.publish("cmd/x", payload, qos=1)
            client.disconnect()
        assert [m.payload for m in watcher.receive(1)] == [b"allowed"]
        assert watcher.nothing_more()
        watcher.disconnect()


# -- resending while connected ------------------------------------------------------------------------------


def test_unacknowledged_messages_are_resent_while_connected(paho, unique):
    with TdmqEmulator(retry_interval=0.5) as emu:
        topic = unique("resend")
        raw = RawClient(emu.mqtt_port)
        raw.send(connect_packet(unique("c")))
        assert raw.read().type == 2
        raw.send(subscribe_packet(1, topic, 1))
        assert raw.read().type == 9
        publisher = PahoClient(emu.mqtt_port, unique("p"))
        publisher.connect()
        publisher.publish(topic, b"again", qos=1)
        first = raw.read()
        assert first.type == 3 and not first.first & 0x08
        started = time.monotonic()
        second = raw.read(timeout=3)
        assert second.type == 3 and second.first & 0x08  # DUP, same packet
        assert second.body == first.body
        assert 0.4 <= time.monotonic() - started < 2.5
        packet_id = first.body[2 + len(topic) : 4 + len(topic)]
        raw.send(packet(0x40, packet_id))  # PUBACK: no more resends
        assert raw.quiet(1.2)
        publisher.disconnect()
        raw.close()


# -- message expiry 0 --------------------------------------------------------------------------------------


def test_message_expiry_zero_reaches_online_subscribers_only(paho, unique):
    topic = unique("now")
    online = paho(unique("on"), protocol=5)
    online.subscribe(topic, 1)
    offline_id = unique("off")
    offline = paho(offline_id, protocol=5, clean=True, session_expiry=300)
    offline.subscribe(topic, 1)
    offline.disconnect()
    publisher = paho(unique("p"))
    publisher.publish(
        topic, b"now-or-never", qos=1, retain=True, properties=properties(PacketTypes.PUBLISH, MessageExpiryInterval=0)
    )
    message = online.receive(1)[0]
    assert message.payload == b"now-or-never" and message.properties.MessageExpiryInterval == 0
    back = PahoClient(offline.port, offline_id, protocol=5, clean=False, session_expiry=300)
    assert back.connect()[0].session_present
    assert back.nothing_more()  # never queued
    back.disconnect()
    late = paho(unique("late"))
    late.subscribe(topic, 1)
    assert late.nothing_more()  # never retained
