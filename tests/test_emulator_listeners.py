"""The emulator's MQTT over TLS and over WebSocket (plain and TLS), each reached by paho-mqtt and
checked against a plain-TCP peer on the other side."""

from __future__ import annotations

import ssl

import pytest
from mqtt_peers import PahoClient

from tdmq_beam.emulator.config import Acl
from tdmq_beam.testing import TdmqEmulator


@pytest.fixture(scope="module")
def tls_emulator(tls_files):
    acl = Acl.from_json({"rules": [{"user": "device-7", "action": "publish", "topic": "secret/#",
                                    "permission": "deny"}]})  # fmt: skip
    with TdmqEmulator(
        tls_cert=tls_files["server"], tls_key=tls_files["server_key"], client_ca=tls_files["ca"], acl=acl,
        mqtts_port=0, ws_port=0, wss_port=0,
    ) as running:  # fmt: skip
        yield running


def _client(port: int, client_id: str, *, tls_files=None, cert: bool = False, **options) -> PahoClient:
    client = PahoClient(port, client_id, **options)
    if tls_files is not None:
        client.client.tls_set(
            ca_certs=tls_files["ca"],
            certfile=tls_files["device"] if cert else None,
            keyfile=tls_files["device_key"] if cert else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return client


def test_listeners_are_announced(tls_emulator):
    assert tls_emulator.mqtts_port and tls_emulator.ws_port and tls_emulator.wss_port
    assert len({tls_emulator.mqtt_port, tls_emulator.mqtts_port, tls_emulator.ws_port, tls_emulator.wss_port}) == 4


@pytest.mark.parametrize("protocol", [4, 5])
def test_mqtt_over_tls_with_a_password(tls_emulator, tls_files, paho, unique, protocol):
    topic = unique("tls")
    plain = paho(unique("plain"), port=tls_emulator.mqtt_port)
    plain.subscribe(topic, 1)
    secure = _client(tls_emulator.mqtts_port, unique("secure"), tls_files=tls_files, protocol=protocol)
    assert not secure.connect()[1].is_failure
    secure.publish(topic, b"over TLS", qos=1)
    assert plain.receive(1)[0].payload == b"over TLS"
    secure.disconnect()


def test_mqtt_over_tls_with_a_client_certificate(tls_emulator, tls_files, paho, unique):
    topic = unique("cert")
    plain = paho(unique("plain"), port=tls_emulator.mqtt_port)
    plain.subscribe("#", 1)
    device = _client(tls_emulator.mqtts_port, "", tls_files=tls_files, cert=True, username=None, protocol=5)
    _flags, rc, props = device.connect()
    assert not rc.is_failure
    assert props.AssignedClientIdentifier == "device-7"  # the Common Name is the client id
    assert "device-7" in tls_emulator.online_clients()
    device.publish("secret/x", b"denied", qos=1)  # the ACL sees the certificate's identity
    device.publish(topic, b"allowed", qos=1)
    assert [m.payload for m in plain.receive(1)] == [b"allowed"]
    device.disconnect()


def test_certificate_and_a_different_client_id_or_wrong_password_are_refused(tls_emulator, tls_files, unique):
    other_id = _client(tls_emulator.mqtts_port, unique("not-the-cn"), tls_files=tls_files, cert=True, username=None)
    assert other_id.connect()[1].value == 0x85  # client identifier not valid
    other_id.disconnect()
    wrong_password = _client(
        tls_emulator.mqtts_port, "device-7", tls_files=tls_files, cert=True, username="user0", password="wrong"
    )
    assert wrong_password.connect()[1].value == 0x86  # a wrong password whatever else is presented
    wrong_password.disconnect()


@pytest.mark.parametrize("secure", [False, True])
@pytest.mark.parametrize("protocol", [4, 5])
def test_mqtt_over_websocket(tls_emulator, tls_files, paho, unique, secure, protocol):
    topic = unique("ws")
    port = tls_emulator.wss_port if secure else tls_emulator.ws_port
    plain = paho(unique("plain"), port=tls_emulator.mqtt_port)
    plain.subscribe(topic + "/up", 1)
    browser = _client(
        port, unique("browser"), tls_files=tls_files if secure else None, websocket=True, protocol=protocol
    )
    assert not browser.connect()[1].is_failure
    assert browser.subscribe(topic + "/down", 1) == [1]
    browser.publish(topic + "/up", b"from the browser", qos=1)
    assert plain.receive(1)[0].payload == b"from the browser"
    plain.publish(topic + "/down", b"to the browser", qos=1)
    message = browser.receive(1)[0]
    assert (message.topic, message.payload) == (topic + "/down", b"to the browser")
    browser.disconnect()
