"""Hostile clients: fuzzed MQTT byte streams and malformed HTTP; the emulator keeps serving everyone else."""

from __future__ import annotations

import asyncio
import http.client
import socket
import ssl

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mqtt_peers import PahoClient, ack_packet, connect5_packet, publish5_packet, subscribe5_packet

from tdmq_beam.mqtt.codec import encode_connect, encode_publish, encode_subscribe, encode_utf8
from tdmq_beam.testing import TdmqEmulator

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

VALID_CONNECT = encode_connect("fuzz", username="user0", password="secret0", keepalive=30)
VALID_PACKETS = [
    VALID_CONNECT,
    encode_subscribe(1, [("a/+", 1), ("b/#", 2)]),
    encode_publish(encode_utf8("a/b"), b"payload", 1, False, False, 7, 4, None),
    b"\xc0\x00",  # PINGREQ
]


# MQTT 5 packets exercising shared subscriptions and topic aliases both ways.
VALID_CONNECT_V5 = connect5_packet("fuzz5", TopicAliasMaximum=4, ReceiveMaximum=2)
VALID_PACKETS_V5 = [
    subscribe5_packet(1, [("$share/fuzz/a/#", 1), ("a/+", 2)], SubscriptionIdentifier=7),
    publish5_packet("a/b", b"payload", qos=1, packet_id=3, TopicAlias=1),
    publish5_packet("", b"aliased", qos=2, packet_id=4, TopicAlias=1),
    ack_packet(4, 1),
    ack_packet(6, 4),
    b"\xc0\x00",
]


@pytest.fixture(scope="module")
def hostile_target():
    with TdmqEmulator(max_packet_size=64 * 1024, ws_port=0) as emu:
        yield emu


@pytest.fixture(scope="module")
def tls_target(tls_files):
    with TdmqEmulator(mqtts_port=0, tls_cert=tls_files["server"], tls_key=tls_files["server_key"]) as emu:
        yield emu


@pytest.fixture(scope="module")
def group_member(hostile_target):
    """A well-behaved member of the shared group the fuzzed clients join: it must stay connected
    and keep getting its share whatever they send."""
    member = PahoClient(hostile_target.mqtt_port, "bystander", protocol=5)
    member.connect()
    member.subscribe("$share/fuzz/a/#", 1)
    yield member
    assert member.disconnects.empty()
    publisher = PahoClient(hostile_target.mqtt_port, "bystander-check")
    publisher.connect()
    while not member.messages.empty():
        member.messages.get()
    for _ in range(4):  # round robin may hand some to other members still in the group
        publisher.publish("a/after-fuzz", b"still here", qos=1)
    assert any(m.payload == b"still here" for m in member.receive(1))
    publisher.disconnect()
    member.disconnect()


def _send(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(0.3)
            while sock.recv(65536):
                pass
        except OSError:
            pass  # the emulator may close on us first: that is its right


def _still_serving(emu: TdmqEmulator) -> None:
    with socket.create_connection(("127.0.0.1", emu.mqtt_port), timeout=5) as sock:
        sock.sendall(encode_connect("health-check", username="user0", password="secret0"))
        assert sock.recv(4) == b"\x20\x02\x00\x00"
        sock.sendall(b"\xc0\x00")
        assert sock.recv(2) == b"\xd0\x00"
    if emu.http_url.startswith("https"):
        connection = http.client.HTTPSConnection(
            "127.0.0.1", emu.http_port, timeout=5, context=ssl._create_unverified_context()
        )
    else:
        connection = http.client.HTTPConnection("127.0.0.1", emu.http_port, timeout=5)
    connection.request("POST", "/topics/health", body=b"x", headers={"Authorization": "Basic dXNlcjA6c2VjcmV0MA=="})
    assert connection.getresponse().status == 200


def _mutate(data, stream: bytearray) -> bytes:
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(stream) - 1))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip":
            stream[position] ^= data.draw(st.integers(1, 255))
        elif action == "insert":
            stream[position:position] = data.draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and len(stream) > 1:
            del stream[position]
        elif action == "truncate":
            del stream[max(1, position) :]
    return bytes(stream)


@FUZZ
@given(st.data())
def test_mutated_mqtt5_shared_and_alias_packets(hostile_target, group_member, data):
    packets = data.draw(st.lists(st.sampled_from(VALID_PACKETS_V5), max_size=5))
    _send(hostile_target.mqtt_port, _mutate(data, bytearray(VALID_CONNECT_V5 + b"".join(packets))))
    _still_serving(hostile_target)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_packets_over_websocket(hostile_target, group_member, data):
    packets = data.draw(st.lists(st.sampled_from(VALID_PACKETS_V5), max_size=4))
    asyncio.run(_send_websocket(hostile_target.ws_port, _mutate(data, bytearray(VALID_CONNECT_V5 + b"".join(packets)))))
    _still_serving(hostile_target)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_packets_over_tls(tls_target, data):
    packets = data.draw(st.lists(st.sampled_from(VALID_PACKETS_V5), max_size=4))
    stream = _mutate(data, bytearray(VALID_CONNECT_V5 + b"".join(packets)))
    with socket.create_connection(("127.0.0.1", tls_target.mqtts_port), timeout=5) as raw:
        with ssl._create_unverified_context().wrap_socket(raw) as sock:
            try:
                sock.sendall(stream)
                sock.settimeout(0.3)
                while sock.recv(65536):
                    pass
            except OSError:
                pass  # the emulator may close on us first: that is its right
    _still_serving(tls_target)


async def _send_websocket(port: int, stream: bytes) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{port}/mqtt", protocols=("mqtt",)) as ws:
            await ws.send_bytes(stream)
            await ws.send_str("text frames are not MQTT")
            try:
                await asyncio.wait_for(ws.receive(), 0.3)
            except asyncio.TimeoutError:
                pass


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_as_mqtt(hostile_target, data):
    _send(hostile_target.mqtt_port, data)
    _still_serving(hostile_target)


@FUZZ
@given(st.data())
def test_mutated_valid_packets(hostile_target, data):
    stream = bytearray(VALID_CONNECT + b"".join(data.draw(st.lists(st.sampled_from(VALID_PACKETS[1:]), max_size=4))))
    _send(hostile_target.mqtt_port, _mutate(data, stream))
    _still_serving(hostile_target)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x00\x01\x02garbage\r\n\r\n",
        b"POST /topics/x HTTP/9.9\r\n\r\n",
        b"POST /topics/x HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /topics/x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
        b"POST /topics/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nboom\r\n0\r\n\r\n",
        b"POST /topics/%ZZ%%%% HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"POST /topics/x HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /" + b"%2F" * 200_000 + b" HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{{{{{",
        b"POST /keep-alive?client-id=%FF&interval=99999999999999999999 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=lambda value: value[:30].decode("latin-1"),
)
def test_malformed_http(hostile_target, request_bytes):
    _send(hostile_target.http_port, request_bytes)
    _still_serving(hostile_target)


@FUZZ
@given(st.binary(min_size=1, max_size=300))
def test_random_bytes_as_http(hostile_target, data):
    _send(hostile_target.http_port, data)
    _still_serving(hostile_target)


def test_oversized_mqtt_packet_is_refused_and_others_served(hostile_target):
    _send(
        hostile_target.mqtt_port,
        VALID_CONNECT + encode_publish(encode_utf8("big"), b"x" * 70_000, 0, False, False, 0, 4, None),
    )
    _still_serving(hostile_target)
    assert hostile_target.online_clients() - {"bystander"} == set()  # nothing left hanging (but the group member)
