"""`ReadTdmqMessageHistory`: a bounded read of the messages the service stored over a time range.

MQTT has no replay: a message no session held is gone for a subscriber. The
service stores what it accepts, and its cloud API lists the stored messages of
a topic filter from a start time (``DescribeMessageByTopic``, up to 1,024 a
call) and gives one message whole by id (``DescribeMessageDetails``). The read
cuts the range into time slices, spread over the workers (``Reshuffle``);
each slice is paged through in store-time order (`HistoryPages`); with details,
each listed message is then fetched whole by `CloudLookupTransform`, which
brings the per-action rate limit, retries, concurrency and ``failed`` with it.
"""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics.metric import Lineage, Metrics
from apache_beam.transforms.display import DisplayDataItem
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from tdmq_beam.errors import ConfigurationError, TdmqError
from tdmq_beam.mqtt.topics import topic_filter_error
from tdmq_beam.option_checks import flag, instance_of, int_in_range, non_empty_text, positive
from tdmq_beam.records.received_message import ReceivedMessage
from tdmq_beam.rules.stored_messages import BY_TOPIC_LIMIT, QOS, detail_value
from tdmq_beam.service.cloud_api import CloudApiConfig
from tdmq_beam.service.history_pages import HistoryPages, TimeSlice, Unreadable, time_slices
from tdmq_beam.transforms.batched_calls import FAILED, Batching, Output
from tdmq_beam.transforms.cloud_lookup import CloudLookup, CloudLookupTransform
from tdmq_beam.transforms.outputs import output, par_do_with_outputs
from tdmq_beam.transforms.results import FailedMessage, failure_from_error
from tdmq_beam.transforms.worker_client import WorkerClientFn

__all__ = ["HistoryResult", "ReadTdmqMessageHistory", "StoredMessageInfo"]

MAX_SLICES = 100_000
"""The most time slices one read is cut into (a guard against a slice length far too short)."""
_FUTURE_SLACK_S = 60.0


class StoredMessageInfo(NamedTuple):
    """A stored message as the service lists it, without its body (``with_details=False``).

    Attributes:
        message_id: the service's id (the ``X-Message-Id`` of its publish).
        topic: the topic it was published to.
        client_id: the client that published it ("" for the HTTP publish API).
        qos: the QoS it was published at.
        store_time: when the service stored it (also its event time).
    """

    message_id: str
    topic: str
    client_id: str
    qos: int
    store_time: Timestamp

    @classmethod
    def from_listed(cls, entry: Mapping[str, Any]) -> StoredMessageInfo:
        """The message a ``DescribeMessageByTopic`` entry describes (`HistoryPages` checked its id and time).

        Raises:
            ValueError: its ``Qos`` is not 0, 1 or 2.
        """
        try:
            qos = detail_value(QOS, "Qos", entry.get("Qos") or 0)
        except ValueError:
            raise ValueError(f"a listed message has a Qos that is not 0, 1 or 2: {entry!r:.200}") from None
        return cls(
            message_id=str(entry["MessageId"]),
            topic=str(entry.get("OriginTopic") or ""),
            client_id=str(entry.get("ClientId") or ""),
            qos=qos,
            store_time=Timestamp(micros=int(entry["StoreTimestamp"]) * 1000),
        )


beam.coders.registry.register_coder(StoredMessageInfo, beam.coders.RowCoder)


class HistoryResult(NamedTuple):
    """What `ReadTdmqMessageHistory` returns; ``messages, failed = pipeline | ReadTdmqMessageHistory(...)``.

    Attributes:
        messages: a `ReceivedMessage` per stored message (a `StoredMessageInfo` with
            ``with_details=False``), timestamped with its store time.
        failed: a `FailedMessage` for each part that could not be read: a time range
            (element ``{"topic_filter", "start", "end"}``, Unix ms, end excluded) or one
            listed message whose details could not be read (element: its `StoredMessageInfo`).
    """

    messages: beam.PCollection[Any]
    failed: beam.PCollection[FailedMessage]


def _unix_ms(name: str, value: Any) -> int:
    """A time option as Unix milliseconds."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ConfigurationError(f"{name} must be a timezone-aware datetime (the service keeps UTC), got {value}")
        return int(value.timestamp() * 1000)
    if isinstance(value, Timestamp):
        return value.micros // 1000
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value * 1000)
    raise ConfigurationError(
        f"{name} must be a timezone-aware datetime, a Beam Timestamp or Unix seconds, got {type(value).__name__}"
    )


def _range_element(topic_filter: str, start: int, end: int) -> dict[str, Any]:
    return {"topic_filter": topic_filter, "start": start, "end": end}


class _ListSlicesFn(WorkerClientFn):
    """Pages through each time slice, emitting a `StoredMessageInfo` per stored message."""

    def __init__(
        self, cloud: CloudApiConfig, topic_filter: str, page_size: int, tag: str, namespace: str, output_pairs: bool
    ) -> None:
        super().__init__(None, cloud, tag)
        self._instance_id = cloud.instance_id
        self._topic_filter = topic_filter
        self._page_size = page_size
        self._output_pairs = output_pairs
        self._pages = Metrics.counter(namespace, "pages")
        self._listed = Metrics.counter(namespace, "listed")
        self._failed = Metrics.counter(namespace, "failed")

    def report_lineage(self) -> None:
        Lineage.sources().add("tencentcloud_mqtt", self._instance_id, subtype="DescribeMessageByTopic")

    def process(self, part: TimeSlice) -> Iterator[Any]:
        pages = HistoryPages(self._topic_filter, part, self._page_size)
        params = {"InstanceId": self._instance_id}
        while not pages.done:
            cursor = pages.cursor
            try:
                response, _ = self.client.run(
                    self.client.aio.call_cloud("DescribeMessageByTopic", {**params, **pages.request()})
                )
                listed, unreadable = pages.take(response.get("Data") or [])
                infos = [StoredMessageInfo.from_listed(entry) for entry in listed]
            except (TdmqError, ValueError) as error:
                yield self._out(FAILED, self._range_failure(cursor, part.end, error), part.start)
                return
            self._pages.inc()
            self._listed.inc(len(infos))
            for info in infos:
                yield self._out(None, info, info.store_time)
            if unreadable is not None:
                yield self._out(FAILED, self._overflow(unreadable), unreadable.at)

    def _out(self, tag: str | None, value: Any, at: Timestamp | int) -> Any:
        timestamp = at if isinstance(at, Timestamp) else Timestamp(micros=at * 1000)
        return output(tag, value, self._output_pairs, lambda emitted: TimestampedValue(emitted, timestamp))

    def _range_failure(self, start: int, end: int, error: TdmqError | ValueError) -> FailedMessage:
        self._failed.inc()
        element = _range_element(self._topic_filter, start, end)
        context = f"listing {self._topic_filter!r} from {start} to {end} (Unix ms)"
        if isinstance(error, TdmqError):
            return failure_from_error(element, None, error, context=context)
        return FailedMessage(element, None, None, "invalid_answer", f"{context}: {error}", 1)

    def _overflow(self, unreadable: Unreadable) -> FailedMessage:
        self._failed.inc()
        reason = (
            f"more than {self._page_size} messages on {self._topic_filter!r} were stored in the millisecond "
            f"{unreadable.at}: {unreadable.read} of them were read, and DescribeMessageByTopic cannot page past "
            f"the first {self._page_size} of one millisecond"
        )
        if self._page_size < BY_TOPIC_LIMIT:
            reason += f" (a page_size of {BY_TOPIC_LIMIT} may)"
        element = _range_element(self._topic_filter, unreadable.at, unreadable.at + 1)
        return FailedMessage(element, None, None, "page_overflow", reason, 1)


class _StoredDetailsLookup(CloudLookup):
    action = "DescribeMessageDetails"
    not_found = ("ResourceNotFound.Message",)

    def request(self, element: StoredMessageInfo) -> dict[str, Any]:
        return {"MessageId": element.message_id}

    def result(self, element: StoredMessageInfo, response: dict[str, Any] | None) -> Output:
        if response is None:
            reason = (
                f"message {element.message_id!r} was listed but gone before its details were read "
                "(it passed the instance's retention during the read)"
            )
            return FAILED, FailedMessage(element, element.topic, None, "not_found", reason, 1)
        try:
            return None, ReceivedMessage.from_stored(response)
        except ValueError as error:
            reason = f"reading message {element.message_id!r}: {error}"
            return FAILED, FailedMessage(element, element.topic, None, "invalid_answer", reason, 1)

    def describe(self, element: StoredMessageInfo) -> str:
        return f"reading message {element.message_id!r}"


class _FetchDetails(CloudLookupTransform):
    """Each listed message whole, by id."""

    LABEL = "Details"
    MAIN = "messages"
    main_type = ReceivedMessage
    Result = HistoryResult

    @property
    def metrics_namespace(self) -> str:
        return f"tdmq_beam.{ReadTdmqMessageHistory.__name__}"  # one namespace for the whole read


class ReadTdmqMessageHistory(beam.PTransform):
    """Reads the messages the service stored on ``topic_filter`` between ``start`` and ``end``.

    A bounded source: it reads what the service holds when it runs (within the
    instance's retention) and ends. The range is cut into slices of
    ``slice_duration`` that workers read in parallel; each slice is listed with
    ``DescribeMessageByTopic`` (one call per ``page_size`` messages) and, with
    details, each message is fetched whole with ``DescribeMessageDetails`` (one
    call per message). Each action keeps to ``cloud.rate`` calls a second per
    worker process (20 by default, the service's documented limit per action):
    with details that caps the read at about 20 messages a second per process,
    so set ``cloud.rate`` to 20 divided by the worker processes to stay within
    the limit across all of them. Answers of ``RequestLimitExceeded`` are
    retried under ``cloud.retry`` all the same.

    Messages come timestamped with their store time; a PCollection has no order,
    so order by ``receive_time`` (the store time) where order matters: within a
    topic it is the order the service stored them in.

    Args:
        cloud: cloud API credentials and the instance.
        topic_filter: a topic or a topic filter (``+``, ``#``).
        start: the range's start, included: a timezone-aware `datetime`, a Beam
            `Timestamp`, or Unix seconds.
        end: the range's end, excluded, alike; not in the future.
        with_details: fetch each message whole (payload and properties), as a
            `ReceivedMessage`, so that `DecodeMqttMessages` reads it as it reads live
            messages. False lists them as `StoredMessageInfo` (id, topic, publisher,
            QoS, store time) at one call per page. Defaults to True.
        slice_duration: seconds of the range each slice covers. Defaults to 3600.
        page_size: messages per listing call, 1..1024. Defaults to 1024.
        batching: how the details calls are batched: a `Batching`, its mode or its
            settings as a dict. Defaults to ``Batching()``.

    Returns a `HistoryResult` (``messages``, ``failed``).

    Raises:
        ConfigurationError: an option that cannot work, naming it.
    """

    def __init__(
        self,
        cloud: CloudApiConfig,
        topic_filter: str,
        *,
        start: datetime.datetime | Timestamp | float,
        end: datetime.datetime | Timestamp | float,
        with_details: bool = True,
        slice_duration: float = 3600.0,
        page_size: int = BY_TOPIC_LIMIT,
        batching: Batching | str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._cloud = instance_of("cloud", cloud, CloudApiConfig)
        non_empty_text("topic_filter", topic_filter)
        if problem := topic_filter_error(topic_filter):
            raise ConfigurationError(f"topic_filter: {problem}")
        self._topic_filter = topic_filter
        self._start, self._end = _unix_ms("start", start), _unix_ms("end", end)
        if self._start < 0:
            raise ConfigurationError(f"start must not be before 1970, got {start!r}")
        if self._end <= self._start:
            raise ConfigurationError(f"end must be after start, got start {start!r} and end {end!r}")
        if self._end > (time.time() + _FUTURE_SLACK_S) * 1000:
            raise ConfigurationError(
                f"end {end!r} is in the future: the history holds what the service has stored so far; "
                "read what is still to come with ReadFromTdmqMqtt"
            )
        self._with_details = flag("with_details", with_details)
        self._slice_ms = max(1, int(positive("slice_duration", slice_duration, unit=" seconds") * 1000))
        if -(-(self._end - self._start) // self._slice_ms) > MAX_SLICES:
            raise ConfigurationError(
                f"slice_duration {slice_duration!r} cuts the range into more than {MAX_SLICES} slices: make it longer"
            )
        self._page_size = int_in_range("page_size", page_size, 1, BY_TOPIC_LIMIT, unit=" messages")
        self._details = _FetchDetails(cloud, _StoredDetailsLookup(), batching=batching) if with_details else None
        self._tag = f"{type(self).__name__}-{uuid.uuid4()}"  # one worker-process client per transform

    def expand(self, pbegin: pvalue.PBegin) -> HistoryResult:
        slices = time_slices(self._start, self._end, self._slice_ms)
        parts = (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "Slices" >> beam.FlatMap(lambda _: slices).with_output_types(TimeSlice)
            | "Spread" >> beam.Reshuffle()
        )

        def make_fn(pairs: bool) -> _ListSlicesFn:
            namespace = f"tdmq_beam.{type(self).__name__}"
            return _ListSlicesFn(self._cloud, self._topic_filter, self._page_size, self._tag, namespace, pairs)

        listed = par_do_with_outputs(
            parts, "List", make_fn, "listed", {"listed": StoredMessageInfo, FAILED: FailedMessage}
        )
        if self._details is None:
            return HistoryResult(listed["listed"], listed[FAILED])
        details = listed["listed"] | self._details
        failed = (listed[FAILED], details.failed) | "Failed" >> beam.Flatten()
        return HistoryResult(details.messages, failed)

    def display_data(self) -> dict[str, Any]:
        items: dict[str, Any] = dict(self._cloud.display_data())
        items.update(
            topic_filter=self._topic_filter,
            start_ms=self._start,
            end_ms=self._end,
            with_details=self._with_details,
            slice_duration_ms=self._slice_ms,
            page_size=self._page_size,
        )
        return {key: DisplayDataItem(value, label=key.replace("_", " ").capitalize()) for key, value in items.items()}
