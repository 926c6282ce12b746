"""The message query actions of the cloud API, answered from the broker's `MessageStore`.

Parameters and answers as ``tencentcloud-sdk-python-mqtt`` 3.1 models them
(``DescribeMessageByTopicRequest`` and the rest, Version 2024-05-16). Where
Tencent's documentation leaves a detail open, the emulator's choice is in
docs/emulator.md: ``Body`` and ``CorrelationData`` are base64 (the service's
encoding of binary bodies is not documented), answers list the oldest first,
``ProduceTime`` is UTC, and ``FilterExpression`` (a jq program) is refused.
"""

from __future__ import annotations

import datetime
import uuid
from collections import OrderedDict
from typing import Any

from tdmq_beam.emulator.cloud_errors import CloudError, integer_parameter, string_parameter
from tdmq_beam.emulator.message_store import MessageStore, StoredMessage
from tdmq_beam.mqtt.codec import Prop
from tdmq_beam.mqtt.topics import topic_filter_error, topic_matches
from tdmq_beam.rules.stored_messages import BY_TOPIC_LIMIT, DETAIL_FIELDS, LIST_LIMIT, encode_bytes

__all__ = ["MessageQuery"]

_TASKS_KEPT = 256


def _produce_time(store_ms: int) -> str:
    return datetime.datetime.fromtimestamp(store_ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _summary(entry: StoredMessage) -> dict[str, Any]:
    """A message as DescribeMessageByTopic lists it (``MQTTMessage``)."""
    return {
        "MessageId": entry.message_id,
        "ClientId": entry.message.publisher or "",
        "Qos": str(entry.message.qos),
        "StoreTimestamp": entry.store_ms,
        "OriginTopic": entry.message.topic,
    }


def _details(entry: StoredMessage) -> dict[str, Any]:
    """A message as DescribeMessageDetails answers it."""
    message = entry.message
    properties = dict(message.properties)
    if message.expiry_interval is not None:
        properties[Prop.MESSAGE_EXPIRY_INTERVAL] = message.expiry_interval
    answer: dict[str, Any] = {
        "Body": encode_bytes(message.payload),
        "UserProperties": [{"Key": key, "Value": value} for key, value in properties.get(Prop.USER_PROPERTY, ())],
        "StoreTimestamp": entry.store_ms,
        "MessageId": entry.message_id,
        "ClientId": message.publisher or "",
        "Qos": str(message.qos),
        "OriginTopic": message.topic,
        "SubscriptionIdentifier": "",
        "Retain": message.retain,
    }
    for field, prop in DETAIL_FIELDS.items():
        value = properties.get(prop.mqtt_property)
        if isinstance(value, bytes):
            value = encode_bytes(value)
        answer[field] = value
    return answer


def _start_time(params: dict[str, Any], name: str) -> int:
    if params.get(name) is None:
        raise CloudError("MissingParameter", f"the parameter {name} is required (Unix milliseconds)")
    value = integer_parameter(params, name, 0)
    if value < 0:
        raise CloudError("InvalidParameterValue", f"{name} must be Unix milliseconds, got {value}")
    return value


class MessageQuery:
    """DescribeMessageByTopic, DescribeMessageList and DescribeMessageDetails over one store."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store
        self._tasks: OrderedDict[str, list[StoredMessage]] = OrderedDict()

    def by_topic(self, params: dict[str, Any]) -> dict[str, Any]:
        topic = string_parameter(params, "Topic")
        problem = topic_filter_error(topic)
        if problem:
            raise CloudError("InvalidParameterValue", f"Topic: {problem}")
        start = _start_time(params, "StartTime")
        number = integer_parameter(params, "MaxNumber", 100)
        if not 1 <= number <= BY_TOPIC_LIMIT:
            raise CloudError("InvalidParameterValue", f"MaxNumber must be 1..{BY_TOPIC_LIMIT}, got {number}")
        if params.get("FilterExpression"):
            raise CloudError("InvalidParameterValue", "the emulator does not evaluate FilterExpression (jq)")
        return {"Data": [_summary(entry) for entry in self.store.matching(topic, start, number)]}

    def time_range(self, params: dict[str, Any]) -> dict[str, Any]:
        offset = integer_parameter(params, "Offset", 0)
        limit = integer_parameter(params, "Limit", 20)
        if offset < 0:
            raise CloudError("InvalidParameterValue", f"Offset must be 0 or more, got {offset}")
        if not 1 <= limit <= LIST_LIMIT:
            raise CloudError("InvalidParameterValue", f"Limit must be 1..{LIST_LIMIT}, got {limit}")
        task_id = string_parameter(params, "TaskRequestId", required=False)
        if task_id:
            found = self._tasks.get(task_id)
            if found is None:
                raise CloudError("InvalidParameterValue", f"TaskRequestId {task_id!r} is unknown or has expired")
            self._tasks.move_to_end(task_id)
        else:
            found = self._new_task(params)
            task_id = str(uuid.uuid4())
            self._tasks[task_id] = found
            while len(self._tasks) > _TASKS_KEPT:
                self._tasks.popitem(last=False)
        page = found[offset : offset + limit]
        return {
            "TotalCount": len(found),
            "Data": [
                {
                    "MsgId": entry.message_id,
                    "Tags": "",
                    "Keys": "",
                    "ProducerAddr": entry.message.publisher or "",
                    "ProduceTime": _produce_time(entry.store_ms),
                    "Qos": str(entry.message.qos),
                }
                for entry in page
            ],
            "TaskRequestId": task_id,
        }

    def _new_task(self, params: dict[str, Any]) -> list[StoredMessage]:
        topic = string_parameter(params, "Topic")
        if "/" in topic or topic_filter_error(topic):
            raise CloudError("InvalidParameterValue", f"Topic must be a first-level topic (no '/'), got {topic!r}")
        start = _start_time(params, "StartTime")
        end = _start_time(params, "EndTime")
        if end < start:
            raise CloudError("InvalidParameterValue", f"EndTime {end} is before StartTime {start}")
        return [entry for entry in self.store.since(start, end + 1) if entry.message.topic.split("/", 1)[0] == topic]

    def details(self, params: dict[str, Any]) -> dict[str, Any]:
        message_id = string_parameter(params, "MessageId")
        subscription = string_parameter(params, "Subscription", required=False)
        entry = self.store.get(message_id)
        if entry is None or (subscription and not topic_matches(subscription, entry.message.topic)):
            raise CloudError("ResourceNotFound.Message", f"message {message_id!r} does not exist")
        return _details(entry)
