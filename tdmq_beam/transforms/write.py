"""`WriteToTdmqMqtt`: publish a PCollection as MQTT messages through the HTTP publish API."""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import Lineage

from tdmq_beam.errors import ConfigurationError
from tdmq_beam.option_checks import instance_of, optional
from tdmq_beam.records.mapping import IdempotencyKey, MessageBuilder, MessageDefaults, MessageMapping
from tdmq_beam.service.client import PublishResult
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.service.message import MqttMessage
from tdmq_beam.transforms.base import CallTransform
from tdmq_beam.transforms.batched_calls import FAILED, BatchedCallsFn, Batching, Output
from tdmq_beam.transforms.results import FailedMessage, PublishedMessage, failure_from_error

__all__ = ["WriteToTdmqMqtt", "WriteToTdmqMqttResult"]

_LOGGER = logging.getLogger(__name__)


class WriteToTdmqMqttResult(NamedTuple):
    """What `WriteToTdmqMqtt` returns; ``published, failed = pcoll | WriteToTdmqMqtt(...)`` unpacks it.

    Attributes:
        published: a `PublishedMessage` (element, topic, message id, attempts)
            for every element the service accepted.
        failed: a `FailedMessage` (element, topic, status, error kind, reason,
            attempts) for every other element. Together they account for every
            input element, each in its own timestamp and windows.
    """

    published: beam.PCollection[PublishedMessage]
    failed: beam.PCollection[FailedMessage]


_LINEAGE_TOPICS = 1000
"""Distinct topics a DoFn instance reports as lineage sinks (per-device topics would be millions;
Beam bounds the lineage it keeps anyway)."""


class _PublishFn(BatchedCallsFn):
    """Maps elements to messages and publishes them in concurrent batches (see `BatchedCallsFn`)."""

    COUNTERS = ("published", "failed", "retried", "throttled", "published_without_id")

    def __init__(self, builder: MessageBuilder, **options: Any) -> None:
        super().__init__(**options)
        self._builder = builder
        self._latency = Metrics.distribution(options["namespace"], "publish_latency_ms")
        self._sinks_reported: set[str] = set()

    def start_bundle(self) -> None:
        super().start_bundle()
        self._throttled_before = self.client.aio.throttled

    def prepare(self, element: Any) -> MqttMessage:
        return self._builder.build(element)

    def start(self, work: list[MqttMessage]) -> concurrent.futures.Future:
        return self.client.submit(self.client.aio.publish_batch(work, self.concurrency))

    def output(self, element: Any, message: MqttMessage, result: PublishResult) -> Output:
        self._latency.update(int(result.seconds * 1000))
        if result.error is not None:
            return FAILED, failure_from_error(element, message.topic, result.error, result.attempts)
        topic = message.topic
        if topic not in self._sinks_reported and len(self._sinks_reported) < _LINEAGE_TOPICS:
            self._sinks_reported.add(topic)
            Lineage.sinks().add("tdmq_mqtt", self.instance, topic, subtype="topic")
        return None, PublishedMessage(element, topic, result.message_id, result.attempts)

    def batch_done(self, results: list[PublishResult]) -> None:
        published = sum(1 for result in results if result.error is None)
        self.counters["published"].inc(published)
        self.counters["failed"].inc(len(results) - published)
        retried = sum(max(0, result.attempts - 1) for result in results)  # 0 attempts: refused before sending
        if retried:
            self.counters["retried"].inc(retried)
        without_id = sum(1 for result in results if result.error is None and result.message_id is None)
        if without_id:
            self.counters["published_without_id"].inc(without_id)

    def finish_bundle(self):
        yield from super().finish_bundle()
        throttled = self.client.aio.throttled - self._throttled_before
        if throttled > 0:
            self.counters["throttled"].inc(throttled)


@beam.typehints.with_input_types(Any)
class WriteToTdmqMqtt(CallTransform):
    """Publishes each element as an MQTT message through TDMQ for MQTT's HTTP publish API.

    Elements are `MqttMessage`, or records (dict, Beam Row, NamedTuple, Avro
    record) mapped by ``mapping`` (a `MessageMapping`, e.g. from
    `tdmq_beam.records.avro_mapping`). The keyword defaults below apply where an
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

    Returns a `WriteToTdmqMqttResult` (``published``, ``failed``); with
    ``.with_error_handler(handler)``, ``failed`` also goes to a Beam ``ErrorHandler``.

    Args:
        connection: the instance access point and credentials.
        mapping: how records become messages; not needed for `MqttMessage`.
        qos, retained, client_id, username, user_properties, message_expiry_interval,
            content_type, payload_format_indicator, response_topic, correlation_data:
            transform-level defaults (see `MqttMessage`). Default: none (the
            service's defaults: QoS 1, not retained). ``user_properties`` are
            sent before the element's own.
        idempotency_key: add a deterministic user property (see `IdempotencyKey`).
        defaults: all the transform-level defaults at once, as a `MessageDefaults`
            (instead of the keywords above; giving both is an error).
        batching: how calls are batched: a `Batching`, just its mode (``auto``,
            ``bundle``, ``sharded``) or its settings as a dict. Defaults to
            ``Batching()``; see also ``with_batching``.

    Raises:
        ConfigurationError: an option that cannot work, naming it.
    """

    LABEL = "Publish"
    MAIN = "published"
    Result = WriteToTdmqMqttResult
    main_type = PublishedMessage

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
        defaults: MessageDefaults | None = None,
        batching: Batching | str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            connection,
            batching=batching,
        )
        optional(instance_of, "mapping", mapping, MessageMapping)
        if idempotency_key is True:
            idempotency_key = IdempotencyKey()
        elif idempotency_key is False:
            idempotency_key = None
        if idempotency_key is not None and not isinstance(idempotency_key, IdempotencyKey):
            raise ConfigurationError("idempotency_key must be an IdempotencyKey, True or None")
        keywords = MessageDefaults(
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
        if defaults is not None:
            instance_of("defaults", defaults, MessageDefaults)
            if not keywords.is_empty():
                raise ConfigurationError("give the message defaults either as keywords or as defaults=, not both")
            keywords = defaults
        self._builder = MessageBuilder(mapping, keywords, idempotency_key)

    def new_fn(self, **options: Any) -> _PublishFn:
        return _PublishFn(self._builder, **options)

    def describe(self) -> dict[str, Any]:
        return self._builder.describe()
