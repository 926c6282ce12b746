"""Sentinel secrets never appear in clear text: reprs, str, display data, errors, logs, pickles."""

from __future__ import annotations

import logging
import pickle
import traceback

import pytest

from tdmq_beam import CloudApiConfig, MqttMessage, RetryPolicy, Secret, TdmqClient, TdmqConnection, TdmqError
from tdmq_beam.errors import ConfigurationError
from tdmq_beam.testing import TdmqEmulator

PASSWORD = "SENTINEL-PASSWORD-7f3a"
SECRET_KEY = "SENTINEL-SECRETKEY-7f3a"
TOKEN = "SENTINEL-TOKEN-7f3a"
KEY_PASSWORD = "SENTINEL-KEYPASS-7f3a"
SENTINELS = (PASSWORD, SECRET_KEY, TOKEN, KEY_PASSWORD)


def assert_clean(text: str | bytes, where: str) -> None:
    blob = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    for sentinel in SENTINELS:
        assert sentinel.encode() not in blob, f"{sentinel} leaked through {where}"


def every_formatting(value: object) -> list[tuple[str, str | bytes]]:
    formats: list[tuple[str, str | bytes]] = [("repr", repr(value)), ("str", str(value)), ("format", f"{value}")]
    if hasattr(value, "display_data"):
        formats.append(("display_data", repr(value.display_data())))
    formats.append(("pickle", pickle.dumps(value)))
    if isinstance(value, BaseException):
        formats.append(("traceback", "".join(traceback.format_exception(value))))
        formats.append(("args", repr(value.args)))
    return formats


def configs(emulator=None) -> list[object]:
    endpoint = emulator.http_url if emulator else "http://127.0.0.1:1"
    return [
        TdmqConnection(endpoint, username="user0", password=PASSWORD),
        TdmqConnection(endpoint, username="user0", password=Secret.value(PASSWORD)),
        TdmqConnection("https://127.0.0.1:1", client_cert="c.pem", client_key="k.pem", key_password=KEY_PASSWORD),
        CloudApiConfig(secret_id="AKIDexample", secret_key=SECRET_KEY, region="r", instance_id="i", token=TOKEN),
        Secret.value(PASSWORD),
    ]


@pytest.mark.parametrize("index", range(5))
def test_configs_formatted_every_way(index):
    value = configs()[index]
    for where, text in every_formatting(value):
        assert_clean(text, f"{type(value).__name__} {where}")


def test_value_secrets_still_work_after_pickling():
    connection = pickle.loads(pickle.dumps(TdmqConnection("http://h", username="u", password=PASSWORD)))
    assert connection.password.resolve() == PASSWORD
    config = pickle.loads(
        pickle.dumps(CloudApiConfig(secret_id="AKID", secret_key=SECRET_KEY, region="r", instance_id="i"))
    )
    assert config.secret_key.resolve() == SECRET_KEY


def test_reference_secrets_pickle_as_references_only(monkeypatch, tmp_path):
    monkeypatch.setenv("TDMQ_SENTINEL", PASSWORD)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET_KEY)
    by_reference = [
        TdmqConnection("http://h", username="u", password=Secret.env("TDMQ_SENTINEL")),
        CloudApiConfig(secret_id="AKID", secret_key=Secret.file(secret_file), region="r", instance_id="i"),
    ]
    for value in by_reference:
        blob = pickle.dumps(value)
        assert_clean(blob, "pickle of a reference")
        assert b"TDMQ_SENTINEL" in blob or str(secret_file).encode() in blob
    assert by_reference[0].password.resolve() == PASSWORD


def test_every_error_path_keeps_secrets_out(caplog):
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    no_retry = RetryPolicy(max_attempts=2, initial_backoff=0.01)
    with TdmqEmulator(users={"user0": "right-password"}, cloud_rate=1) as emu:
        wrong = emu.connection(password=PASSWORD, retry=no_retry)
        cloud = emu.cloud_config(secret_key=SECRET_KEY, token=TOKEN, retry=no_retry)
        with TdmqClient(wrong, cloud) as client:
            for call in (
                lambda: client.publish(MqttMessage("x", b"x")),
                lambda: client.is_online("x"),
                lambda: client.set_keepalive("x", 60),
                lambda: client.set_keepalive("x", 5),
                lambda: client.describe_client("x"),
            ):
                with pytest.raises(TdmqError) as caught:
                    call()
                errors.append(caught.value)
        emu.set_faults(1.0, ("500",))
        with TdmqClient(emu.connection(username="user0", password="right-password", retry=no_retry)) as client:
            with pytest.raises(TdmqError) as caught:
                client.publish(MqttMessage("x", b"x"))
            errors.append(caught.value)
    refused = TdmqConnection("http://127.0.0.1:9", username="u", password=PASSWORD, retry=no_retry)
    with TdmqClient(refused) as client:
        with pytest.raises(TdmqError) as caught:
            client.publish(MqttMessage("x", b"x"))
        errors.append(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        TdmqClient(TdmqConnection("http://h", username="u", password=Secret.env("TDMQ_UNSET_SENTINEL")))
    errors.append(caught.value)
    with pytest.raises(ValueError) as caught:
        TdmqConnection(f"http://user0:{PASSWORD}@host", username="u", password="p")
    errors.append(caught.value)

    kinds = {type(error).__name__ for error in errors}
    assert {"AuthenticationError", "InvalidRequestError", "CloudApiError", "ServerError", "TransportError",
            "ConfigurationError"} <= kinds  # fmt: skip
    for error in errors:
        for where, text in every_formatting(error):
            assert_clean(text, f"{type(error).__name__} {where}")
    assert_clean(caplog.text, "logs")


def test_a_password_in_clear_to_another_host_is_warned_of_once_without_the_password(caplog):
    from tdmq_beam.hosts import is_loopback

    secret = "clear-text-" + "pw" * 8
    with caplog.at_level(logging.WARNING, logger="tdmq_beam.service.connection"):
        TdmqConnection(
            "http://10.20.30.40:8080", username="u", password=secret, mqtt_endpoint="mqtt://10.20.30.40:1883"
        )
        TdmqConnection("http://10.20.30.40:8080", username="u", password=secret)  # already warned of
        TdmqConnection("https://10.20.30.41", username="u", password=secret, mqtt_endpoint="mqtts://10.20.30.41")
        TdmqConnection("http://127.0.0.1:8080", username="u", password=secret, mqtt_endpoint="mqtt://localhost:1")
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2, warnings
    assert "10.20.30.40 goes over the network in clear (http): use https://" in warnings[0]
    assert "(mqtt): use mqtts://" in warnings[1]
    assert secret not in caplog.text
    assert all(map(is_loopback, ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "a.localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.0.0.1", "example.com", "localhost.example.com", ""]))


def test_the_emulator_knows_when_it_runs_with_published_credentials():
    from tdmq_beam.emulator.config import EmulatorConfig

    assert EmulatorConfig().has_default_credentials()
    assert EmulatorConfig(users={"ops": "long-random"}).has_default_credentials()  # the cloud secret is the default
    assert not EmulatorConfig(users={"ops": "long-random"}, secret_key="another").has_default_credentials()
