"""Result records of the transforms: what was done (`PublishedMessage`) and what was not (`FailedMessage`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tdmq_beam.errors import TdmqError
from tdmq_beam.records.fields import element_to_json

__all__ = ["FailedMessage", "PublishedMessage", "failure_from_error"]


@dataclass(frozen=True)
class PublishedMessage:
    """An element published: the service's message id and the attempts it took.

    ``message_id`` is None when the service accepted the message (200) without an
    ``X-Message-Id``: it is published all the same, and was not sent again.
    """

    element: Any
    topic: str
    message_id: str | None
    attempts: int

    def as_dict(self) -> dict[str, Any]:
        """The record of the ``published_message.avsc`` schema."""
        return {
            "element_json": element_to_json(self.element),
            "topic": self.topic,
            "message_id": self.message_id,
            "attempts": self.attempts,
        }


@dataclass(frozen=True)
class FailedMessage:
    """An element not published (or not acted on), with a reason a person can act on.

    Attributes:
        element: the input element, unchanged.
        topic: the topic it was meant for, when it got that far.
        status: HTTP status of the last answer, or None (validation, transport).
        error_kind: a stable short name: ``invalid_record``, ``invalid_message``,
            ``authentication``, ``rate_limited``, ``server_error``, ``transport``, ...
        reason: what went wrong, and after how many attempts.
        attempts: requests made for it (0 when it failed before any).
    """

    element: Any
    topic: str | None
    status: int | None
    error_kind: str
    reason: str
    attempts: int

    def as_dict(self) -> dict[str, Any]:
        """The record of the ``failed_message.avsc`` schema."""
        return {
            "element_json": element_to_json(self.element),
            "topic": self.topic,
            "status": self.status,
            "error_kind": self.error_kind,
            "reason": self.reason,
            "attempts": self.attempts,
        }


def failure_from_error(
    element: Any, topic: str | None, error: TdmqError, attempts: int | None = None, context: str | None = None
) -> FailedMessage:
    """The failure record for an error, the reason saying whether retries ran out.

    Args:
        attempts: requests made; defaults to the error's own count.
        context: what was being done, put before the reason (``looking up client 'x'``).
    """
    if attempts is None:
        attempts = error.attempts
    reason = str(error)
    if attempts > 1:
        reason = f"gave up after {attempts} attempts: {reason}"
    if context:
        reason = f"{context}: {reason}"
    return FailedMessage(element, topic, error.status, error.kind, reason, attempts)
