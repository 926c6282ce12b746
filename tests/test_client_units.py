"""Pure logic of the client layer: message rules and encoding, connection checks, retry, rates."""

from __future__ import annotations

import pickle
import random
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

from tdmq_beam import (
    CloudApiConfig,
    InvalidMessageError,
    MqttMessage,
    RetryPolicy,
    Secret,
    TdmqConnection,
)
from tdmq_beam.errors import (
    AuthenticationError,
    CloudApiError,
    InvalidRequestError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    TdmqError,
    error_for_status,
)
from tdmq_beam.rules.token_bucket import TokenBucket

# -- MqttMessage -----------------------------------------------------------------------


def test_defaults_and_normalisation():
    message = MqttMessage("a/b", "ü", user_properties={"k": "v"}, correlation_data="c")
    assert message.payload == "ü".encode()
    assert message.qos == 1 and message.retained is False
    assert message.user_properties == (("k", "v"),)
    assert message.correlation_data == b"c"
    assert pickle.loads(pickle.dumps(message)) == message


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"topic": ""}, "empty"),
        ({"topic": "a/+"}, "wildcard"),
        ({"topic": "a/#"}, "wildcard"),
        ({"topic": "a\x00"}, "U+0000"),
        ({"topic": "t" * 65536}, "65535"),
        ({"topic": 5}, "topic must be a str"),
        ({"payload": 5}, "payload must be bytes or str"),
        ({"qos": 3}, "qos must be 0, 1 or 2"),
        ({"qos": True}, "qos must be 0, 1 or 2"),
        ({"qos": "1"}, "qos must be 0, 1 or 2"),
        ({"retained": "yes"}, "retained must be a bool"),
        ({"message_expiry_interval": -1}, "message_expiry_interval"),
        ({"message_expiry_interval": 2**32}, "message_expiry_interval"),
        ({"user_properties": [("k",)]}, "not a (key, value) pair"),
        ({"user_properties": [("k", "v", "x")]}, "not a (key, value) pair"),
        ({"user_properties": [("k", 1)]}, "user property 1 value must be a str"),
        ({"user_properties": 5}, "user_properties must be"),
        ({"payload_format_indicator": 2}, "payload_format_indicator must be 0 or 1"),
        ({"payload_format_indicator": 1, "payload": b"\xff"}, "not valid UTF-8"),
        ({"response_topic": "r/#"}, "response_topic"),
        ({"correlation_data": b"\xff\xfe"}, "correlation_data must be UTF-8"),
        ({"client_id": ""}, "client_id is empty"),
        ({"content_type": "a\x00"}, "content_type contains"),
    ],
)
def test_message_rules(kwargs, problem):
    arguments = {"topic": "t", "payload": b"p", **kwargs}
    topic, payload = arguments.pop("topic"), arguments.pop("payload")
    with pytest.raises(InvalidMessageError, match=None) as caught:
        MqttMessage(topic, payload, **arguments)
    assert problem in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_payload_cap_is_checked_by_problem():
    message = MqttMessage("t", b"x" * 11)
    assert message.problem() is None
    assert "11 bytes; the limit is 10" in message.problem(max_payload_bytes=10)


def test_request_target_names_parameters_as_the_api_does():
    message = MqttMessage(
        "dev/ä b/?",
        b"",
        qos=0,
        retained=True,
        client_id="c/1",
        username="u&1",
        user_properties=[("k", "v=1"), ("k", "v 2")],
        message_expiry_interval=60,
        content_type="text/plain",
        payload_format_indicator=0,
        response_topic="r/t",
        correlation_data=b"id%1",
    )
    target = message.request_target()
    path, _, query = target.partition("?")
    assert path == "/topics/dev%2F%C3%A4%20b%2F%3F"
    assert unquote(path[len("/topics/") :]) == "dev/ä b/?"
    assert "+" not in query and " " not in query
    assert parse_qsl(urlsplit(target).query) == [
        ("qos", "0"),
        ("retained", "true"),
        ("client_id", "c/1"),
        ("username", "u&1"),
        ("ResponseTopic", "r/t"),
        ("CorrelationData", "id%1"),
        ("ContentType", "text/plain"),
        ("PayloadFormatIndicator", "0"),
        ("MessageExpiryInterval", "60"),
        ("UserProp.1.Key", "k"),
        ("UserProp.1.Value", "v=1"),
        ("UserProp.2.Key", "k"),
        ("UserProp.2.Value", "v 2"),
    ]


# -- TdmqConnection and CloudApiConfig -----------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "kwargs", "problem"),
    [
        ("ftp://host", {}, "http:// or https://"),
        ("host:8080", {}, "http:// or https://"),
        ("http://", {}, "no host"),
        ("http://h:99999", {}, "invalid port"),
        ("http://h/path", {}, "without path"),
        ("http://h?x=1", {}, "without path"),
        ("http://user0:secret0@h", {}, "must not carry credentials"),
        ("http://h", {"username": None, "password": None}, "credentials are required"),
        ("http://h", {"password": None}, "go together"),
        ("http://h", {"client_cert": "c.pem", "client_key": "k.pem"}, "needs an https"),
        ("https://h", {"client_cert": "c.pem"}, "go together"),
        ("http://h", {"ca_cert": "ca.pem"}, "needs an https"),
        ("http://h", {"timeout": 0}, "timeout must be positive"),
        ("http://h", {"max_in_flight": 0}, "max_in_flight"),
        ("http://h", {"tps": -1}, "tps must be positive"),
        ("http://h", {"max_payload_bytes": -1}, "max_payload_bytes"),
        ("http://h", {"username": "a:b"}, "without ':'"),
        (None, {}, "endpoint must be a URL string"),
    ],
)
def test_connection_rules(endpoint, kwargs, problem):
    arguments = {"username": "u", "password": "p", **kwargs}
    with pytest.raises(ValueError, match=None) as caught:
        TdmqConnection(endpoint, **arguments)
    assert problem in str(caught.value)
    assert "secret0" not in str(caught.value)


def test_connection_normalises_and_pickles():
    connection = TdmqConnection("HTTP://Example.COM:8080/", username="u", password=Secret.env("PW"))
    assert connection.endpoint == "http://example.com:8080"
    assert pickle.loads(pickle.dumps(connection)) == connection
    mtls = TdmqConnection("https://h", client_cert="c.pem", client_key="k.pem")
    assert mtls.authorization_header() is None


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"secret_id": ""}, "secret_id is required"),
        ({"secret_key": ""}, "secret_key is required"),
        ({"region": ""}, "region is required"),
        ({"instance_id": ""}, "instance_id is required"),
        ({"api": "Describe"}, "api must be"),
        ({"endpoint": "127.0.0.1:8080"}, "endpoint must be"),
        ({"endpoint": "http://a:b@h"}, "credentials"),
        ({"rate": 0}, "rate must be positive"),
    ],
)
def test_cloud_config_rules(kwargs, problem):
    arguments = {"secret_id": "AKID", "secret_key": "k", "region": "ap-guangzhou", "instance_id": "mqtt-1", **kwargs}
    with pytest.raises(ValueError, match=None) as caught:
        CloudApiConfig(**arguments)
    assert problem in str(caught.value)


def test_cloud_config_hosts():
    config = CloudApiConfig(secret_id="AKID", secret_key="k", region="r", instance_id="i")
    assert config.url_and_host("DescribeMQTTClient") == (
        "https://trocket.tencentcloudapi.com/",
        "trocket.tencentcloudapi.com",
    )
    assert config.url_and_host("DescribeClientList") == (
        "https://mqtt.tencentcloudapi.com/",
        "mqtt.tencentcloudapi.com",
    )
    local = CloudApiConfig(
        secret_id="AKID", secret_key="k", region="r", instance_id="i", endpoint="http://127.0.0.1:8080/"
    )
    assert local.url_and_host("DescribeClientList") == ("http://127.0.0.1:8080/", "127.0.0.1:8080")


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, InvalidRequestError, False),
        (405, InvalidRequestError, False),
        (413, InvalidRequestError, False),
        (401, AuthenticationError, False),
        (403, PermissionDeniedError, False),
        (429, RateLimitedError, True),
        (500, ServerError, True),
        (503, ServerError, True),
    ],
)
def test_status_mapping(status, kind, retryable):
    error = error_for_status(status, "why", retry_after=2.0 if status == 429 else None)
    assert type(error) is kind and error.retryable is retryable and error.status == status
    assert str(error) == f"HTTP {status}: why"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is kind and copy.status == status and copy.message == "why"


def test_cloud_error_retryability():
    assert CloudApiError("RequestLimitExceeded", "slow down").retryable
    assert CloudApiError("InternalError", "x").retryable
    assert not CloudApiError("AuthFailure.SignatureFailure", "x").retryable
    copy = pickle.loads(pickle.dumps(CloudApiError("ResourceNotFound.Client", "x", request_id="r")))
    assert (copy.code, copy.request_id) == ("ResourceNotFound.Client", "r")


# -- retry policy and token bucket ------------------------------------------------------------------


def test_backoff_is_bounded_jittered_and_honours_retry_after():
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2)
    rng = random.Random(1)
    plain = ServerError("x", status=500)
    for attempt in range(1, 10):
        cap = min(1.0, 0.1 * 2 ** (attempt - 1))
        waits = [policy.backoff(attempt, plain, rng) for _ in range(200)]
        assert all(0 <= w <= cap for w in waits)
        assert max(waits) > cap * 0.8  # full jitter spreads over the range
    throttled = RateLimitedError("x", status=429, retry_after=3.0)
    assert all(policy.backoff(1, throttled, rng) >= 3.0 for _ in range(50))


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"initial_backoff": -1}, {"multiplier": 0.5}, {"deadline": 0}])
def test_retry_policy_rules(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_retry_run_counts_attempts_and_stops_at_non_retryable():
    import asyncio

    policy = RetryPolicy(max_attempts=5, initial_backoff=0.001, max_backoff=0.001)
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ServerError("boom", status=500)
        return "done"

    assert asyncio.run(policy.run(flaky)) == ("done", 3)

    async def refused():
        raise AuthenticationError("no", status=401)

    with pytest.raises(AuthenticationError) as caught:
        asyncio.run(policy.run(refused))
    assert caught.value.attempts == 1

    async def always_failing():
        raise ServerError("boom", status=500)

    with pytest.raises(ServerError) as caught:
        asyncio.run(policy.run(always_failing))
    assert caught.value.attempts == 5


def test_retry_deadline_stops_early():
    import asyncio

    policy = RetryPolicy(max_attempts=100, deadline=0.5)

    async def throttled():
        raise RateLimitedError("x", status=429, retry_after=1.0)

    with pytest.raises(RateLimitedError) as caught:
        asyncio.run(policy.run(throttled))
    assert caught.value.attempts == 1  # waiting 1 s would pass the 0.5 s deadline


def test_token_bucket():
    now = [0.0]
    bucket = TokenBucket(10, burst=5, clock=lambda: now[0])
    assert [bucket.try_take() for _ in range(6)] == [True] * 5 + [False]
    now[0] += 0.1
    assert bucket.try_take() and not bucket.try_take()
    assert bucket.reserve() == pytest.approx(0.1)
    assert bucket.reserve() == pytest.approx(0.2)
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_errors_derive_from_tdmq_error():
    import tdmq_beam.errors as errors

    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type):
            assert issubclass(value, TdmqError)


def test_every_class_naming_the_message_settings_names_exactly_the_table():
    import dataclasses
    import inspect

    from tdmq_beam import MessageMapping, WriteToTdmqMqtt
    from tdmq_beam.records.mapping import MessageDefaults
    from tdmq_beam.rules.message_properties import PROPERTY_NAMES

    def names(cls) -> set[str]:
        return {field.name for field in dataclasses.fields(cls) if not field.name.startswith("_")}

    table = set(PROPERTY_NAMES)
    assert names(MqttMessage) - {"topic", "payload", "user_properties"} == table
    assert names(MessageDefaults) - {"user_properties"} == table
    assert names(MessageMapping) - {"topic", "payload", "user_properties"} == table
    transform_only = {"connection", "mapping", "user_properties", "idempotency_key", "defaults", "batch_size",
                      "max_pending_batches", "batching", "max_buffering_duration_secs"}  # fmt: skip
    assert set(inspect.signature(WriteToTdmqMqtt).parameters) - transform_only == table


def test_every_consumer_of_the_property_table_follows_it():
    import inspect

    from tdmq_beam.beam_yaml.transforms import YamlWriteToTdmqMqtt
    from tdmq_beam.emulator import message as emulator_message
    from tdmq_beam.emulator.http_api import parse_query, publish_settings
    from tdmq_beam.mqtt.codec import Prop
    from tdmq_beam.records.received_message import ReceivedMessage
    from tdmq_beam.rules.message_properties import MESSAGE_PROPERTIES, PARAMETER_SPELLINGS

    forwarded = {prop.name for prop in MESSAGE_PROPERTIES if prop.forwarded}
    not_forwarded = {prop.name for prop in MESSAGE_PROPERTIES} - forwarded
    assert forwarded <= set(ReceivedMessage._fields) and not not_forwarded & set(ReceivedMessage._fields)
    # The emulator forwards the table's properties as sent, and the expiry as what is left of it.
    sent_as_is = {prop.mqtt_property for prop in MESSAGE_PROPERTIES if prop.forwarded and prop.mqtt_property}
    assert set(emulator_message._FORWARDED) == sent_as_is - {Prop.MESSAGE_EXPIRY_INTERVAL} | {Prop.USER_PROPERTY}
    # Beam YAML has a key for every setting (username is the connection's: message_username).
    keys = set(inspect.signature(YamlWriteToTdmqMqtt.__init__).parameters)
    assert {prop.name for prop in MESSAGE_PROPERTIES} - {"username"} | {"message_username"} <= keys
    # The emulator reads every parameter, by every spelling, into the value the client sent.
    texts = {"qos": "2", "retained": "true", "client_id": "c", "username": "u", "ResponseTopic": "r/1",
             "CorrelationData": "id-7", "ContentType": "text/plain", "PayloadFormatIndicator": "1",
             "MessageExpiryInterval": "60"}  # fmt: skip
    values = {"qos": 2, "retained": True, "client_id": "c", "username": "u", "response_topic": "r/1",
              "correlation_data": b"id-7", "content_type": "text/plain", "payload_format_indicator": 1,
              "message_expiry_interval": 60}  # fmt: skip
    assert set(texts) == {prop.parameter for prop in MESSAGE_PROPERTIES}
    settings, props = publish_settings(texts)
    assert settings == values
    assert props == {prop.mqtt_property: values[prop.name] for prop in MESSAGE_PROPERTIES if prop.mqtt_property}
    for prop in MESSAGE_PROPERTIES:
        for spelling in prop.spellings:
            params = parse_query(f"{spelling}={texts[prop.parameter]}", PARAMETER_SPELLINGS)
            assert publish_settings(params)[0][prop.name] == values[prop.name]
    # A stored message's details (the emulator's DescribeMessageDetails) read back into every forwarded property.
    from tdmq_beam.emulator.message_query import _details
    from tdmq_beam.emulator.message_store import StoredMessage

    stored = emulator_message.Message.create("t/1", b"body", 2, True, props, "c", 0.0)
    replayed = ReceivedMessage.from_stored(_details(StoredMessage("ID", 1_700_000_000_000, stored)))
    assert {name: getattr(replayed, name) for name in forwarded} == {name: values[name] for name in forwarded}
    assert (replayed.payload, replayed.message_id) == (b"body", "ID")


def test_messages_differing_in_any_one_property_get_different_idempotency_keys():
    from tdmq_beam.records.mapping import IdempotencyKey
    from tdmq_beam.rules.message_properties import MESSAGE_PROPERTIES

    key = IdempotencyKey()
    pairs = {"qos": (0, 2), "retained": (False, True), "client_id": ("a", "b"), "username": ("a", "b"),
             "response_topic": ("r/1", "r/2"), "correlation_data": (b"1", b"2"), "content_type": ("a", "b"),
             "payload_format_indicator": (0, 1), "message_expiry_interval": (1, 2)}  # fmt: skip
    assert set(pairs) == {prop.name for prop in MESSAGE_PROPERTIES if prop.in_idempotency_key}
    for name, (one, other) in pairs.items():
        first = key.key_for(MqttMessage("t", b"x", **{name: one}), None)
        assert first != key.key_for(MqttMessage("t", b"x", **{name: other}), None), name
    plain = key.key_for(MqttMessage("t", b"x"), None)
    assert plain != key.key_for(MqttMessage("t", b"x", user_properties=[("k", "v")]), None)


def test_progress_logs_at_most_once_per_interval_with_an_eta():
    from tdmq_beam.transforms.progress import Progress

    progress = Progress("WriteToTdmqMqtt", interval=3600, expected=1000)
    assert progress.add(100, 1, 5, 0) is None  # not yet an interval since the start
    progress._logged -= 3600  # as if an interval had passed
    line = progress.add(100, 0, 7, 2)
    assert line is not None and line.startswith("WriteToTdmqMqtt: 200 done (1 failed) in ")
    assert "7 retried, 2 throttled" in line and "s to go" in line
    assert progress.add(100, 0, 7, 2) is None  # the next one waits a whole interval again
