"""The client layer against the emulator over real sockets (HTTP and HTTPS with mTLS)."""

from __future__ import annotations

import asyncio
import time

import pytest
from mqtt_peers import RawClient, connect_packet
from polling import eventually

from tdmq_beam import (
    AsyncTdmqClient,
    AuthenticationError,
    CloudApiError,
    ConfigurationError,
    InvalidMessageError,
    InvalidRequestError,
    MqttMessage,
    PermissionDeniedError,
    RateLimitedError,
    RetryPolicy,
    Secret,
    ServerError,
    TdmqClient,
    TdmqConnection,
    TransportError,
)
from tdmq_beam.emulator.config import Acl
from tdmq_beam.testing import TdmqEmulator

FAST_RETRY = RetryPolicy(max_attempts=6, initial_backoff=0.01, max_backoff=0.05, deadline=30)


@pytest.fixture(scope="module")
def client(emulator):
    with TdmqClient(emulator.connection(), emulator.cloud_config(rate=1000)) as running:
        yield running


UNTRUSTED = (
    r"TLS handshake with .* failed \(.+\); the server.s certificate is not signed by a CA this machine trusts: "
    r"give ca_cert"
)


# -- publish ------------------------------------------------------------------------


def test_publish_every_property_reaches_a_paho_mqtt5_subscriber(client, paho, unique):
    topic = unique("cli") + "/a b/ü+x"  # '+' inside a level is not a wildcard here: the topic is invalid
    with pytest.raises(InvalidMessageError, match="wildcard"):
        MqttMessage(topic, b"x")
    topic = unique("cli") + "/a b/ü?&=%"
    subscriber = paho(unique("s"))
    subscriber.subscribe(topic, 2)
    message = MqttMessage(
        topic,
        '{"cmd": "reboot"}',
        qos=2,
        retained=False,
        client_id="backfill-1",
        user_properties=[("trace", "a&b=c"), ("k", "1"), ("k", "2 ü")],
        message_expiry_interval=600,
        content_type="application/json; charset=utf-8",
        payload_format_indicator=1,
        response_topic="replies/backfill-1",
        correlation_data="req-42/ü",
    )
    message_id = client.publish(message)
    assert len(message_id) == 32
    received = subscriber.receive(1)[0]
    assert received.topic == topic
    assert received.payload == b'{"cmd": "reboot"}'
    assert received.qos == 2
    props = received.properties
    assert props.UserProperty == [("trace", "a&b=c"), ("k", "1"), ("k", "2 ü")]
    assert 599 <= props.MessageExpiryInterval <= 600
    assert props.ContentType == "application/json; charset=utf-8"
    assert props.PayloadFormatIndicator == 1
    assert props.ResponseTopic == "replies/backfill-1"
    assert props.CorrelationData == "req-42/ü".encode()


def test_publish_retained_and_qos0(client, paho, unique):
    topic = unique("ret")
    client.publish(MqttMessage(topic, b"kept", qos=0, retained=True))
    late = paho(unique("s"))
    late.subscribe(topic, 1)
    message = late.receive(1)[0]
    assert (message.payload, message.retain, message.qos) == (b"kept", True, 0)


def test_publish_batch_keeps_order_and_reports_each(client, paho, unique):
    topic = unique("batch")
    subscriber = paho(unique("s"))
    subscriber.subscribe(topic, 1)
    messages = [MqttMessage(topic, f"m{i}") for i in range(300)]
    results = client.publish_batch(messages)
    assert [r.ok for r in results] == [True] * 300
    assert len({r.message_id for r in results}) == 300
    assert {r.attempts for r in results} == {1}
    assert sorted(m.payload for m in subscriber.receive(300)) == sorted(m.payload for m in messages)


def test_payload_over_the_connection_cap_fails_before_any_request(emulator):
    with TdmqClient(emulator.connection(max_payload_bytes=10)) as small:
        before = emulator.stats()["requests"].get("publish", {}).get("200", 0)
        with pytest.raises(InvalidMessageError, match="11 bytes; the limit is 10"):
            small.publish(MqttMessage("x", b"x" * 11))
        small.publish(MqttMessage("x", b"x" * 10))
        assert emulator.stats()["requests"]["publish"]["200"] == before + 1


# -- errors and retries ---------------------------------------------------------------


def test_401_bad_password_and_acl(emulator):
    with TdmqClient(emulator.connection(password="wrong")) as bad:
        with pytest.raises(AuthenticationError) as caught:
            bad.publish(MqttMessage("x", b"x"))
        assert caught.value.status == 401 and not caught.value.retryable
        assert caught.value.attempts == 1
        with pytest.raises(AuthenticationError):
            bad.is_online("x")


def test_403_without_connect_permission_and_401_for_denied_topic():
    acl = Acl.from_json(
        {
            "rules": [
                {"user": "nc", "action": "connect", "permission": "deny"},
                {"user": "*", "action": "publish", "topic": "locked/#", "permission": "deny"},
            ]
        }
    )
    with TdmqEmulator(users={"user0": "secret0", "nc": "pw"}, acl=acl) as emu:
        with TdmqClient(emu.connection(username="nc", password="pw")) as client:
            with pytest.raises(PermissionDeniedError) as caught:
                client.is_online("x")
            assert caught.value.status == 403 and "CONNECT" in str(caught.value)
            with pytest.raises(PermissionDeniedError):
                client.set_keepalive("x", 60)
        with TdmqClient(emu.connection()) as client:
            with pytest.raises(AuthenticationError, match="not allowed to publish"):
                client.publish(MqttMessage("locked/door", b"x"))


def test_400_from_the_service_is_not_retried(emulator):
    with TdmqClient(emulator.connection(retry=FAST_RETRY)) as client:
        with pytest.raises(InvalidRequestError) as caught:
            client.set_keepalive("nobody-online", 60)
        assert caught.value.status == 400 and "not online" in str(caught.value)
        assert caught.value.attempts == 1


def test_405_maps_to_invalid_request(emulator):
    async def run() -> None:
        async with AsyncTdmqClient(emulator.connection()) as client:
            with pytest.raises(InvalidRequestError) as caught:
                await client._json_call("GET", "/keep-alive?client-id=x&interval=60", "keep-alive", "x")
            assert caught.value.status == 405 and not caught.value.retryable

    asyncio.run(run())


@pytest.mark.parametrize("kind", ["500", "429", "reset", "delay"])
def test_retries_succeed_after_injected_faults(kind, paho, unique):
    with TdmqEmulator() as emu:
        # 30% faults and 12 attempts: a message failing every attempt has odds 0.3**12 (5e-7).
        emu.set_faults(0.3, (kind,), seed=3, delay_seconds=1.0, retry_after=0)
        subscriber = paho(unique("s"), port=emu.mqtt_port)
        subscriber.subscribe("f/#", 1)
        policy = RetryPolicy(max_attempts=12, initial_backoff=0.01, max_backoff=0.05, deadline=60)
        connection = emu.connection(retry=policy, timeout=0.5, adaptive_throttling=False)
        with TdmqClient(connection) as client:
            results = client.publish_batch([MqttMessage(f"f/{i}", b"x") for i in range(40)])
        assert all(r.ok for r in results), [str(r.error) for r in results if not r.ok]
        assert max(r.attempts for r in results) > 1
        assert client.aio.retries == sum(r.attempts - 1 for r in results)
        # At least once: a timed-out attempt the server still processed is a duplicate.
        expected = {f"f/{i}" for i in range(40)}
        seen: set[str] = set()
        deadline = time.monotonic() + 20
        while seen != expected and time.monotonic() < deadline:
            seen.add(subscriber.receive(1, timeout=deadline - time.monotonic())[0].topic)
        assert seen == expected


def test_retries_give_up_with_a_clear_error():
    with TdmqEmulator() as emu:
        emu.set_faults(1.0, ("500",))
        with TdmqClient(emu.connection(retry=RetryPolicy(max_attempts=3, initial_backoff=0.01))) as client:
            with pytest.raises(ServerError) as caught:
                client.publish(MqttMessage("x", b"x"))
        assert caught.value.attempts == 3 and caught.value.status == 500
        assert "injected fault" in str(caught.value)
        assert emu.stats()["requests"]["publish"]["500"] == 3


def test_429_retry_after_is_honoured():
    with TdmqEmulator() as emu:
        emu.set_faults(1.0, ("429",), retry_after=1)
        policy = RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0)
        with TdmqClient(emu.connection(retry=policy)) as client:
            started = time.monotonic()
            with pytest.raises(RateLimitedError) as caught:
                client.publish(MqttMessage("x", b"x"))
            assert time.monotonic() - started >= 1.0
        assert caught.value.retry_after == 1.0 and caught.value.attempts == 2


def test_429_from_the_tps_quota_then_success():
    with TdmqEmulator(tps=20) as emu:
        with TdmqClient(emu.connection(retry=RetryPolicy(max_attempts=10, initial_backoff=0.05))) as client:
            results = client.publish_batch([MqttMessage("q", b"x") for _ in range(60)])
        assert all(r.ok for r in results)
        assert emu.stats()["requests"]["publish"]["429"] > 0


def test_429s_switch_on_adaptive_client_side_throttling():
    with TdmqEmulator(tps=30) as emu:
        policy = RetryPolicy(max_attempts=20, initial_backoff=0.05, max_backoff=0.5)
        with TdmqClient(emu.connection(retry=policy)) as client:
            results = client.publish_batch([MqttMessage("q", b"x") for _ in range(150)])
            assert all(r.ok for r in results)
            assert client.aio._throttler is not None
            assert client.aio.throttled > 0  # requests held back before they could be refused
        with TdmqClient(emu.connection(retry=policy, adaptive_throttling=False)) as client:
            client.publish_batch([MqttMessage("q", b"x") for _ in range(60)])
            assert client.aio._throttler is None and client.aio.throttled == 0


def test_client_tps_cap_stays_under_the_quota():
    with TdmqEmulator(tps=20) as emu:
        with TdmqClient(emu.connection(tps=15, retry=RetryPolicy.none())) as client:
            started = time.monotonic()
            results = client.publish_batch([MqttMessage("q", b"x") for _ in range(30)])
            elapsed = time.monotonic() - started
        assert all(r.ok for r in results)
        assert "429" not in emu.stats()["requests"]["publish"]
        assert elapsed >= 0.9  # 15 in the first burst, 15 more at 15/s


def test_transport_errors_refused_and_timeout(emulator):
    refused = TdmqConnection(
        "http://127.0.0.1:9", username="u", password="p", retry=RetryPolicy(max_attempts=2, initial_backoff=0.01)
    )
    with TdmqClient(refused) as client:
        with pytest.raises(TransportError) as caught:
            client.publish(MqttMessage("x", b"x"))
    assert caught.value.retryable and caught.value.attempts == 2 and caught.value.status is None
    with TdmqEmulator() as emu:
        emu.set_faults(1.0, ("delay",), delay_seconds=2)
        with TdmqClient(emu.connection(timeout=0.3, retry=RetryPolicy.none())) as client:
            with pytest.raises(TransportError, match="timed out"):
                client.publish(MqttMessage("x", b"x"))


# -- status, keep-alive, describe ----------------------------------------------------------


def test_is_online(client, paho, unique):
    client_id = unique("on") + "/slash ü"
    assert client.is_online(client_id) is False
    device = paho(client_id)
    assert client.is_online(client_id) is True
    device.disconnect()
    assert eventually(lambda: client.is_online(client_id), until=lambda online: not online) is False


def test_set_keepalive_changes_describe_client(client, emulator, unique):
    client_id = unique("ka")
    device = RawClient(emulator.mqtt_port)
    device.send(connect_packet(client_id, keepalive=60))
    device.read()
    assert client.describe_client(client_id).keepalive == 60
    assert client.set_keepalive(client_id, 90) == 90
    assert client.describe_client(client_id).keepalive == 90
    for bad in (0, 29, 1201, 60.5, "60"):
        with pytest.raises(InvalidRequestError, match=r"30\.\.1200"):
            client.set_keepalive(client_id, bad)
    device.close()


@pytest.mark.parametrize("api", ["DescribeMQTTClient", "DescribeClientList"])
def test_describe_client_connected_disconnected_and_unknown(emulator, paho, unique, api):
    client = TdmqClient(emulator.connection(), emulator.cloud_config(rate=1000, api=api))
    client_id = unique("desc")
    device = paho(client_id, protocol=4, clean=False, keepalive=30)
    device.subscribe("home/+/temp", 1)
    details = client.describe_client(client_id)
    assert details.client_id == client_id and details.online
    assert details.connection_status == "CONNECTED"
    assert details.protocol_version == 4 and details.keepalive == 30 and details.clean_session is False
    assert [(s.topic_filter, s.qos) for s in details.subscriptions] == [("home/+/temp", 1)]
    assert details.client_address.startswith("127.0.0.1:")
    assert details.connect_time >= details.create_time > 0 and details.disconnect_time == 0
    if api == "DescribeMQTTClient":  # traffic: only the old generation reports it
        assert {item["MessageType"] for item in details.inbound["Items"]} >= {"CONNACK", "SUBACK"}
    else:
        assert details.inbound is None and details.session_expiry_interval == 7 * 86400  # 3.1.1, clean off: the cap
    device.disconnect()
    offline = eventually(lambda: client.describe_client(client_id), until=lambda details: not details.online)
    assert not offline.online and offline.disconnect_time >= offline.connect_time
    assert client.describe_client(unique("never-seen")) is None
    assert offline.as_dict()["subscriptions"] == [{"topic_filter": "home/+/temp", "qos": 1}]
    client.close()


def test_describe_client_via_client_list_is_exact_match(emulator, paho, unique):
    base = unique("exact")
    paho(base + "-longer")
    with TdmqClient(emulator.connection(), emulator.cloud_config(api="DescribeClientList")) as client:
        assert client.describe_client(base) is None  # the list filter is a prefix; only exact counts
        paho(base)
        details = client.describe_client(base)
        assert details.client_id == base and details.session_expiry_interval == 0


def test_auto_starts_with_client_list_and_falls_back_only_when_it_is_offline(paho, unique):
    client_id = unique("auto")
    with TdmqEmulator() as emu:
        paho(client_id, port=emu.mqtt_port)
        with TdmqClient(emu.connection(), emu.cloud_config()) as client:
            assert client.describe_client(client_id).client_id == client_id
        assert emu.stats()["requests"]["cloud:DescribeClientList"] == {"OK": 1}
        assert "cloud:DescribeMQTTClient" not in emu.stats()["requests"]
    with TdmqEmulator(offline_actions=frozenset({"DescribeClientList"})) as emu:
        paho(client_id, port=emu.mqtt_port)
        with TdmqClient(emu.connection(), emu.cloud_config()) as client:
            assert client.describe_client(client_id).client_id == client_id
            assert client.aio._cloud.action == "DescribeMQTTClient"
            assert client.describe_client(client_id).online
        requests = emu.stats()["requests"]
        assert requests["cloud:DescribeClientList"] == {"ActionOffline": 1}
        assert requests["cloud:DescribeMQTTClient"] == {"OK": 2}


def test_auto_asks_for_the_exact_id_when_the_client_list_is_truncated(paho, unique, monkeypatch):
    import tdmq_beam.service.cloud_api as cloud_api

    monkeypatch.setattr(cloud_api, "CLIENT_LIST_LIMIT", 2)  # 2 clients fill a list
    base = unique("trunc")
    with TdmqEmulator() as emu:
        for suffix in ("-a", "-b", "-c"):
            paho(base + suffix, port=emu.mqtt_port)
        paho(base, port=emu.mqtt_port)
        with TdmqClient(emu.connection(), emu.cloud_config()) as auto:
            # However the list falls, the answer is exact: from the list, or from DescribeMQTTClient.
            assert all(auto.describe_client(base).client_id == base for _ in range(5))
        with TdmqClient(emu.connection(), emu.cloud_config(api="DescribeClientList")) as listing_only:
            codes = set()
            for _ in range(10):
                try:
                    assert listing_only.describe_client(base).client_id == base
                except CloudApiError as error:
                    codes.add(error.code)
            assert codes <= {"ClientListTruncated"}
        assert emu.stats()["requests"]["cloud:DescribeMQTTClient"]["OK"] >= 1


def test_cloud_auth_failure_is_fatal_and_rate_limit_retried():
    with TdmqEmulator(cloud_rate=2) as emu:
        with TdmqClient(emu.connection(), emu.cloud_config(secret_key="wrong")) as client:
            with pytest.raises(CloudApiError) as caught:
                client.describe_client("x")
            assert caught.value.code == "AuthFailure.SignatureFailure" and not caught.value.retryable
        # The client's own limiter off: the emulator's 2/s answers RequestLimitExceeded, then retries succeed.
        config = emu.cloud_config(rate=None, retry=RetryPolicy(max_attempts=20, initial_backoff=0.2))
        with TdmqClient(emu.connection(), config) as client:
            assert [client.describe_client("x") for _ in range(6)] == [None] * 6
        assert emu.stats()["requests"]["cloud:DescribeClientList"]["RequestLimitExceeded"] > 0


def test_describe_needs_a_cloud_config(client, emulator):
    with TdmqClient(emulator.connection()) as plain:
        with pytest.raises(ConfigurationError, match="CloudApiConfig"):
            plain.describe_client("x")


# -- secrets by reference ---------------------------------------------------------------------


def test_password_from_env_and_file(emulator, monkeypatch, tmp_path):
    monkeypatch.setenv("TDMQ_TEST_PASSWORD", emulator.password)
    with TdmqClient(emulator.connection(password=Secret.env("TDMQ_TEST_PASSWORD"))) as client:
        assert client.publish(MqttMessage("x", b"x"))
    secret_file = tmp_path / "password"
    secret_file.write_text(emulator.password + "\n")
    with TdmqClient(emulator.connection(password=Secret.file(secret_file))) as client:
        assert client.publish(MqttMessage("x", b"x"))
    with pytest.raises(ConfigurationError, match="TDMQ_MISSING_VARIABLE is not set"):
        TdmqClient(emulator.connection(password=Secret.env("TDMQ_MISSING_VARIABLE")))


# -- HTTPS and mTLS -------------------------------------------------------------------------------


def test_https_with_mtls(tls_files, paho, unique):
    acl = Acl.from_json({"rules": [{"user": "device-7", "action": "publish", "topic": "forbidden/#",
                                    "permission": "deny"}]})  # fmt: skip
    with TdmqEmulator(
        tls_cert=tls_files["server"], tls_key=tls_files["server_key"], client_ca=tls_files["ca"], acl=acl
    ) as emu:
        assert emu.http_url.startswith("https://")
        subscriber = paho(unique("s"), port=emu.mqtt_port)
        subscriber.subscribe("tls/#", 1)
        mtls = TdmqConnection(
            emu.http_url, client_cert=tls_files["device"], client_key=tls_files["device_key"], ca_cert=tls_files["ca"]
        )
        with TdmqClient(mtls) as client:
            assert client.publish(MqttMessage("tls/x", b"over mTLS"))
            assert client.is_online("device-7") is False
            with pytest.raises(AuthenticationError):  # the certificate's CN is the ACL identity
                client.publish(MqttMessage("forbidden/x", b"no"))
        assert subscriber.receive(1)[0].payload == b"over mTLS"
        basic_over_tls = TdmqConnection(emu.http_url, username="user0", password="secret0", ca_cert=tls_files["ca"])
        with TdmqClient(basic_over_tls) as client:
            assert client.publish(MqttMessage("tls/y", b"basic"))
        untrusted = TdmqConnection(emu.http_url, username="user0", password="secret0", retry=RetryPolicy.none())
        with TdmqClient(untrusted) as client:
            with pytest.raises(
                TransportError,
                match=UNTRUSTED,
            ):
                client.publish(MqttMessage("tls/z", b"x"))


def test_the_cloud_api_over_https_with_its_own_ca(tls_files):
    with TdmqEmulator(tls_cert=tls_files["server"], tls_key=tls_files["server_key"]) as emu:
        trusted = emu.cloud_config(ca_cert=tls_files["ca"])
        assert "cloud_ca_cert" in trusted.display_data()
        with TdmqClient(cloud=trusted) as client:
            assert client.describe_client("nobody") is None  # answered over TLS, signed by the private CA
        untrusted = emu.cloud_config(retry=RetryPolicy.none())
        with TdmqClient(cloud=untrusted) as client:
            with pytest.raises(TransportError, match=r"(?i)certificate"):
                client.describe_client("nobody")
        with pytest.raises(
            ConfigurationError, match=r"cloud ca_cert /nonexistent\.pem is not a readable PEM CA bundle"
        ):
            TdmqClient(cloud=emu.cloud_config(ca_cert="/nonexistent.pem"))


def test_unreadable_certificate_files_fail_clearly(tls_files, tmp_path):
    missing = TdmqConnection(
        "https://127.0.0.1:1", client_cert=str(tmp_path / "nope.pem"), client_key=tls_files["device_key"]
    )
    with pytest.raises(ConfigurationError, match=r"client_cert .*nope\.pem does not exist"):
        TdmqClient(missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    bad = TdmqConnection("https://127.0.0.1:1", client_cert=str(garbage), client_key=tls_files["device_key"])
    with pytest.raises(ConfigurationError, match="not a valid PEM"):
        TdmqClient(bad)


def test_async_client_directly(emulator):
    async def run() -> list[str]:
        async with AsyncTdmqClient(emulator.connection()) as client:
            ids = await asyncio.gather(*(client.publish(MqttMessage("async/x", str(i))) for i in range(20)))
            assert await client.is_online("nobody") is False
            return ids

    assert len(set(asyncio.run(run()))) == 20


def test_stats_count_what_the_client_sent(emulator):
    before = emulator.stats()["requests"]["status"].get("200", 0)  # stats() returns a fresh snapshot
    with TdmqClient(emulator.connection()) as client:
        client.is_online("counted")
    assert emulator.stats()["requests"]["status"]["200"] == before + 1


def test_client_list_lookup_never_reports_a_known_client_as_unknown():
    """DescribeClientList lists at most 1,024 of the ids sharing a prefix, in no set order (the emulator
    shuffles them): a full list without the id is an error, never 'unknown', and is not cached."""
    with TdmqEmulator(cloud_rate=1000) as emu, emu.simulated_clients() as devices:
        devices.offline("dup")
        for index in range(2100):
            devices.offline(f"dup-{index:04d}")
        devices.offline("solo-1")
        with TdmqClient(emu.connection(), emu.cloud_config(api="DescribeClientList")) as client:
            outcomes = []
            for _ in range(8):
                try:
                    details = client.describe_client("dup")
                except CloudApiError as error:
                    assert error.code == "ClientListTruncated" and not error.retryable
                    outcomes.append("truncated")
                else:
                    assert details is not None, "a known client came back unknown"
                    outcomes.append(details.client_id)
            assert set(outcomes) <= {"dup", "truncated"}
            assert client.describe_client("solo-1").client_id == "solo-1"
            assert client.describe_client("nobody-like-this") is None  # a short list: truly unknown
