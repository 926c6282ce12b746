"""The service's stored messages: the emulator's store and message query actions, and the audit of a backfill."""

from __future__ import annotations

import base64
import dataclasses

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from tdmq_beam import (
    CloudApiError,
    CloudLookup,
    CloudLookupTransform,
    ConfigurationError,
    MessageMapping,
    MissingMessage,
    MqttMessage,
    PublishedMessage,
    TdmqClient,
    VerifiedMessage,
    VerifyStoredMessages,
    WriteToTdmqMqtt,
)
from tdmq_beam.emulator.message import Message
from tdmq_beam.emulator.message_store import MessageStore
from tdmq_beam.rules.cloud_actions import CLOUD_ACTIONS
from tdmq_beam.testing import TdmqEmulator
from tests.beam_helpers import read_json_lines, to_json_lines
from tests.test_emulator_cloud import sdk_call


def _sdk(emu: TdmqEmulator, action: str, params: dict) -> dict:
    """One call through Tencent's own SDK (CommonClient)."""
    row = CLOUD_ACTIONS[action]
    return sdk_call(emu, (row.service, row.version, action), params)


def _message(topic: str) -> Message:
    return Message.create(topic, b"x", 1, False, {}, "c", 0.0)


# -- the store (pure logic) ------------------------------------------------------------------


def test_store_keeps_order_and_drops_the_oldest_past_its_count():
    store = MessageStore(max_messages=3, max_age=3600)
    ids = [store.add(_message(f"t/{i}"), 1000 + i) for i in range(5)]
    assert len(set(ids)) == 5 and all(len(i) == 32 for i in ids)
    assert len(store) == 3 and store.get(ids[0]) is None and store.dropped == 2
    assert [entry.message_id for entry in store.since(0)] == ids[2:]
    assert [entry.message.topic for entry in store.matching("t/+", 1003, 10)] == ["t/3", "t/4"]
    assert [entry.message_id for entry in store.since(1002, 1004)] == ids[2:4]


def test_store_drops_by_age_and_never_goes_back_in_time():
    store = MessageStore(max_messages=100, max_age=1)
    old = store.add(_message("a"), 10_000)
    stepped_back = store.add(_message("b"), 9_000)  # the wall clock stepped back
    assert store.get(stepped_back).store_ms == 10_000
    store.add(_message("c"), 11_001)
    assert store.get(old) is None and len(store) == 1


def test_store_of_zero_keeps_nothing_but_issues_ids():
    store = MessageStore(max_messages=0, max_age=60)
    assert store.add(_message("a"), 1) != store.add(_message("a"), 2)
    assert len(store) == 0


# -- the emulator's message query actions --------------------------------------------------------


def _published(emu: TdmqEmulator, messages: list[MqttMessage]) -> list[str]:
    with TdmqClient(emu.connection()) as client:
        return [client.publish(message) for message in messages]


def test_every_cloud_action_is_served_by_the_emulator():
    """Each row of the action table is answered (an answer, or the error for what the call lacks)."""
    with TdmqEmulator() as emu:
        for action in CLOUD_ACTIONS:
            try:
                answer = _sdk(emu, action, {"InstanceId": "mqtt-local"})
            except TencentCloudSDKException as error:
                assert error.get_code() == "MissingParameter", action
            else:
                assert "Clients" in answer, action


def test_details_answer_what_was_published_with_the_id_http_publish_returned():
    with TdmqEmulator() as emu:
        sent = MqttMessage(
            "orders/7/status", b"\x00\xffbinary", qos=2, retained=True, content_type="application/octet-stream",
            response_topic="orders/7/reply", correlation_data=b"req-7", message_expiry_interval=600,
            user_properties=(("k", "v"), ("k", "w")), payload_format_indicator=0,
        )  # fmt: skip
        [message_id] = _published(emu, [sent])
        details = _sdk(emu, "DescribeMessageDetails", {"InstanceId": "mqtt-local", "MessageId": message_id})
        assert details["MessageId"] == message_id and details["OriginTopic"] == "orders/7/status"
        assert base64.b64decode(details["Body"]) == b"\x00\xffbinary"
        assert details["Qos"] == "2" and details["Retain"] is True
        assert details["UserProperties"] == [{"Key": "k", "Value": "v"}, {"Key": "k", "Value": "w"}]
        assert details["ContentType"] == "application/octet-stream" and details["ResponseTopic"] == "orders/7/reply"
        assert base64.b64decode(details["CorrelationData"]) == b"req-7"
        assert details["MessageExpiryInterval"] == 600 and details["PayloadFormatIndicator"] == 0
        assert details["StoreTimestamp"] > 1_700_000_000_000


def test_messages_published_over_mqtt_are_stored_too(paho, unique):
    with TdmqEmulator() as emu:
        publisher = paho(unique("pub"), port=emu.mqtt_port)
        publisher.publish("mqtt/stored", b"one", qos=1)  # waits for the PUBACK
        found = _sdk(emu, "DescribeMessageByTopic", {"InstanceId": "mqtt-local", "Topic": "mqtt/#", "StartTime": 0})
        assert [m["OriginTopic"] for m in found["Data"]] == ["mqtt/stored"]


def test_by_topic_and_list_page_through_a_range_oldest_first():
    with TdmqEmulator() as emu:
        ids = _published(emu, [MqttMessage(f"fleet/d{i % 3}/cmd", b"%d" % i) for i in range(60)])
        _published(emu, [MqttMessage("other/x", b"no")])
        by_topic = _sdk(
            emu, "DescribeMessageByTopic",
            {"InstanceId": "mqtt-local", "Topic": "fleet/d1/+", "StartTime": 0, "MaxNumber": 5},
        )["Data"]  # fmt: skip
        assert [m["MessageId"] for m in by_topic] == ids[1::3][:5]
        pages, task, offset = [], "", 0
        while True:
            params = {"InstanceId": "mqtt-local", "Offset": offset, "Limit": 50}
            params.update({"TaskRequestId": task} if task else {"Topic": "fleet", "StartTime": 0, "EndTime": 2**45})
            page = _sdk(emu, "DescribeMessageList", params)
            assert page["TotalCount"] == 60
            task, offset = page["TaskRequestId"], offset + len(page["Data"])
            pages.append([item["MsgId"] for item in page["Data"]])
            if offset >= page["TotalCount"]:
                break
        assert [len(page) for page in pages] == [50, 10] and [i for page in pages for i in page] == ids


@pytest.mark.parametrize(
    ("action", "params", "code"),
    [
        ("DescribeMessageDetails", {"MessageId": "0" * 32}, "ResourceNotFound.Message"),
        ("DescribeMessageDetails", {}, "MissingParameter"),
        ("DescribeMessageByTopic", {"Topic": "a/#/b", "StartTime": 0}, "InvalidParameterValue"),
        ("DescribeMessageByTopic", {"Topic": "a", "StartTime": 0, "MaxNumber": 1025}, "InvalidParameterValue"),
        ("DescribeMessageByTopic", {"Topic": "a"}, "MissingParameter"),
        ("DescribeMessageList", {"Topic": "a/b", "StartTime": 0, "EndTime": 1}, "InvalidParameterValue"),
        ("DescribeMessageList", {"Topic": "a", "StartTime": 5, "EndTime": 1}, "InvalidParameterValue"),
        ("DescribeMessageList", {"Topic": "a", "StartTime": 0, "EndTime": 1, "Limit": 51}, "InvalidParameterValue"),
        ("DescribeMessageList", {"TaskRequestId": "gone"}, "InvalidParameterValue"),
    ],
)
def test_bad_queries_get_the_service_error_codes(emulator, action, params, code):
    with pytest.raises(TencentCloudSDKException) as caught:
        _sdk(emulator, action, {"InstanceId": "mqtt-local", **params})
    assert caught.value.get_code() == code


# -- a cloud-only client, and the audit as a transform ---------------------------------------------


def _create(published: list[PublishedMessage]) -> beam.PTransform:
    """``beam.Create`` of PublishedMessages, made inside the pipeline (Create would take them for
    Rows, having ``as_dict``)."""
    fields = [dataclasses.astuple(record) for record in published]
    return "Published" >> (beam.Create(fields) | beam.MapTuple(PublishedMessage))


def test_a_client_for_the_cloud_api_alone(emulator):
    with TdmqClient(cloud=emulator.cloud_config()) as client:
        with pytest.raises(CloudApiError) as caught:
            client.call_cloud("DescribeMessageDetails", {"InstanceId": "mqtt-local", "MessageId": "x"})
        assert caught.value.code == "ResourceNotFound.Message"
        with pytest.raises(ConfigurationError, match="cloud API only"):
            client.publish(MqttMessage("a", b"b"))
        with pytest.raises(ConfigurationError, match="unknown cloud API action"):
            client.call_cloud("DescribeEverything", {})
    with pytest.raises(ConfigurationError, match="needs a TdmqConnection, a CloudApiConfig"):
        TdmqClient()


def test_a_backfill_verified_end_to_end(tmp_path):
    records = [{"device": f"d{i}", "body": f"cmd {i}"} for i in range(30)]
    forged = [
        PublishedMessage({"forged": 1}, "fleet/d1", "F" * 32, 1),  # an id the service never issued
        PublishedMessage({"no_id": 1}, "fleet/d2", None, 1),  # accepted without X-Message-Id
    ]
    with TdmqEmulator() as emu:
        with beam.Pipeline(options=PipelineOptions([])) as pipeline:
            written = (
                pipeline
                | beam.Create(records)
                | WriteToTdmqMqtt(emu.connection(), mapping=MessageMapping(topic="fleet/{device}", payload="body"))
            )
            extra = pipeline | "Forged" >> _create(forged)
            published = (written.published, extra) | beam.Flatten()
            verified, missing, failed = published | VerifyStoredMessages(emu.cloud_config())
            assert verified.element_type is VerifiedMessage and missing.element_type is MissingMessage
            for name, pcoll in (("verified", verified), ("missing", missing), ("failed", failed)):
                to_json_lines(pcoll, str(tmp_path / name), name)
        calls = emu.stats()["requests"]["cloud:DescribeMessageDetails"]
    verified_rows = read_json_lines(str(tmp_path / "verified"))
    assert sorted(row["topic"] for row in verified_rows) == sorted(f"fleet/d{i}" for i in range(30))
    assert all(row["store_time"] > 0 and len(row["message_id"]) == 32 for row in verified_rows)
    [missing_row] = read_json_lines(str(tmp_path / "missing"))
    assert missing_row["message_id"] == "F" * 32 and "holds no message with this id" in missing_row["reason"]
    [failed_row] = read_json_lines(str(tmp_path / "failed"))
    assert failed_row["error_kind"] == "invalid_record" and "message id" in failed_row["reason"]
    # No call for the element without an id; a call the emulator's own 20/s refused was retried.
    assert calls["OK"] == 30 and calls["ResourceNotFound.Message"] == 1
    assert set(calls) <= {"OK", "ResourceNotFound.Message", "RequestLimitExceeded"}


def test_a_message_stored_under_another_topic_is_missing(tmp_path):
    with TdmqEmulator() as emu:
        [message_id] = _published(emu, [MqttMessage("real/topic", b"x")])
        claims = [
            PublishedMessage({}, "claimed/topic", message_id, 1),
            PublishedMessage({}, "real/topic", message_id, 1),
        ]
        with beam.Pipeline() as pipeline:
            result = pipeline | _create(claims) | VerifyStoredMessages(emu.cloud_config())
            to_json_lines(result.missing, str(tmp_path / "missing"), "missing")
            to_json_lines(result.verified, str(tmp_path / "verified"), "verified")
    [missing] = read_json_lines(str(tmp_path / "missing"))
    assert "stored under topic 'real/topic', published to 'claimed/topic'" in missing["reason"]
    assert len(read_json_lines(str(tmp_path / "verified"))) == 1


def test_cloud_lookup_options_are_checked(emulator):
    class Unknown(CloudLookup):
        action = "DescribeNothing"

    with pytest.raises(ConfigurationError, match="not a known cloud API action"):
        CloudLookupTransform(emulator.cloud_config(), Unknown())
    with pytest.raises(ConfigurationError, match="cloud"):
        VerifyStoredMessages(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="check_topic"):
        VerifyStoredMessages(emulator.cloud_config(), check_topic="yes")  # type: ignore[arg-type]
    display = VerifyStoredMessages(emulator.cloud_config()).display_data()
    assert display["action"].value == "DescribeMessageDetails" and "secret_key" in display
    assert emulator.cloud_config().secret_key.resolve() not in repr(display)
