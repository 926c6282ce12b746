"""Where the emulator once answered differently from the service, or let one client hurt others:
each case from a real peer (raw HTTP, paho-mqtt, the official cloud API SDK)."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import time

import pytest
from mqtt_peers import PahoClient
from tencentcloud.common import credential
from tencentcloud.common.common_client import CommonClient
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from test_emulator_http import BASIC, request

from tdmq_beam.emulator.config import Acl
from tdmq_beam.rules.cloud_actions import CLOUD_ACTIONS
from tdmq_beam.testing import TdmqEmulator

# -- property strings: nothing one publisher sends may hurt another client ---------------------------------


@pytest.mark.parametrize(
    "query, named",
    [
        ("ContentType=a%00b", "ContentType"),
        ("ContentType=" + "c" * 70_000, "ContentType"),
        ("ResponseTopic=r%00x", "ResponseTopic"),
        ("CorrelationData=" + "d" * 70_000, "CorrelationData"),
        ("UserProp.1.Key=k%00&UserProp.1.Value=v", "UserProp.1.Key"),
        ("UserProp.1.Key=k&UserProp.1.Value=" + "v" * 70_000, "UserProp.1.Value"),
        ("ContentType=%FF%FE", "ContentType"),  # not UTF-8: refused, not turned into U+FFFD
    ],
    ids=lambda value: value[:30],
)
def test_bad_property_strings_are_400_and_subscribers_stay_connected(emulator, paho, unique, query, named):
    topic = unique("strings")
    v5 = paho(unique("v5"), protocol=5)
    v5.subscribe(topic, 1)
    status, _, body = request(emulator, "POST", f"/topics/{topic}?retained=true&{query}", b"x")
    assert status == 400 and named in json.loads(body)["error"]
    assert request(emulator, "POST", f"/topics/{topic}?retained=true&ContentType=text%2Fplain", b"fine")[0] == 200
    message = v5.receive(1)[0]
    assert (message.payload, message.properties.ContentType) == (b"fine", "text/plain")
    assert v5.disconnects.empty()
    late = paho(unique("late"), protocol=5)  # nothing bad was retained either
    late.subscribe(topic, 1)
    assert late.receive(1)[0].payload == b"fine"
    assert late.disconnects.empty()


# -- identity under certificates ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_emulator(tls_files):
    acl = Acl.from_json({"rules": [{"user": "device-7", "action": "publish", "topic": "secret/#",
                                    "permission": "deny"}]})  # fmt: skip
    with TdmqEmulator(
        tls_cert=tls_files["server"], tls_key=tls_files["server_key"], client_ca=tls_files["ca"], acl=acl
    ) as running:
        yield running


def _mtls_request(emulator, tls_files, path: str, headers: dict | None = None) -> int:
    context = ssl.create_default_context(cafile=tls_files["ca"])
    context.load_cert_chain(tls_files["device"], tls_files["device_key"])
    connection = http.client.HTTPSConnection(emulator.host, emulator.http_port, context=context, timeout=10)
    try:
        connection.request("POST", path, body=b"x", headers=headers or {})
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_username_parameter_does_not_replace_the_certificates_identity(mtls_emulator, tls_files):
    assert _mtls_request(mtls_emulator, tls_files, "/topics/open%2Fx") == 200
    assert _mtls_request(mtls_emulator, tls_files, "/topics/secret%2Fx") == 401
    assert _mtls_request(mtls_emulator, tls_files, "/topics/secret%2Fx?username=user0") == 401


def test_a_certificate_plus_a_wrong_password_is_401(mtls_emulator, tls_files):
    wrong = "Basic " + base64.b64encode(b"user0:wrong").decode()
    assert _mtls_request(mtls_emulator, tls_files, "/topics/open%2Fx", {"Authorization": wrong}) == 401
    assert _mtls_request(mtls_emulator, tls_files, "/topics/open%2Fx", {"Authorization": BASIC}) == 200


def test_documentation_example_with_a_username_parameter_still_works(emulator):
    assert request(emulator, "POST", "/topics/home?qos=1&client_id=curl-x&retained=true&username=sample-user")[0] == 200


# -- spoofed events, payload caps ------------------------------------------------------------------------------


def test_http_publish_to_dollar_topics_is_refused(emulator, paho, unique):
    events = paho(unique("ev"))
    events.subscribe("$events/#", 0)
    status, _, body = request(emulator, "POST", "/topics/%24events%2Fclient_connected", b'{"clientid":"fake"}')
    assert status == 400 and "$" in json.loads(body)["error"]
    time.sleep(0.3)
    while not events.messages.empty():
        assert b"fake" not in events.messages.get().payload


def _chunked(emulator, path: str, size: int) -> int:
    connection = http.client.HTTPConnection(emulator.host, emulator.http_port, timeout=10)
    try:
        connection.request(
            "POST", path, body=iter([b"x" * (size // 2), b"x" * (size - size // 2)]),
            headers={"Authorization": BASIC}, encode_chunked=True,
        )  # fmt: skip
        return connection.getresponse().status
    finally:
        connection.close()


def test_payload_cap_is_exact_on_chunked_bodies_and_the_cloud_api_has_its_own():
    with TdmqEmulator(max_payload=1024) as emu:
        assert _chunked(emu, "/topics/x", 1024) == 200
        assert _chunked(emu, "/topics/x", 1025) == 400
        assert request(emu, "POST", "/topics/x", b"x" * 1025)[0] == 400
        # A cloud API body larger than the publish cap is still read (and judged on its own terms).
        status, _, body = request(emu, "POST", "/", json.dumps({"pad": "p" * 5000}).encode())
        assert status == 200 and json.loads(body)["Response"]["Error"]["Code"].startswith("AuthFailure")
    with TdmqEmulator(max_cloud_body=2048) as emu:
        status, _, body = request(emu, "POST", "/", b"p" * 4096)
        assert json.loads(body)["Response"]["Error"]["Code"] == "RequestSizeLimitExceeded"


# -- parameters and paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, reason",
    [
        ("qos=0&qos=2", "more than once"),
        ("qos=0&QoS=2", "more than once"),
        ("UserProp.1.Key=a&UserProp.1.Key=b&UserProp.1.Value=v", "more than once"),
        ("UserProp.01.Key=k&UserProp.1.Value=v", "UserProp"),
        ("MessageExpiryInterval=4_5", "MessageExpiryInterval"),
        ("MessageExpiryInterval=%2B45", "MessageExpiryInterval"),
        ("MessageExpiryInterval=%2045", "MessageExpiryInterval"),
        ("MessageExpiryInterval=45%20", "MessageExpiryInterval"),
        ("client_id=%FF", "UTF-8"),
        ("ContentType=a%zzb", "two hex digits"),
    ],
)
def test_ambiguous_parameters_are_refused(emulator, query, reason):
    status, _, body = request(emulator, "POST", f"/topics/x?{query}", b"x")
    assert status == 400 and reason in json.loads(body)["error"], body


def test_both_documented_spellings_of_qos_and_retained(emulator, paho, unique):
    topic = unique("spelling")
    assert request(emulator, "POST", f"/topics/{topic}?QoS=0&Retained=true", b"doc-table")[0] == 200
    late = paho(unique("late"))
    late.subscribe(topic, 2)
    message = late.receive(1)[0]
    assert (message.payload, message.qos, message.retain) == (b"doc-table", 0, True)


@pytest.mark.parametrize("path", ["/topic/x", "/topics", "/client-id//status", "/nothing/here", "/topics/a%zzb"])
def test_incorrect_paths_are_400(emulator, path):
    status, _, body = request(emulator, "POST", path, b"x")
    assert status == 400, (path, status, body)
    assert json.loads(body)["error"]


def test_keep_alive_interval_must_be_plain_digits(emulator, paho, unique):
    client_id = unique("ka")
    paho(client_id, keepalive=60)
    for interval in ("4_5", "%2B45", "%2045", "45.0"):
        status, _, body = request(emulator, "POST", f"/keep-alive?client-id={client_id}&interval={interval}")
        assert status == 400 and not json.loads(body)["success"], interval
    assert request(emulator, "POST", f"/keep-alive?client-id={client_id}&interval=45")[0] == 200


# -- the default client id is one per HTTP connection ----------------------------------------------------------


def test_default_client_id_is_one_per_connection(emulator, unique):
    topics = [unique("cid") for _ in range(3)]
    first = http.client.HTTPConnection(emulator.host, emulator.http_port, timeout=10)
    second = http.client.HTTPConnection(emulator.host, emulator.http_port, timeout=10)
    for connection, topic in ((first, topics[0]), (first, topics[1]), (second, topics[2])):
        connection.request("POST", f"/topics/{topic}?retained=true", body=b"x", headers={"Authorization": BASIC})
        assert connection.getresponse().read() == b""
    first.close()
    second.close()
    broker = emulator._emulator.broker
    publishers = emulator.call(lambda: [broker.retained[topic].publisher for topic in topics])
    assert publishers[0] == publishers[1] != publishers[2]
    assert all(publisher.startswith("http-") for publisher in publishers)


# -- message expiry 0 over HTTP ------------------------------------------------------------------------------------


def test_http_message_expiry_zero_reaches_online_subscribers(emulator, paho, unique):
    topic = unique("now")
    online = paho(unique("on"), protocol=5)
    online.subscribe(topic, 1)
    assert request(emulator, "POST", f"/topics/{topic}?MessageExpiryInterval=0", b"now")[0] == 200
    message = online.receive(1)[0]
    assert message.payload == b"now" and message.properties.MessageExpiryInterval == 0


# -- stats -----------------------------------------------------------------------------------------------------


def test_stats_count_events_apart():
    with TdmqEmulator() as emu:
        watcher = PahoClient(emu.mqtt_port, "watcher")
        watcher.connect()
        watcher.subscribe("$events/#", 0)
        for _ in range(3):
            assert request(emu, "POST", "/topics/counted", b"x")[0] == 200
        messages = emu.stats()["messages"]
        assert messages["messages_received"] == 3
        assert messages["events_published"] >= 2  # the watcher's connect and subscribe
        watcher.disconnect()


# -- cloud API --------------------------------------------------------------------------------------------------


def _sdk(emu, action: str, params: dict, *, method: str = "POST", secret_id: str | None = None, region="ap-guangzhou"):
    service, version = CLOUD_ACTIONS[action].service, CLOUD_ACTIONS[action].version
    cred = credential.Credential(secret_id or emu.secret_id, emu.secret_key)
    profile = ClientProfile(httpProfile=HttpProfile(protocol="http", endpoint=emu.cloud_endpoint, reqMethod=method))
    return CommonClient(service, version, cred, region, profile=profile).call_json(action, params)["Response"]


def _sdk_error(emu, action: str, params: dict, **options) -> str:
    with pytest.raises(TencentCloudSDKException) as caught:
        _sdk(emu, action, params, **options)
    return caught.value.get_code()


@pytest.fixture(scope="module")
def cloud(tls_files):
    with TdmqEmulator(cloud_rate=1000, cloud_denied_actions=frozenset({"DescribeMQTTClient"})) as running:
        sock = socket.create_connection((running.host, running.mqtt_port))  # one client online
        from tdmq_beam.mqtt.codec import encode_connect

        sock.sendall(encode_connect("cloud-dev-1", username="user0", password="secret0", keepalive=600))
        assert sock.recv(4) == b"\x20\x02\x00\x00"
        yield running
        sock.close()


def test_cloud_api_get_requests(cloud):
    response = _sdk(cloud, "DescribeClientList", {"InstanceId": "mqtt-local", "ClientId": "cloud-dev"}, method="GET")
    assert [client["ClientId"] for client in response["Clients"]] == ["cloud-dev-1"]


def test_cloud_api_error_codes(cloud):
    params = {"InstanceId": "mqtt-local"}
    assert _sdk_error(cloud, "DescribeClientList", {**params, "Bogus": "1"}) == "UnknownParameter"
    assert _sdk_error(cloud, "DescribeClientList", params, region="") == "MissingParameter"
    assert _sdk_error(cloud, "DescribeClientList", params, secret_id="not-a-key") == "AuthFailure.InvalidSecretId"
    assert _sdk_error(cloud, "DescribeMQTTClient", {**params, "ClientId": "x"}) == "AuthFailure.UnauthorizedOperation"


@pytest.mark.parametrize("zero", ["0", 0])
def test_cloud_api_number_as_string_or_integer(cloud, zero):
    params = {"InstanceId": "mqtt-local"}
    assert _sdk_error(cloud, "DescribeClientList", {**params, "Number": zero}) == "InvalidParameterValue"
    as_string = _sdk(cloud, "DescribeClientList", {**params, "Number": "1"})["Clients"]
    as_integer = _sdk(cloud, "DescribeClientList", {**params, "Number": 1})["Clients"]
    assert [c["ClientId"] for c in as_string] == [c["ClientId"] for c in as_integer] and len(as_integer) == 1
