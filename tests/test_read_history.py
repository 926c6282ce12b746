"""`ReadTdmqMessageHistory`: a bounded read of the service's stored messages, against the emulator's cloud API."""

from __future__ import annotations

import base64
import datetime
import glob
import pickle
import re
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.timestamp import Timestamp

from tdmq_beam import (
    ConfigurationError,
    DecodeMqttMessages,
    MqttMessage,
    ReadTdmqMessageHistory,
    ReceivedMessage,
    RetryPolicy,
    StoredMessageInfo,
    TdmqClient,
    UserProperty,
)
from tdmq_beam.emulator.message import Message
from tdmq_beam.service.history_pages import HistoryPages, TimeSlice, time_slices
from tdmq_beam.testing import TdmqEmulator

# -- paging, sans I/O ------------------------------------------------------------------------------


def _listed(message_id: str, store_time: int) -> dict:
    return {"MessageId": message_id, "StoreTimestamp": store_time, "OriginTopic": "t", "ClientId": "", "Qos": "1"}


def _page_through(stored: list[dict], part: TimeSlice, page_size: int) -> tuple[list[str], list, int]:
    """Pages over ``stored`` as the service answers (StartTime included, oldest first, at most MaxNumber)."""
    pages, read, unreadable = HistoryPages("t", part, page_size), [], []
    while not pages.done:
        request = pages.request()
        answer = [entry for entry in stored if entry["StoreTimestamp"] >= request["StartTime"]][: request["MaxNumber"]]
        new, overflow = pages.take(answer)
        read.extend(entry["MessageId"] for entry in new)
        if overflow is not None:
            unreadable.append(overflow)
    return read, unreadable, pages.pages


def test_pages_advance_by_store_time_and_skip_what_they_read():
    stored = [_listed(f"m{i}", 1000 + i // 3) for i in range(20)]  # three messages a millisecond
    read, unreadable, calls = _page_through(stored, TimeSlice(1000, 1005), page_size=4)
    assert read == [f"m{i}" for i in range(15)] and not unreadable
    assert calls == 5  # each page past the first repeats the last millisecond of the one before


def test_the_range_end_is_excluded_and_the_start_included():
    stored = [_listed(f"m{i}", 1000 + i) for i in range(10)]
    assert _page_through(stored, TimeSlice(1003, 1007), page_size=2)[0] == ["m3", "m4", "m5", "m6"]
    assert _page_through(stored, TimeSlice(1003, 1003), page_size=2)[0] == []


def test_a_millisecond_fuller_than_a_page_is_reported_and_reading_goes_on():
    stored = [_listed(f"a{i}", 1000) for i in range(5)] + [_listed("b", 1001), _listed("c", 1002)]
    read, unreadable, _ = _page_through(stored, TimeSlice(1000, 1003), page_size=3)
    assert read == ["a0", "a1", "a2", "b", "c"]
    assert [(u.at, u.read) for u in unreadable] == [(1000, 3)]


def test_a_listed_message_without_id_or_time_is_an_error():
    pages = HistoryPages("t", TimeSlice(0, 10), 5)
    with pytest.raises(ValueError, match="no MessageId"):
        pages.take([{"StoreTimestamp": 1}])
    with pytest.raises(ValueError, match="no store time"):
        pages.take([{"MessageId": "x", "StoreTimestamp": True}])


def test_slices_cover_the_range_once():
    assert time_slices(0, 10, 4) == [TimeSlice(0, 4), TimeSlice(4, 8), TimeSlice(8, 10)]


def test_a_stored_message_reads_back_from_its_details():
    details = {
        "Body": base64.b64encode(b"\x00hi").decode(),
        "Qos": "2",
        "OriginTopic": "a/b",
        "Retain": True,
        "StoreTimestamp": 1_700_000_000_123,
        "MessageId": "ID",
        "UserProperties": [{"Key": "k", "Value": "v"}],
        "ContentType": "text/plain",
        "CorrelationData": base64.b64encode(b"c").decode(),
        "MessageExpiryInterval": 60,
        "PayloadFormatIndicator": 0,
        "ResponseTopic": "",
    }
    message = ReceivedMessage.from_stored(details)
    assert message == ReceivedMessage(
        "a/b", b"\x00hi", 2, True, False, [UserProperty("k", "v")], "text/plain", 0, None, b"c", 60,
        Timestamp(micros=1_700_000_000_123_000), "ID",
    )  # fmt: skip
    with pytest.raises(ValueError, match="Body is not base64"):
        ReceivedMessage.from_stored({**details, "Body": "not base64!"})


# -- against the emulator --------------------------------------------------------------------------


def _collect(pcoll: beam.PCollection, path: str, label: str) -> None:
    (
        pcoll
        | f"{label}Pickle" >> beam.Map(lambda value: base64.b64encode(pickle.dumps(value)).decode())
        | f"{label}Write" >> beam.io.WriteToText(path, shard_name_template="", num_shards=1)
    )


def _collected(path: str) -> list:
    values = []
    for name in glob.glob(path + "*"):
        with open(name) as handle:
            values.extend(pickle.loads(base64.b64decode(line)) for line in handle if line.strip())
    return values


def _read(tmp_path, transform: ReadTdmqMessageHistory) -> tuple[list, list]:
    messages_path, failed_path = str(tmp_path / "messages"), str(tmp_path / "failed")
    with beam.Pipeline(options=PipelineOptions([])) as pipeline:
        messages, failed = pipeline | transform
        _collect(messages, messages_path, "Messages")
        _collect(failed, failed_path, "Failed")
    return _collected(messages_path), _collected(failed_path)


def _publish(client: TdmqClient, messages: list[MqttMessage], spacing: float = 0.0) -> list[str]:
    """Publishes one by one, ``spacing`` seconds apart (store times are whole ms, and a page
    cannot go past ``page_size`` messages of one millisecond)."""
    ids = []
    for message in messages:
        ids.append(client.publish(message))
        if spacing:
            time.sleep(spacing)
    return ids


def _pause() -> float:
    """A moment apart from what came before and what comes after (store times are whole ms)."""
    time.sleep(0.005)
    moment = time.time()
    time.sleep(0.005)
    return moment


def _message(topic: str, seq: int) -> MqttMessage:
    return MqttMessage(
        topic, b"%d" % seq, qos=1, user_properties=[("seq", str(seq)), ("seq", "again")],
        content_type="text/plain", correlation_data=b"c%d" % seq, response_topic=f"{topic}/reply",
    )  # fmt: skip


def test_a_range_reads_exactly_what_was_stored_in_it_across_pages_and_slices(tmp_path):
    topics = ["fleet/d0/cmd", "fleet/d1/cmd", "fleet/d2/cmd"]
    with TdmqEmulator() as emu, TdmqClient(emu.connection()) as client:
        _publish(client, [_message(topic, -1) for topic in topics])  # before the range
        start = _pause()
        in_range = [_message(topics[i % 3], i) for i in range(45)]
        ids = _publish(client, in_range[:20], spacing=0.0005)  # at most 2 a millisecond: pages of 4 can go on
        time.sleep(0.02)  # the range spans several slices of 10 ms
        ids += _publish(client, in_range[20:], spacing=0.0005)
        _publish(client, [MqttMessage("other/x", b"not matching")])
        end = _pause()
        _publish(client, [_message(topic, 99) for topic in topics])  # after the range
        read = ReadTdmqMessageHistory(emu.cloud_config(), "fleet/+/cmd", start=start, end=end,
                                      slice_duration=0.01, page_size=4)  # fmt: skip
        messages, failed = _read(tmp_path, read)
        calls = emu.stats()["requests"]
    assert failed == []
    by_id = {message.message_id: message for message in messages}
    assert len(messages) == 45 and set(by_id) == set(ids)
    for message_id, sent in zip(ids, in_range, strict=True):
        got = by_id[message_id]
        assert (got.topic, got.payload, got.qos, got.content_type, got.correlation_data, got.response_topic) == (
            sent.topic, sent.payload, 1, "text/plain", sent.correlation_data, sent.response_topic,
        )  # fmt: skip
        assert got.user_properties == [UserProperty(k, v) for k, v in sent.user_properties]
        assert start * 1000 - 1 <= got.receive_time.micros / 1000 <= end * 1000
    for topic in topics:  # in store order within a topic
        in_order = sorted((m for m in messages if m.topic == topic), key=lambda m: m.receive_time)
        sequence = [int(m.payload) for m in in_order]
        assert sorted(sequence) == [i for i in range(45) if i % 3 == topics.index(topic)]
        times = [m.receive_time for m in sorted(in_order, key=lambda m: int(m.payload))]
        assert times == sorted(times)
    assert calls["cloud:DescribeMessageDetails"]["OK"] == 45  # one call a message
    assert calls["cloud:DescribeMessageByTopic"]["OK"] >= 45 // 4


def test_listing_without_details_costs_one_call_a_page(tmp_path):
    with TdmqEmulator() as emu, TdmqClient(emu.connection()) as client:
        start = _pause()
        ids = _publish(client, [MqttMessage(f"log/{i % 2}", b"x", qos=i % 2) for i in range(30)])
        end = _pause()
        read = ReadTdmqMessageHistory(emu.cloud_config(), "log/#", start=start, end=end, with_details=False)
        listed, failed = _read(tmp_path, read)
        calls = emu.stats()["requests"]
    assert failed == [] and all(isinstance(info, StoredMessageInfo) for info in listed)
    assert sorted(info.message_id for info in listed) == sorted(ids)
    assert {(info.topic, info.qos) for info in listed} == {("log/0", 0), ("log/1", 1)}
    assert calls["cloud:DescribeMessageByTopic"] == {"OK": 1} and "cloud:DescribeMessageDetails" not in calls


def test_replayed_messages_decode_as_live_ones(tmp_path):
    schema = {
        "type": "record", "name": "Reading", "mqtt.topic": "sensor/{site}", "mqtt.payload": {"encoding": "json"},
        "fields": [{"name": "site", "type": "string"}, {"name": "value", "type": "long"}],
    }  # fmt: skip
    with TdmqEmulator() as emu, TdmqClient(emu.connection()) as client:
        start = _pause()
        _publish(client, [MqttMessage("sensor/s1", b'{"value": 1}'), MqttMessage("sensor/s2", b"not json")])
        end = _pause()
        records_path, failed_path = str(tmp_path / "records"), str(tmp_path / "failed")
        with beam.Pipeline(options=PipelineOptions([])) as pipeline:
            messages, _ = pipeline | ReadTdmqMessageHistory(emu.cloud_config(), "sensor/#", start=start, end=end)
            records, failed = messages | DecodeMqttMessages(schema)
            _collect(records, records_path, "Records")
            _collect(failed, failed_path, "Failed")
    assert _collected(records_path) == [{"site": "s1", "value": 1}]
    [failure] = _collected(failed_path)
    assert failure.error_kind == "invalid_record" and failure.element.topic == "sensor/s2"


def test_the_service_rate_limit_is_kept_and_its_refusals_retried(tmp_path):
    with TdmqEmulator(cloud_rate=5) as emu, TdmqClient(emu.connection()) as client:
        start = _pause()
        ids = _publish(client, [MqttMessage("r/a", b"%d" % i) for i in range(10)])
        end = _pause()
        within = ReadTdmqMessageHistory(emu.cloud_config(rate=4), "r/#", start=start, end=end)
        assert len(_read(tmp_path / "within", within)[0]) == 10
        kept = emu.stats()["requests"]["cloud:DescribeMessageDetails"]
        beyond = ReadTdmqMessageHistory(emu.cloud_config(rate=None), "r/#", start=start, end=end)
        messages, failed = _read(tmp_path / "beyond", beyond)
        pushed = emu.stats()["requests"]["cloud:DescribeMessageDetails"]
    assert kept == {"OK": 10}  # at 4/s the emulator's 5/s never refused one
    assert failed == [] and sorted(m.message_id for m in messages) == sorted(ids)
    assert pushed["OK"] == 20 and pushed["RequestLimitExceeded"] > 0  # refused, retried, read


def test_a_millisecond_fuller_than_a_page_goes_to_failed_with_its_range(tmp_path):
    with TdmqEmulator() as emu:
        now = int(time.time() * 1000) - 10_000

        def store() -> None:
            for i in range(5):
                emu._emulator.broker.store.add(Message.create("busy/x", b"%d" % i, 1, False, {}, "c", 0.0), now)
            emu._emulator.broker.store.add(Message.create("busy/x", b"later", 1, False, {}, "c", 0.0), now + 1)

        emu.call(store)
        read = ReadTdmqMessageHistory(emu.cloud_config(), "busy/#", start=now / 1000, end=(now + 5) / 1000,
                                      page_size=2, with_details=False)  # fmt: skip
        listed, failed = _read(tmp_path, read)
    assert len(listed) == 3
    [failure] = failed
    assert failure.element == {"topic_filter": "busy/#", "start": now, "end": now + 1}
    assert failure.error_kind == "page_overflow" and "2 of them were read" in failure.reason
    assert "a page_size of 1024 may" in failure.reason


def test_what_cannot_be_read_goes_to_failed_with_the_range_and_reason(tmp_path):
    with TdmqEmulator() as emu:
        dead = emu.cloud_config(endpoint="http://127.0.0.1:9", retry=RetryPolicy(max_attempts=2, initial_backoff=0))
    read = ReadTdmqMessageHistory(dead, "a/#", start=1000, end=1000 + 7200, slice_duration=3600)
    messages, failed = _read(tmp_path, read)
    assert messages == []
    ranges = sorted((f.element["start"], f.element["end"]) for f in failed)
    assert ranges == [(1_000_000, 4_600_000), (4_600_000, 8_200_000)]
    assert all(f.error_kind == "transport" and "gave up after 2 attempts" in f.reason for f in failed)
    assert all("listing 'a/#' from" in f.reason for f in failed)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"start": 10, "end": 10}, "end must be after start"),
        ({"start": -1, "end": 10}, "start must not be before 1970"),
        ({"start": datetime.datetime(2026, 1, 1), "end": 10}, "timezone-aware datetime"),
        ({"start": 0, "end": "2026-01-01"}, "end must be a timezone-aware datetime, a Beam Timestamp or Unix"),
        ({"start": 0, "end": time.time() + 3600}, "is in the future"),
        ({"start": 0, "end": 10, "page_size": 0}, "page_size must be an int within 1..1024"),
        ({"start": 0, "end": 10, "page_size": 1025}, "page_size must be an int within 1..1024"),
        ({"start": 0, "end": 10**6, "slice_duration": 0.001}, "more than 100000 slices"),
        ({"start": 0, "end": 10, "slice_duration": 0}, "slice_duration must be positive"),
        ({"start": 0, "end": 10, "with_details": 1}, "with_details must be True or False"),
        ({"topic_filter": "a/#/b", "start": 0, "end": 10}, "topic_filter"),
        ({"topic_filter": "", "start": 0, "end": 10}, "topic_filter must be a non-empty str"),
    ],
)
def test_bad_options_are_refused_by_name(emulator, options, message):
    options = {"topic_filter": "a/#", **options}
    with pytest.raises(ConfigurationError, match=message):
        ReadTdmqMessageHistory(emulator.cloud_config(), options.pop("topic_filter"), **options)


def test_times_may_be_datetimes_timestamps_or_seconds(emulator):
    aware = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    read = ReadTdmqMessageHistory(emulator.cloud_config(), "a/#", start=aware, end=Timestamp.of(aware.timestamp() + 1))
    data = {key: item.value for key, item in read.display_data().items()}
    assert (data["start_ms"], data["end_ms"]) == (1_767_225_600_000, 1_767_225_601_000)
    assert data["topic_filter"] == "a/#" and data["with_details"] is True
    assert emulator.secret_key not in repr(data)


def test_entries_sharing_a_millisecond_and_id_keep_the_service_order_and_compare_no_dicts():
    pages = HistoryPages("t", TimeSlice(0, 10), 5)
    new, _ = pages.take([_listed("a", 5), {**_listed("a", 5), "Qos": "0"}, _listed("b", 6)])
    assert [entry["MessageId"] for entry in new] == ["a", "a", "b"] and pages.done


def test_a_listed_entry_with_a_bad_qos_is_an_invalid_answer_for_its_range():
    from tdmq_beam.transforms.history import _ListSlicesFn

    with pytest.raises(ValueError, match="Qos that is not 0, 1 or 2"):
        StoredMessageInfo.from_listed({**_listed("a", 5), "Qos": "7"})

    class _Answers:  # the worker's client, answering one page with a bad entry (pure logic: no service)
        aio = type("Aio", (), {"call_cloud": staticmethod(lambda action, params: (action, params))})()

        @staticmethod
        def run(call):
            return {"Data": [_listed("ok", 3), {**_listed("bad", 4), "Qos": {"x": 1}}]}, 1

    cloud = TdmqEmulator().cloud_config()
    fn = _ListSlicesFn(cloud, "t/#", 5, "tag", "tdmq_beam.test", output_pairs=True)
    fn.client = _Answers()
    [(tag, failure)] = [value.value for value in fn.process(TimeSlice(0, 10))]
    assert tag == "failed" and failure.error_kind == "invalid_answer"
    assert failure.element == {"topic_filter": "t/#", "start": 0, "end": 10} and "Qos" in failure.reason


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("PayloadFormatIndicator", 7, "PayloadFormatIndicator: invalid PayloadFormatIndicator '7': must be 0 or 1"),
        ("Qos", "3", "the answer's Qos: invalid qos '3'"),
        ("MessageExpiryInterval", -1, "MessageExpiryInterval"),
        ("ResponseTopic", "a/+", "ResponseTopic"),
    ],
)
def test_a_stored_property_out_of_its_range_is_named(field, value, message):
    details = {"Body": "", "Qos": "1", "OriginTopic": "a", "StoreTimestamp": 1, "MessageId": "ID", field: value}
    with pytest.raises(ValueError, match=re.escape(message)):
        ReceivedMessage.from_stored(details)
