"""One way to check options: the checks themselves, and the mistakes they catch in every constructor."""

from __future__ import annotations

import pytest

from tdmq_beam import (
    Batching,
    CloudApiConfig,
    ConfigurationError,
    DeduplicateMessages,
    EnrichWithClientStatus,
    ReadFromTdmqMqtt,
    RetryPolicy,
    SetClientKeepAlive,
    TdmqConnection,
    WriteToTdmqMqtt,
)
from tdmq_beam.emulator.config import EmulatorConfig
from tdmq_beam.option_checks import (
    field_or_callable,
    flag,
    int_in_range,
    non_empty_text,
    non_negative,
    one_of,
    optional,
    positive,
    positive_int,
)


@pytest.mark.parametrize(
    ("check", "args", "words"),
    [
        (positive_int, (True,), "n must be a positive int, got True"),
        (positive_int, (0,), "n must be a positive int, got 0"),
        (positive_int, (1.5,), "positive int"),
        (int_in_range, (False, 0, 5), "n must be an int within 0..5, got False"),
        (int_in_range, (6, 0, 5), "within 0..5"),
        (positive, (True,), "n must be positive, got True"),
        (positive, ("10",), "n must be positive, got '10'"),
        (positive, (0,), "must be positive"),
        (non_negative, (-1,), "n must not be negative, got -1"),
        (one_of, (True, (0, 1, 2)), "n must be 0, 1 or 2, got True"),
        (one_of, ("x", ("a", "b")), "n must be 'a' or 'b', got 'x'"),
        (flag, (1,), "n must be True or False, got 1"),
        (non_empty_text, ("",), "n must be a non-empty str"),
        (field_or_callable, (3,), "n must name a field or be a callable"),
    ],
)
def test_each_check_refuses_and_names_the_option(check, args, words):
    with pytest.raises(ConfigurationError) as caught:
        check("n", *args)
    assert words in str(caught.value)


def test_checks_pass_good_values_through():
    assert positive_int("n", 3) == 3 and int_in_range("n", 5, 0, 5) == 5
    assert positive("n", 2) == 2.0 and isinstance(positive("n", 2), float)
    assert one_of("n", 1, (0, 1)) == 1 and flag("n", False) is False
    assert optional(positive, "n", None) is None and optional(positive, "n", 1) == 1.0


def _connection(**options) -> TdmqConnection:
    return TdmqConnection(
        "http://127.0.0.1:9", username="u", password="p", mqtt_endpoint="mqtt://127.0.0.1:1883", **options
    )


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: ReadFromTdmqMqtt(_connection(), "a/#", client_id_prefix="p", num_readers=True), "num_readers"),
        (lambda: ReadFromTdmqMqtt(_connection(), "a/#", client_id_prefix="p", qos=True), "qos"),
        (lambda: ReadFromTdmqMqtt(_connection(), "a/#", client_id_prefix="p", max_read_time="5"), "max_read_time"),
        (lambda: WriteToTdmqMqtt(_connection(), batching={"batch_size": True}), "batch_size"),
        (lambda: WriteToTdmqMqtt(_connection(), batching=Batching(max_pending_batches=0)), "max_pending_batches"),
        (lambda: WriteToTdmqMqtt(_connection()).with_batching(mode="sometimes"), "batching"),
        (lambda: WriteToTdmqMqtt(_connection(), batching={"size": 5}), "unknown setting"),
        (lambda: WriteToTdmqMqtt(_connection()).with_progress(0), "progress interval"),
        (lambda: EnrichWithClientStatus(_connection(), max_cached=True), "max_cached"),
        (lambda: EnrichWithClientStatus(_connection(), on_failure="ignore"), "on_failure"),
        (lambda: SetClientKeepAlive(_connection(), interval=True), "interval"),
        (lambda: DeduplicateMessages(True), "window"),
        (lambda: _connection(timeout="10"), "timeout"),
        (lambda: _connection(max_in_flight=True), "max_in_flight"),
        (lambda: RetryPolicy(max_attempts=True), "max_attempts"),
        (
            lambda: CloudApiConfig(secret_id="a", secret_key="k", region="r", instance_id="i", rate=True),
            "rate",
        ),
        (lambda: EmulatorConfig(max_inflight=True), "max_inflight"),
        (lambda: EmulatorConfig(mqtt_port=70000), "mqtt_port"),
    ],
)
def test_every_constructor_refuses_with_a_configuration_error_naming_the_option(make, named):
    with pytest.raises(ConfigurationError) as caught:
        make()
    assert named in str(caught.value)
