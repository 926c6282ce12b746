"""`MessageStore`: what the broker accepted, kept for the message query actions of the cloud API.

The service stores the messages it accepts and lets the cloud API look them up
by id (``DescribeMessageDetails``), by topic filter from a start time
(``DescribeMessageByTopic``) and by first-level topic over a time range
(``DescribeMessageList``). The store keeps them in the order accepted, which
is also store-time order, bounded by count (the oldest go first) and by age.
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

from tdmq_beam.emulator.message import Message
from tdmq_beam.mqtt.topics import topic_matches

__all__ = ["MessageStore", "StoredMessage"]


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as stored: its id, its store time (Unix ms) and the message (with the properties
    the service forwards, and the Message Expiry Interval it was published with)."""

    message_id: str
    store_ms: int
    message: Message


class MessageStore:
    """The stored messages, in the order accepted.

    Args:
        max_messages: messages kept; past it the oldest go. 0 keeps none (ids are still issued).
        max_age: seconds a message is kept.
    """

    def __init__(self, max_messages: int, max_age: float) -> None:
        self.max_messages = max_messages
        self.max_age_ms = int(max_age * 1000)
        self._prefix = os.urandom(8).hex().upper()
        self._ids = itertools.count(1)
        self._entries: list[StoredMessage] = []
        self._times: list[int] = []  # store_ms of each entry, for bisecting
        self._head = 0  # entries before it are dropped; compacted now and then
        self._by_id: dict[str, StoredMessage] = {}
        self.dropped = 0

    def new_id(self) -> str:
        """A message id in the service's form (32 hex digits), unique in this emulator."""
        return f"{self._prefix}{next(self._ids):016X}"

    def add(self, message: Message, store_ms: int) -> str:
        """Stores ``message`` and returns its id."""
        message_id = self.new_id()
        if self.max_messages == 0:
            return message_id
        if self._times and store_ms < self._times[-1]:
            store_ms = self._times[-1]  # the wall clock stepped back: store times never go backwards
        entry = StoredMessage(message_id, store_ms, message)
        self._entries.append(entry)
        self._times.append(store_ms)
        self._by_id[message_id] = entry
        self.expire(store_ms)
        return message_id

    def expire(self, now_ms: int) -> None:
        """Drops what is past the count or the age."""
        oldest_kept = now_ms - self.max_age_ms
        while len(self._by_id) > self.max_messages or (
            self._head < len(self._times) and self._times[self._head] < oldest_kept
        ):
            del self._by_id[self._entries[self._head].message_id]
            self._head += 1
            self.dropped += 1
        if self._head > 4096 and self._head * 2 > len(self._entries):
            del self._entries[: self._head]
            del self._times[: self._head]
            self._head = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, message_id: str) -> StoredMessage | None:
        return self._by_id.get(message_id)

    def since(self, start_ms: int, end_ms: int | None = None) -> Iterator[StoredMessage]:
        """The messages stored at ``start_ms`` or later (and before ``end_ms``), oldest first."""
        first = max(self._head, bisect.bisect_left(self._times, start_ms, lo=self._head))
        last = len(self._times) if end_ms is None else bisect.bisect_left(self._times, end_ms, lo=first)
        return itertools.islice(self._entries, first, last)

    def matching(self, topic_filter: str, start_ms: int, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` messages on topics matching ``topic_filter``, from ``start_ms`` on, oldest first."""
        return list(
            itertools.islice(
                (entry for entry in self.since(start_ms) if topic_matches(topic_filter, entry.message.topic)), limit
            )
        )
