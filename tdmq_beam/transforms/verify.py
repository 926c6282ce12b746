"""`VerifyStoredMessages`: an audit of a backfill, checking that the service stored each message published."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam

from tdmq_beam.option_checks import field_or_callable, flag
from tdmq_beam.records.fields import as_record, element_to_json, text_getter
from tdmq_beam.service.cloud_api import CloudApiConfig
from tdmq_beam.transforms.batched_calls import Batching, Output
from tdmq_beam.transforms.cloud_lookup import CloudLookup, CloudLookupTransform
from tdmq_beam.transforms.results import FailedMessage

__all__ = ["MissingMessage", "VerifiedMessage", "VerifyResult", "VerifyStoredMessages"]


@dataclass(frozen=True)
class VerifiedMessage:
    """A message the service stored: its id, the topic it is stored under, and when (Unix ms)."""

    element: Any
    message_id: str
    topic: str
    store_time: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "element_json": element_to_json(self.element),
            "message_id": self.message_id,
            "topic": self.topic,
            "store_time": self.store_time,
        }


@dataclass(frozen=True)
class MissingMessage:
    """A message the service does not hold as published, and why."""

    element: Any
    message_id: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"element_json": element_to_json(self.element), "message_id": self.message_id, "reason": self.reason}


class VerifyResult(NamedTuple):
    """What `VerifyStoredMessages` returns; ``verified, missing, failed = published | VerifyStoredMessages(cloud)``.

    Attributes:
        verified: a `VerifiedMessage` for every message the service stored as published.
        missing: a `MissingMessage` for every message it does not hold (or holds under another topic).
        failed: a `FailedMessage` for every element that could not be checked (no message id,
            a refused or failed call), with the reason.
    """

    verified: beam.PCollection[VerifiedMessage]
    missing: beam.PCollection[MissingMessage]
    failed: beam.PCollection[FailedMessage]


class _StoredMessageLookup(CloudLookup):
    action = "DescribeMessageDetails"
    not_found = ("ResourceNotFound.Message",)

    def __init__(self, message_id: Callable[[Any], str], topic: str | None, check_topic: bool) -> None:
        self._message_id = message_id
        self._topic_field = topic
        self._check_topic = check_topic

    def request(self, element: Any) -> dict[str, Any]:
        return {"MessageId": self._message_id(element)}

    def result(self, element: Any, response: dict[str, Any] | None) -> Output:
        message_id = self._message_id(element)
        if response is None:
            reason = "the service holds no message with this id (never stored, or past the instance's retention)"
            return "missing", MissingMessage(element, message_id, reason)
        stored_topic = str(response.get("OriginTopic") or "")
        if self._check_topic and self._topic_field is not None:
            published = as_record(element).get(self._topic_field)
            if published is not None and published != stored_topic:
                reason = f"stored under topic {stored_topic!r}, published to {published!r}"
                return "missing", MissingMessage(element, message_id, reason)
        return None, VerifiedMessage(element, message_id, stored_topic, int(response.get("StoreTimestamp") or 0))

    def describe(self, element: Any) -> str:
        return f"verifying message {self._message_id(element)!r}"

    def display_data(self) -> dict[str, Any]:
        return {"check_topic": self._check_topic}


@beam.typehints.with_input_types(Any)
class VerifyStoredMessages(CloudLookupTransform):
    """Checks that the service stored each published message, by its message id (``DescribeMessageDetails``).

    Give it the ``published`` output of `WriteToTdmqMqtt` (or any records with a
    message id). One call per element, within ``cloud.rate`` per worker process
    (20/s by default, the service's limit per action): about 20 messages a second
    for the whole job, so verify a sample of a large backfill, or give it time.

    Args:
        cloud: cloud API credentials and the instance.
        message_id: the field holding the message id (default ``message_id``), or a callable.
        topic: the field holding the topic it was published to (default ``topic``), or None.
        check_topic: a message stored under another topic than ``topic`` says is
            ``missing``. Defaults to True.
        batching: how calls are batched: a `Batching`, just its mode (``auto``,
            ``bundle``, ``sharded``) or its settings as a dict. Defaults to ``Batching()``.

    Returns a `VerifyResult` (``verified``, ``missing``, ``failed``).

    Raises:
        ConfigurationError: an option that cannot work, naming it.
    """

    LABEL = "Verify"
    MAIN = "verified"
    main_type = VerifiedMessage
    OUTPUTS = {"missing": MissingMessage}
    Result = VerifyResult

    def __init__(
        self,
        cloud: CloudApiConfig,
        *,
        message_id: str | Callable[[Any], str] = "message_id",
        topic: str | None = "topic",
        check_topic: bool = True,
        batching: Batching | str | Mapping[str, Any] | None = None,
    ) -> None:
        field_or_callable("message_id", message_id)
        if topic is not None:
            field_or_callable("topic", topic)
        lookup = _StoredMessageLookup(
            text_getter(message_id, "the message id"), topic, flag("check_topic", check_topic)
        )
        super().__init__(cloud, lookup, batching=batching)
