"""The emulator's HTTP data-plane API, driven with raw HTTP (http.client, sockets and curl)."""

from __future__ import annotations

import base64
import http.client
import json
import re
import shutil
import socket
import subprocess
import time
from urllib.parse import quote

import pytest
from mqtt_peers import RawClient, connect_packet
from polling import eventually

from tdmq_beam.emulator.config import Acl
from tdmq_beam.testing import TdmqEmulator

BASIC = "Basic " + base64.b64encode(b"user0:secret0").decode()  # dXNlcjA6c2VjcmV0MA==


def request(emulator, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """Sends one request; returns (status, headers, body)."""
    connection = http.client.HTTPConnection(emulator.host, emulator.http_port, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Authorization": BASIC, **(headers or {})})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def publish_path(topic: str, **params: str) -> str:
    query = "&".join(f"{quote(k, safe='')}={quote(str(v), safe='')}" for k, v in params.items())
    return f"/topics/{quote(topic, safe='')}" + (f"?{query}" if query else "")


# -- publish ---------------------------------------------------------------------------


def test_publish_delivers_every_property_to_an_mqtt5_subscriber(emulator, paho, unique):
    topic = unique("http") + "/dev/cmd"
    subscriber = paho(unique("s"))
    subscriber.subscribe(topic, 2)
    path = publish_path(
        topic,
        qos="2",
        retained="false",
        client_id="curl-x",
        ResponseTopic="sample/response/topic",
        CorrelationData="SN0001",
        ContentType="application/json",
        PayloadFormatIndicator="1",
        MessageExpiryInterval="3600",
        **{
            "UserProp.1.Key": "k",
            "UserProp.1.Value": "v 1&2",
            "UserProp.2.Key": "other",
            "UserProp.2.Value": "x",
            "UserProp.3.Key": "k",
            "UserProp.3.Value": "v3",
        },
    )
    status, headers, body = request(emulator, "POST", path, b'{"message": "Hello, world"}')
    assert status == 200 and body == b""
    assert re.fullmatch(r"[0-9A-F]{32}", headers["X-Message-Id"])
    message = subscriber.receive(1)[0]
    assert message.topic == topic
    assert message.payload == b'{"message": "Hello, world"}'
    assert message.qos == 2 and not message.retain
    props = message.properties
    assert props.ResponseTopic == "sample/response/topic"
    assert props.CorrelationData == b"SN0001"
    assert props.ContentType == "application/json"
    assert props.PayloadFormatIndicator == 1
    assert 3599 <= props.MessageExpiryInterval <= 3600
    assert props.UserProperty == [("k", "v 1&2"), ("other", "x"), ("k", "v3")]


def test_message_ids_are_unique(emulator):
    ids = {request(emulator, "POST", "/topics/ids", b"x")[1]["X-Message-Id"] for _ in range(20)}
    assert len(ids) == 20


def test_percent_encoded_topic_including_slash(emulator, paho, unique):
    topic = unique("enc") + "/a b/ü/%/?"
    subscriber = paho(unique("s"))
    subscriber.subscribe(topic, 1)
    assert request(emulator, "POST", publish_path(topic), b"p")[0] == 200
    assert subscriber.receive(1)[0].topic == topic


def test_retained_and_default_qos(emulator, paho, unique):
    topic = unique("ret")
    assert request(emulator, "POST", publish_path(topic, retained="true"), b"kept")[0] == 200
    late = paho(unique("s"))
    late.subscribe(topic, 2)
    message = late.receive(1)[0]
    assert (message.payload, message.retain, message.qos) == (b"kept", True, 1)  # qos defaults to 1


def test_seed_curl_examples_verbatim(emulator, paho, unique):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    subscriber = paho(unique("s"))
    subscriber.subscribe("home", 1)
    base = emulator.http_url
    # 002/004 Example 1 and 2 (the host replaced; example 2's https -k made http).
    for url in (
        f"{base}/topics/home?qos=1&client_id=curl-x&retained=false",
        f"{base}/topics/home?qos=1&client_id=curl-x&retained=true&username=sample-user",
    ):
        out = subprocess.run(
            ["curl", "--silent", "--include", "--request", "POST", "-H", "Authorization: Basic dXNlcjA6c2VjcmV0MA==",
             "--data", '{ "message": "Hello, world" }', url],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert out.stdout.startswith("HTTP/1.1 200"), out.stdout
        assert re.search(r"X-Message-Id: [0-9A-F]{32}", out.stdout)
    assert [m.payload for m in subscriber.receive(2)] == [b'{ "message": "Hello, world" }'] * 2
    # 001: online status.
    out = subprocess.run(
        ["curl", "--silent", "--header", "Authorization: Basic dXNlcjA6c2VjcmV0MA==",
         f"{base}/client-id/nobody/status"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout) == {"online": False}
    # 000: keep-alive of an online client named curl-x.
    device = RawClient(emulator.mqtt_port)
    device.send(connect_packet("curl-x", keepalive=60))
    assert device.read().type == 2
    out = subprocess.run(
        ["curl", "--silent", "--request", "POST",
         "--header", "Authorization: Basic c2Vpcm9saTIyMjo5NEZWUmpTejBOR0dXVmFU",
         f"{base}/keep-alive?client-id=curl-x&interval=120", "--write-out", "%{http_code}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.stdout.endswith("401")  # the seed's credentials are not a user here
    out = subprocess.run(
        ["curl", "--silent", "--request", "POST", "--header", "Authorization: Basic dXNlcjA6c2VjcmV0MA==",
         f"{base}/keep-alive?client-id=curl-x&interval=120"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout) == {"success": True, "keepalive": 120}
    device.close()


def test_http_1_0_request(emulator, paho, unique):
    topic = unique("h10")
    subscriber = paho(unique("s"))
    subscriber.subscribe(topic, 1)
    with socket.create_connection((emulator.host, emulator.http_port), timeout=10) as sock:
        sock.sendall(
            f"POST /topics/{topic}?qos=1 HTTP/1.0\r\nAuthorization: {BASIC}\r\nContent-Length: 5\r\n\r\nhello".encode()
        )
        response = b""
        while chunk := sock.recv(4096):  # HTTP/1.0: the server closes after one response
            response += chunk
    assert response.startswith(b"HTTP/1.0 200")
    assert re.search(rb"X-Message-Id: [0-9A-F]{32}", response)
    assert subscriber.receive(1)[0].payload == b"hello"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/topics/a%2F%2B%2Fb", "wildcard"),
        ("/topics/a%2F%23", "wildcard"),
        ("/topics/", "empty"),
        ("/topics/a%00b", "U+0000"),
        ("/topics/x?qos=3", "qos"),
        ("/topics/x?qos=one", "qos"),
        ("/topics/x?retained=yes", "retained"),
        ("/topics/x?UserProp.1.Key=k", "Key and Value"),
        ("/topics/x?UserProp.1.Value=v", "Key and Value"),
        ("/topics/x?UserProp.x.Key=k", "UserProp"),
        ("/topics/x?MessageExpiryInterval=-1", "MessageExpiryInterval"),
        ("/topics/x?MessageExpiryInterval=4294967296", "MessageExpiryInterval"),
        ("/topics/x?PayloadFormatIndicator=2", "PayloadFormatIndicator"),
        ("/topics/x?ResponseTopic=a%2F%23", "ResponseTopic"),
        ("/topics/" + "a" * 65536, "65535"),
    ],
    ids=lambda value: value[:40] if isinstance(value, str) else None,
)
def test_publish_400(emulator, path, reason):
    status, _, body = request(emulator, "POST", path, b"x")
    assert status == 400
    assert reason in json.loads(body)["error"]


def test_payload_over_the_maximum_is_refused(unique):
    with TdmqEmulator(max_payload=100) as emu:
        assert request(emu, "POST", "/topics/x", b"x" * 100)[0] == 200
        status, _, body = request(emu, "POST", "/topics/x", b"x" * 101)
        assert status == 400 and "exceeds the maximum of 100" in json.loads(body)["error"]


def test_utf8_payload_format_checked(emulator):
    status, _, body = request(emulator, "POST", "/topics/x?PayloadFormatIndicator=1", b"\xff\xfe")
    assert status == 400 and "UTF-8" in json.loads(body)["error"]


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic " + base64.b64encode(b"user0:wrong").decode(), "Basic !!!", "Bearer abc",
     "Basic " + base64.b64encode(b"ghost:secret0").decode()],
)  # fmt: skip
def test_publish_401_for_missing_or_bad_credentials(emulator, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    connection = http.client.HTTPConnection(emulator.host, emulator.http_port, timeout=10)
    connection.request("POST", "/topics/x", body=b"x", headers=headers)
    assert connection.getresponse().status == 401


def test_acl_401_for_publish_and_403_for_status_without_connect(unique):
    acl = Acl.from_json(
        {
            "rules": [
                {"user": "reader", "action": "publish", "topic": "#", "permission": "deny"},
                {"user": "noconnect", "action": "connect", "permission": "deny"},
            ]
        }
    )
    with TdmqEmulator(users={"user0": "secret0", "reader": "r", "noconnect": "n"}, acl=acl) as emu:

        def auth(user: str, password: str) -> dict:
            return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

        assert request(emu, "POST", "/topics/x", b"x", auth("reader", "r"))[0] == 401
        assert request(emu, "GET", "/client-id/c/status", b"", auth("reader", "r"))[0] == 200
        assert request(emu, "GET", "/client-id/c/status", b"", auth("noconnect", "n"))[0] == 403
        assert request(emu, "POST", "/keep-alive?client-id=c&interval=60", b"", auth("noconnect", "n"))[0] == 403
        assert request(emu, "POST", "/topics/x", b"x", auth("noconnect", "n"))[0] == 401
        assert emu.stats()["messages"]["messages_received"] == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/topics/x"), ("PUT", "/topics/x"), ("DELETE", "/client-id/c/status"), ("GET", "/keep-alive")],
)
def test_405_for_other_methods(emulator, method, path):
    assert request(emulator, method, path)[0] == 405


def test_429_over_the_tps_quota():
    with TdmqEmulator(tps=5) as emu:
        statuses = [request(emu, "POST", "/topics/x", b"x") for _ in range(20)]
        limited = [headers for status, headers, _ in statuses if status == 429]
        assert 10 <= len(limited) <= 15
        assert all(headers["Retry-After"] == "1" for headers in limited)
        assert emu.stats()["requests"]["publish"]["429"] == len(limited)


# -- status and keep-alive --------------------------------------------------------------


def test_status_from_live_connections(emulator, paho, unique):
    client_id = unique("dev") + "/with slash"
    path = f"/client-id/{quote(client_id, safe='')}/status"
    for method in ("GET", "POST"):
        assert json.loads(request(emulator, method, path)[2]) == {"online": False}
    client = paho(client_id)
    for method in ("GET", "POST"):
        status, _, body = request(emulator, method, path)
        assert status == 200 and json.loads(body) == {"online": True}
    client.disconnect()
    answer = eventually(lambda: json.loads(request(emulator, "GET", path)[2]), until=lambda body: not body["online"])
    assert answer == {"online": False}


def test_keep_alive_changes_the_enforced_interval_at_once(emulator, unique):
    client_id = unique("ka")
    device = RawClient(emulator.mqtt_port)
    device.send(connect_packet(client_id, keepalive=600))
    assert device.read().type == 2
    status, _, body = request(emulator, "POST", f"/keep-alive?client-id={client_id}&interval=30")
    assert status == 200 and json.loads(body) == {"success": True, "keepalive": 30}

    broker = emulator._emulator.broker

    def enforced() -> tuple[int, float]:
        connection = broker.sessions[client_id].connection
        return connection.keepalive, connection._watchdog.when() - connection.last_received

    keepalive, deadline = emulator.call(enforced)
    assert keepalive == 30 and deadline == pytest.approx(45.0)
    device.close()


@pytest.mark.parametrize("interval", ["0", "29", "1201", "abc"])
def test_keep_alive_refuses_intervals_outside_30_to_1200(emulator, unique, interval):
    client_id = unique("ka")
    device = RawClient(emulator.mqtt_port)
    device.send(connect_packet(client_id, keepalive=60))
    device.read()
    status, _, body = request(emulator, "POST", f"/keep-alive?client-id={client_id}&interval={interval}")
    assert status == 400
    document = json.loads(body)
    assert document["success"] is False and interval in document["error"]
    device.close()


def test_keep_alive_refuses_keepalive_zero_sessions_and_offline_clients(emulator, unique):
    client_id = unique("ka0")
    device = RawClient(emulator.mqtt_port)
    device.send(connect_packet(client_id, keepalive=0))
    device.read()
    status, _, body = request(emulator, "POST", f"/keep-alive?client-id={client_id}&interval=60")
    assert status == 400 and "keep-alive 0" in json.loads(body)["error"]
    status, _, body = request(emulator, "POST", "/keep-alive?client-id=offline-one&interval=60")
    assert status == 400 and "not online" in json.loads(body)["error"]
    status, _, body = request(emulator, "POST", "/keep-alive?interval=60")
    assert status == 400 and "client-id" in json.loads(body)["error"]
    device.close()


# -- faults and stats ------------------------------------------------------------------


def test_injected_faults():
    with TdmqEmulator() as emu:
        emu.set_faults(1.0, ("500",))
        assert request(emu, "POST", "/topics/x", b"x")[0] == 500
        emu.set_faults(1.0, ("429",), retry_after=7)
        status, headers, _ = request(emu, "POST", "/topics/x", b"x")
        assert (status, headers["Retry-After"]) == (429, "7")
        emu.set_faults(1.0, ("reset",))
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            request(emu, "POST", "/topics/x", b"x")
        emu.set_faults(1.0, ("delay",), delay_seconds=0.6)
        started = time.monotonic()
        assert request(emu, "POST", "/topics/x", b"x")[0] == 200
        assert time.monotonic() - started >= 0.6
        emu.set_faults(0.0)
        assert request(emu, "POST", "/topics/x", b"x")[0] == 200
        stats = emu.stats()
        assert stats["requests"]["publish"] == {"500": 1, "429": 1, "reset": 1, "200": 2}
        assert stats["messages"]["messages_received"] == 2


def test_fault_rate_and_seed_are_repeatable():
    def run() -> list[int]:
        with TdmqEmulator() as emu:
            emu.set_faults(0.3, ("500", "429"), seed=42)
            return [request(emu, "POST", "/topics/x", b"x")[0] for _ in range(40)]

    first = run()
    assert first == run()
    assert 4 <= sum(status != 200 for status in first) <= 20


def test_stats_endpoint(emulator, paho, unique):
    client = paho(unique("st"))
    before = json.loads(request(emulator, "GET", "/emulator/stats")[2])
    request(emulator, "GET", "/client-id/x/status")
    after = json.loads(request(emulator, "GET", "/emulator/stats")[2])
    assert after["requests"]["status"]["200"] == before["requests"].get("status", {}).get("200", 0) + 1
    assert after["clients"]["connected"] >= 1
    # The stats name clients: for the emulator's users only.
    connection = http.client.HTTPConnection(emulator.host, emulator.http_port, timeout=10)
    connection.request("GET", "/emulator/stats")
    assert connection.getresponse().status == 401
    connection.close()
    assert set(after["messages"]) >= {"messages_received", "messages_delivered"}
    client.disconnect()
