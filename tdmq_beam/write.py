"""`WriteToTdmqMqtt`: publish a PCollection as MQTT messages through the HTTP publish API."""

from __future__ import annotations

import concurrent.futures
import logging
import uuid
from collections.abc import Sequence
from typing import Any, Literal

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.display import DisplayDataItem

from tdmq_beam.batched_calls import FAILED, BatchedCallsFn, BatchingOptions, CallResults
from tdmq_beam.client import PublishResult
from tdmq_beam.connection import TdmqConnection
from tdmq_beam.errors import InvalidMessageError
from tdmq_beam.mapping import IdempotencyKey, MessageBuilder, MessageDefaults, MessageMapping
from tdmq_beam.message import MqttMessage
from tdmq_beam.results import PublishedMessage, failure_from_error

__all__ = ["WriteToTdmqMqtt", "WriteToTdmqMqttResult"]

_LOGGER = logging.getLogger(__name__)

_NAMESPACE = "tdmq_beam.WriteToTdmqMqtt"


class WriteToTdmqMqttResult(CallResults):
    """What `WriteToTdmqMqtt` returns.

    Attributes:
        published: a `PublishedMessage` (element, topic, message id, attempts)
            for every element the service accepted.
        failed: a `FailedMessage` (element, topic, status, error kind, reason,
            attempts) for every other element. Together they account for every
            input element, each in its own timestamp and windows.
    """


class _PublishFn(BatchedCallsFn):
    """Maps elements to messages and publishes them in concurrent batches (see `BatchedCallsFn`)."""

    def __init__(self, connection: TdmqConnection, builder: MessageBuilder, tag: str, **batching: Any) -> None:
        super().__init__(connection, None, tag, **batching)
        self._builder = builder
        self._published = Metrics.counter(_NAMESPACE, "published")
        self._failed = Metrics.counter(_NAMESPACE, "failed")
        self._retried = Metrics.counter(_NAMESPACE, "retried")
        self._throttled = Metrics.counter(_NAMESPACE, "throttled")
        self._latency = Metrics.distribution(_NAMESPACE, "publish_latency_ms")

    def start_bundle(self) -> None:
        super().start_bundle()
        self._throttled_before = self.client.aio.throttled

    def prepare(self, element: Any) -> MqttMessage:
        return self._builder.build(element)

    def reject(self, element: Any, error: InvalidMessageError):
        self._failed.inc()
        yield FAILED, failure_from_error(element, None, error, attempts=0)

    def start(self, work: list[MqttMessage]) -> concurrent.futures.Future:
        return self.client.submit(self.client.aio.publish_batch(work, self.concurrency))

    def outputs(self, element: Any, message: MqttMessage, result: PublishResult):
        self._latency.update(int(result.seconds * 1000))
        if result.error is None:
            yield None, PublishedMessage(element, message.topic, result.message_id, result.attempts)
        else:
            yield FAILED, failure_from_error(element, message.topic, result.error, result.attempts)

    def batch_done(self, results: list[PublishResult]) -> None:
        published = sum(1 for result in results if result.error is None)
        self._published.inc(published)
        self._failed.inc(len(results) - published)
        retried = sum(result.attempts - 1 for result in results)
        if retried:
            self._retried.inc(retried)

    def finish_bundle(self):
        yield from super().finish_bundle()
        throttled = self.client.aio.throttled - self._throttled_before
        if throttled > 0:
            self._throttled.inc(throttled)


@beam.typehints.with_input_types(Any)
@beam.typehints.with_output_types(PublishedMessage)
class WriteToTdmqMqtt(beam.PTransform):
    """Publishes each element as an MQTT message through TDMQ for MQTT's HTTP publish API.

    Elements are `MqttMessage`, or records (dict, Beam Row, NamedTuple, Avro
    record) mapped by ``mapping`` (a `MessageMapping`, e.g. from
    `tdmq_beam.avro_mapping`). The keyword defaults below apply where an
    element does not set a value itself (for `MqttMessage`, where its field is
    None; its qos and retained always apply).

    Many requests are in flight per worker: every DoFn instance in a worker
    process shares one client (event loop and connection pool), bounded by
    ``connection.max_in_flight`` and ``connection.tps`` (both per worker
    process: to keep an instance quota of Q messages/s over W worker processes,
    give ``tps=Q / W``). Retryable failures (429, 5xx, timeouts, resets) are
    retried by ``connection.retry``; after a 429, requests are also held back
    adaptively. What still fails, and what can never succeed (400/401/403/405,
    invalid records), goes to ``failed`` with its reason; no element is lost
    and none raises out of the transform. Delivery is at least once: add an
    ``idempotency_key`` so consumers can drop duplicates that retries create.

    Args:
        connection: the instance access point and credentials.
        mapping: how records become messages; not needed for `MqttMessage`.
        qos, retained, client_id, username, user_properties, message_expiry_interval,
            content_type, payload_format_indicator, response_topic, correlation_data:
            transform-level defaults (see `MqttMessage`). Default: none (the
            service's defaults: QoS 1, not retained). ``user_properties`` are
            sent before the element's own.
        idempotency_key: add a deterministic user property (see `IdempotencyKey`).
        batch_size: elements per concurrent batch. Defaults to 2 x max_in_flight
            (at least 128).
        max_pending_batches: batches in flight per DoFn instance; they finish in
            any order, so a slow call holds up only its own batch. Defaults to 32.
        batching: ``bundle`` batches within bundles; ``sharded`` batches across
            bundles with `GroupIntoBatches.WithShardedKey` (for streaming, where
            bundles are small); ``auto`` (default) picks sharded for unbounded
            input or streaming pipelines.
        max_buffering_duration_secs: with sharded batching, the longest an
            element waits for its batch to fill. Defaults to 1.
    """

    def __init__(
        self,
        connection: TdmqConnection,
        *,
        mapping: MessageMapping | None = None,
        qos: int | None = None,
        retained: bool | None = None,
        client_id: str | None = None,
        username: str | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
        message_expiry_interval: int | None = None,
        content_type: str | None = None,
        payload_format_indicator: int | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | str | None = None,
        idempotency_key: IdempotencyKey | bool | None = None,
        batch_size: int | None = None,
        max_pending_batches: int = 32,
        batching: Literal["auto", "bundle", "sharded"] = "auto",
        max_buffering_duration_secs: float = 1.0,
    ) -> None:
        super().__init__()
        self._batching = BatchingOptions.resolve(
            connection, batch_size, max_pending_batches, batching, max_buffering_duration_secs
        )
        if mapping is not None and not isinstance(mapping, MessageMapping):
            raise ValueError(f"mapping must be a MessageMapping, got {type(mapping).__name__}")
        if idempotency_key is True:
            idempotency_key = IdempotencyKey()
        elif idempotency_key is False:
            idempotency_key = None
        if idempotency_key is not None and not isinstance(idempotency_key, IdempotencyKey):
            raise ValueError("idempotency_key must be an IdempotencyKey, True or None")
        defaults = MessageDefaults(
            qos=qos,
            retained=retained,
            client_id=client_id,
            username=username,
            user_properties=tuple(user_properties),
            message_expiry_interval=message_expiry_interval,
            content_type=content_type,
            payload_format_indicator=payload_format_indicator,
            response_topic=response_topic,
            correlation_data=correlation_data,
        )
        self._connection = connection
        self._builder = MessageBuilder(mapping, defaults, idempotency_key)
        self._tag = f"WriteToTdmqMqtt-{uuid.uuid4()}"

    def expand(self, pcoll: pvalue.PCollection) -> WriteToTdmqMqttResult:
        published, failed = self._batching.apply(
            pcoll, "Publish", lambda **options: _PublishFn(self._connection, self._builder, self._tag, **options),
            main="published",
        )  # fmt: skip
        return WriteToTdmqMqttResult(published, failed)

    def display_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            key: DisplayDataItem(value, label=key.replace("_", " ").capitalize())
            for key, value in self._connection.display_data().items()
        }
        for key, value in self._builder.describe().items():
            data[key] = DisplayDataItem(value if isinstance(value, (str, int, float, bool)) else repr(value), label=key)
        for key, value in self._batching.display_data().items():
            data[key] = DisplayDataItem(value, label=key.replace("_", " ").capitalize())
        return data
