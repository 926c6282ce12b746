"""`TdmqConnection.from_env` and `CloudApiConfig.from_env`: what they read, what they refuse, and
that a secret stays a reference (out of the pickled graph) rather than a value read here."""

from __future__ import annotations

import pickle

import pytest

from tdmq_beam import CloudApiConfig, ConfigurationError, MqttMessage, TdmqClient, TdmqConnection
from tdmq_beam.service.environment import CLOUD_API_ENVIRONMENT, CONNECTION_ENVIRONMENT


@pytest.fixture
def clean_env(monkeypatch):
    """The test's monkeypatch, with none of the variables set."""
    for setting in (*CONNECTION_ENVIRONMENT, *CLOUD_API_ENVIRONMENT):
        monkeypatch.delenv(setting.variable, raising=False)
    return monkeypatch


def _set(monkeypatch, **variables: str) -> None:
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)


def test_the_connection_reads_its_variables_and_keeps_the_password_a_reference(clean_env):
    _set(
        clean_env,
        TDMQ_ENDPOINT="http://127.0.0.1:8080/",
        TDMQ_MQTT_ENDPOINT="mqtt://127.0.0.1:1883",
        TDMQ_USERNAME="user0",
        TDMQ_PASSWORD="hunter2-not-in-the-graph",
    )
    connection = TdmqConnection.from_env(max_in_flight=8)
    assert (connection.endpoint, connection.mqtt_endpoint, connection.username) == (
        "http://127.0.0.1:8080",
        "mqtt://127.0.0.1:1883",
        "user0",
    )
    assert connection.max_in_flight == 8
    assert connection.password is not None and connection.password.describe() == "env:TDMQ_PASSWORD"
    assert b"hunter2" not in pickle.dumps(connection)
    assert "hunter2" not in repr(connection)
    clean_env.setenv("TDMQ_PASSWORD", "changed")  # read where it is used, not when built
    assert connection.password.resolve() == "changed"


def test_keywords_win_over_the_environment_and_no_username_means_no_password(clean_env):
    clean_env.setenv("TDMQ_ENDPOINT", "https://mqtt-xxxx.mqtt.tencenttdmq.com")
    clean_env.setenv("TDMQ_USERNAME", "from-env")
    connection = TdmqConnection.from_env(username="given", password="p")
    assert connection.username == "given"
    assert connection.password is not None and connection.password.describe() == "<secret>"
    clean_env.delenv("TDMQ_USERNAME")
    with pytest.raises(ConfigurationError, match="credentials are required"):
        TdmqConnection.from_env()  # no TDMQ_PASSWORD reference is made up without a user


def test_a_missing_variable_is_named(clean_env):
    with pytest.raises(ConfigurationError, match=r"TdmqConnection.from_env: TDMQ_ENDPOINT is not set \(the endpoint\)"):
        TdmqConnection.from_env()
    clean_env.setenv("TENCENTCLOUD_SECRET_ID", "AKIDx")
    clean_env.setenv("TENCENTCLOUD_REGION", "ap-guangzhou")
    with pytest.raises(ConfigurationError, match="TDMQ_INSTANCE_ID is not set"):
        CloudApiConfig.from_env()
    clean_env.setenv("TDMQ_ENDPOINT", "ftp://x")
    with pytest.raises(ConfigurationError, match="endpoint must start with http:// or https://"):
        TdmqConnection.from_env(username="u", password="p")


def test_the_cloud_config_reads_tencents_variable_names(clean_env):
    _set(
        clean_env,
        TENCENTCLOUD_SECRET_ID="AKIDexample",
        TENCENTCLOUD_SECRET_KEY="key-not-in-the-graph",
        TENCENTCLOUD_REGION="ap-shanghai",
        TDMQ_INSTANCE_ID="mqtt-abc",
    )
    cloud = CloudApiConfig.from_env(rate=5)
    assert (cloud.secret_id, cloud.region, cloud.instance_id, cloud.endpoint, cloud.rate) == (
        "AKIDexample",
        "ap-shanghai",
        "mqtt-abc",
        None,
        5,
    )
    assert cloud.secret_key.describe() == "env:TENCENTCLOUD_SECRET_KEY"
    assert b"key-not-in-the-graph" not in pickle.dumps(cloud)
    clean_env.setenv("TDMQ_CLOUD_ENDPOINT", "http://127.0.0.1:8080")
    assert CloudApiConfig.from_env().endpoint == "http://127.0.0.1:8080"


def test_the_emulators_environment_reaches_it(emulator, clean_env):
    _set(clean_env, **emulator.environment())
    with TdmqClient(TdmqConnection.from_env(), CloudApiConfig.from_env()) as client:
        assert client.publish_batch([]) == []
        assert len(client.publish(MqttMessage("env/check", b"x"))) == 32  # a message id: the credentials work
        assert client.is_online("nobody-here") is False
        assert client.describe_client("nobody-here") is None
