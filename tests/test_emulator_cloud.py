"""The emulator's cloud API, called by Tencent Cloud's official SDK (CommonClient) unchanged."""

from __future__ import annotations

import http.client
import json
import random
import string
import time

import pytest
from mqtt_peers import RawClient, connect_packet
from polling import eventually
from tencentcloud.common import credential
from tencentcloud.common.common_client import CommonClient
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile

from tdmq_beam.rules import tc3
from tdmq_beam.testing import TdmqEmulator

DESCRIBE_MQTT_CLIENT = ("trocket", "2023-03-08", "DescribeMQTTClient")
DESCRIBE_CLIENT_LIST = ("mqtt", "2024-05-16", "DescribeClientList")


def sdk_call(emulator, api, params: dict, *, secret_id=None, secret_key=None) -> dict:
    service, version, action = api
    cred = credential.Credential(secret_id or emulator.secret_id, secret_key or emulator.secret_key)
    profile = ClientProfile(httpProfile=HttpProfile(protocol="http", endpoint=emulator.cloud_endpoint))
    client = CommonClient(service, version, cred, "ap-guangzhou", profile=profile)
    return client.call_json(action, params)["Response"]


def sdk_error(emulator, api, params: dict, **options) -> str:
    with pytest.raises(TencentCloudSDKException) as caught:
        sdk_call(emulator, api, params, **options)
    return caught.value.get_code()


@pytest.fixture(scope="module")
def cloud_emulator():
    with TdmqEmulator(cloud_rate=1000) as running:
        yield running


def test_sdk_signer_matches_ours_on_random_inputs():
    from tencentcloud.common.abstract_client import AbstractClient

    rng = random.Random(7)
    for _ in range(50):
        secret_key = "".join(rng.choices(string.ascii_letters + string.digits, k=32))
        service = rng.choice(["trocket", "mqtt", "cvm"])
        host = rng.choice(["trocket.tencentcloudapi.com", "127.0.0.1:8080", "mqtt.intl.tencentcloudapi.com"])
        body = json.dumps({"InstanceId": "mqtt-" + rng.choice(string.ascii_lowercase) * 5, "N": rng.random()})
        timestamp = rng.randrange(1_500_000_000, 1_900_000_000)

        class Request:
            method = "POST"
            uri = "/"
            data = body
            header = {"Content-Type": "application/json", "Host": host, "X-TC-Timestamp": str(timestamp)}

        date = tc3.utc_date(timestamp)
        expected = AbstractClient._get_tc3_signature(None, {}, Request, date, service, secret_key)
        ours = tc3.sign(
            secret_key=secret_key, service=service, timestamp=timestamp,
            headers={"Content-Type": "application/json", "Host": host}, payload=body.encode(),
        )  # fmt: skip
        assert ours == expected


def test_describe_mqtt_client_from_live_state(cloud_emulator, paho, unique):
    client_id = unique("cloud")
    device = paho(client_id, port=cloud_emulator.mqtt_port, protocol=4, clean=False, keepalive=45)
    device.subscribe("home/sun/+/", 1)
    device.subscribe("home/person/+/", 2)
    device.client.publish("home/x", b"12345", qos=1).wait_for_publish(5)
    time.sleep(0.2)
    response = sdk_call(cloud_emulator, DESCRIBE_MQTT_CLIENT, {"InstanceId": "mqtt-local", "ClientId": client_id})
    assert response["ClientId"] == client_id
    host, port = response["ClientAddress"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert response["ProtocolVersion"] == 4
    assert response["Keepalive"] == 45
    assert response["ConnectionStatus"] == "CONNECTED"
    assert response["CleanSession"] is False
    assert response["DisconnectTime"] == 0
    assert response["CreateTime"] <= response["ConnectTime"] <= time.time() * 1000
    assert response["MQTTClientSubscriptions"] == [
        {"TopicFilter": "home/sun/+/", "Qos": 1},
        {"TopicFilter": "home/person/+/", "Qos": 2},
    ]
    inbound = {(i["MessageType"], i["Qos"]): i["Count"] for i in response["Inbound"]["Items"]}
    outbound = {(i["MessageType"], i["Qos"]): i["Count"] for i in response["OutBound"]["Items"]}
    assert inbound == {("CONNACK", 0): 1, ("SUBACK", 0): 2, ("PUBACK", 0): 1}
    assert outbound == {("CONNECT", 0): 1, ("SUBSCRIBE", 1): 2, ("PUBLISH", 1): 1}
    assert response["Inbound"]["Bytes"] == 4 + 5 + 5 + 4  # CONNACK, 2 x SUBACK, PUBACK
    assert response["OutBound"]["Bytes"] > 0
    assert len(response["RequestId"]) == 36


def test_describe_after_keepalive_change_and_disconnect(cloud_emulator, unique):
    client_id = unique("ka")
    device = RawClient(cloud_emulator.mqtt_port)
    device.send(connect_packet(client_id, clean=False, keepalive=60))
    device.read()
    connection = http.client.HTTPConnection(cloud_emulator.host, cloud_emulator.http_port)
    connection.request(
        "POST",
        f"/keep-alive?client-id={client_id}&interval=300",
        headers={"Authorization": "Basic dXNlcjA6c2VjcmV0MA=="},
    )
    assert connection.getresponse().status == 200
    params = {"InstanceId": "mqtt-local", "ClientId": client_id}
    assert sdk_call(cloud_emulator, DESCRIBE_MQTT_CLIENT, params)["Keepalive"] == 300
    device.send(b"\xe0\x00")
    device.close()
    response = eventually(
        lambda: sdk_call(cloud_emulator, DESCRIBE_MQTT_CLIENT, params),
        until=lambda answer: answer["ConnectionStatus"] == "DISCONNECTED",
    )
    assert response["ConnectionStatus"] == "DISCONNECTED"
    assert response["DisconnectTime"] >= response["ConnectTime"] > 0


def test_describe_client_list(cloud_emulator, paho, unique):
    prefix = unique("list")
    online = paho(prefix + "-on", port=cloud_emulator.mqtt_port, protocol=5, session_expiry=3600)
    online.subscribe("a/#", 1)
    offline = paho(prefix + "-off", port=cloud_emulator.mqtt_port, protocol=5, session_expiry=600)
    offline.disconnect()
    params = {"InstanceId": "mqtt-local", "ClientId": prefix}
    gone = (prefix + "-off", "DISCONNECTED")
    clients = eventually(
        lambda: sdk_call(cloud_emulator, DESCRIBE_CLIENT_LIST, params)["Clients"],
        until=lambda found: gone in {(c["ClientId"], c["ConnectionStatus"]) for c in found},
    )
    by_id = {c["ClientId"]: c for c in clients}
    assert set(by_id) == {prefix + "-on", prefix + "-off"}
    assert by_id[prefix + "-on"]["ConnectionStatus"] == "CONNECTED"
    assert by_id[prefix + "-on"]["ProtocolVersion"] == 5
    assert by_id[prefix + "-on"]["ExpireIntervalInSeconds"] == 3600
    subscription = by_id[prefix + "-on"]["MQTTClientSubscriptions"][0]
    assert subscription["TopicFilter"] == "a/#" and subscription["Qos"] == 1
    assert {"Lag", "Inflight", "UserProperties"} <= set(subscription)
    assert "Inbound" not in by_id[prefix + "-on"]
    assert by_id[prefix + "-off"]["ConnectionStatus"] == "DISCONNECTED"
    only_online = sdk_call(
        cloud_emulator, DESCRIBE_CLIENT_LIST, {"InstanceId": "mqtt-local", "ClientId": prefix, "OnlineStatus": 1}
    )["Clients"]
    assert [c["ClientId"] for c in only_online] == [prefix + "-on"]
    limited = sdk_call(
        cloud_emulator, DESCRIBE_CLIENT_LIST, {"InstanceId": "mqtt-local", "ClientId": prefix, "Number": "1"}
    )["Clients"]
    assert len(limited) == 1


DESCRIBE_SHARED_LAG = ("mqtt", "2024-05-16", "DescribeSharedSubscriptionLag")


def test_shared_subscription_lag_counts_what_the_group_holds_unacknowledged(cloud_emulator, paho, unique):
    from tdmq_beam import MqttMessage, TdmqClient
    from tdmq_beam.errors import InvalidRequestError

    group, topic = unique("lag"), unique("lagged")
    expression = f"$share/{group}/{topic}/#"
    reader_id = unique("lag-reader")
    reader = paho(reader_id, port=cloud_emulator.mqtt_port, protocol=5, session_expiry=600)
    reader.subscribe(expression, 1)
    reader.disconnect()  # its session (and its place in the group) stays; it takes nothing now
    with TdmqClient(cloud_emulator.connection(), cloud_emulator.cloud_config()) as client:
        assert eventually(lambda: client.is_online(reader_id), until=lambda online: not online) is False
        assert client.shared_subscription_lag(expression) == 0
        for i in range(7):
            client.publish(MqttMessage(f"{topic}/{i}", b"x", qos=1))
        client.publish(MqttMessage(f"{topic}/q0", b"x", qos=0))  # QoS 0 is not kept for an absent reader
        lag = client.shared_subscription_lag(expression)
        assert lag == 7
        # The official SDK reads the same figure, from the same action.
        params = {"InstanceId": "mqtt-local", "SharedSubscription": expression}
        assert sdk_call(cloud_emulator, DESCRIBE_SHARED_LAG, params)["Lag"] == lag
        assert client.shared_subscription_lag(f"$share/{unique('nobody')}/{topic}/#") == 0
        with pytest.raises(InvalidRequestError, match=r"\$share/\{group\}/\{filter\}"):
            client.shared_subscription_lag(f"{topic}/#")
    bad = {"InstanceId": "mqtt-local", "SharedSubscription": "a/b"}
    assert sdk_error(cloud_emulator, DESCRIBE_SHARED_LAG, bad) == "InvalidParameterValue"
    assert sdk_error(cloud_emulator, DESCRIBE_SHARED_LAG, {"InstanceId": "mqtt-local"}) == "MissingParameter"


def test_business_errors(cloud_emulator):
    assert (
        sdk_error(cloud_emulator, DESCRIBE_MQTT_CLIENT, {"InstanceId": "mqtt-local", "ClientId": "no-such-client"})
        == "ResourceNotFound.Client"
    )
    assert sdk_error(cloud_emulator, DESCRIBE_MQTT_CLIENT, {"InstanceId": "mqtt-local"}) == "MissingParameter"
    assert sdk_error(cloud_emulator, DESCRIBE_MQTT_CLIENT, {"ClientId": "x"}) == "MissingParameter"
    assert (
        sdk_error(cloud_emulator, DESCRIBE_MQTT_CLIENT, {"InstanceId": "mqtt-other", "ClientId": "x"})
        == "ResourceNotFound.Instance"
    )
    assert sdk_error(cloud_emulator, ("trocket", "2023-03-08", "DescribeNothing"), {}) == "InvalidAction"
    assert (
        sdk_error(cloud_emulator, ("trocket", "2020-01-01", "DescribeMQTTClient"), {"InstanceId": "mqtt-local"})
        == "NoSuchVersion"
    )


def test_authentication_errors(cloud_emulator):
    params = {"InstanceId": "mqtt-local", "ClientId": "x"}
    assert (
        sdk_error(cloud_emulator, DESCRIBE_MQTT_CLIENT, params, secret_key="wrong-key")
        == "AuthFailure.SignatureFailure"
    )
    assert (
        sdk_error(cloud_emulator, DESCRIBE_MQTT_CLIENT, params, secret_id="AKIDunknown")
        == "AuthFailure.SecretIdNotFound"
    )
    # The right signature for the wrong service.
    assert sdk_error(cloud_emulator, ("mqtt", "2023-03-08", "DescribeMQTTClient"), params) == (
        "AuthFailure.SignatureFailure"
    )


def _signed_post(emulator, body: bytes, timestamp: int, **header_overrides) -> dict:
    host = emulator.cloud_endpoint
    headers = {"Content-Type": "application/json", "Host": host}
    signature = tc3.sign(
        secret_key=emulator.secret_key, service="trocket", timestamp=timestamp, headers=headers, payload=body
    )
    headers.update(
        {
            "X-TC-Action": "DescribeMQTTClient",
            "X-TC-Version": "2023-03-08",
            "X-TC-Timestamp": str(timestamp),
            "X-TC-Region": "ap-guangzhou",
            "Authorization": tc3.authorization_header(
                secret_id=emulator.secret_id, service="trocket", timestamp=timestamp,
                signed_headers=["content-type", "host"], signature=signature,
            ),
        }
    )  # fmt: skip
    headers.update(header_overrides)
    connection = http.client.HTTPConnection(emulator.host, emulator.http_port, timeout=10)
    connection.request("POST", "/", body=body, headers=headers)
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    return json.loads(response.read())["Response"]


def test_expired_replayed_and_tampered_signatures(cloud_emulator):
    body = b'{"InstanceId":"mqtt-local","ClientId":"x"}'
    now = int(time.time())
    assert _signed_post(cloud_emulator, body, now)["Error"]["Code"] == "ResourceNotFound.Client"
    assert _signed_post(cloud_emulator, body, now - 301)["Error"]["Code"] == "AuthFailure.SignatureExpire"
    assert _signed_post(cloud_emulator, body, now + 301)["Error"]["Code"] == "AuthFailure.SignatureExpire"
    tampered = _signed_post(cloud_emulator, body, now, **{"X-TC-Timestamp": str(now - 1)})
    assert tampered["Error"]["Code"] == "AuthFailure.SignatureFailure"
    no_auth = _signed_post(cloud_emulator, body, now, Authorization="")
    assert no_auth["Error"]["Code"] == "AuthFailure.InvalidAuthorization"


def test_request_limit_exceeded():
    with TdmqEmulator(cloud_rate=3) as emu:
        codes = []
        for _ in range(8):
            try:
                sdk_call(emu, DESCRIBE_MQTT_CLIENT, {"InstanceId": "mqtt-local", "ClientId": "x"})
            except TencentCloudSDKException as exc:
                codes.append(exc.get_code())
        assert codes.count("RequestLimitExceeded") >= 4
        assert codes.count("ResourceNotFound.Client") >= 3
        stats = emu.stats()["requests"]["cloud:DescribeMQTTClient"]
        assert stats["RequestLimitExceeded"] == codes.count("RequestLimitExceeded")


def test_offline_action():
    with TdmqEmulator(offline_actions=frozenset({"DescribeMQTTClient"})) as emu:
        params = {"InstanceId": "mqtt-local", "ClientId": "x"}
        assert sdk_error(emu, DESCRIBE_MQTT_CLIENT, params) == "ActionOffline"
        assert sdk_call(emu, DESCRIBE_CLIENT_LIST, params)["Clients"] == []
