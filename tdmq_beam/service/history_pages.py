"""`HistoryPages`: paging ``DescribeMessageByTopic`` through a time range, sans-I/O.

The action has a start time and a page size (at most 1,024) but no end and
no page token: the next page starts at the store time of the last message of
this one, and the messages of that millisecond already read are skipped. A
millisecond holding more messages than a page can never be paged past; its
rest is reported as unreadable, and reading goes on from the next millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tdmq_beam.rules.stored_messages import BY_TOPIC_LIMIT

__all__ = ["HistoryPages", "TimeSlice", "Unreadable", "time_slices"]


@dataclass(frozen=True)
class TimeSlice:
    """A part of a time range, in Unix milliseconds, ``start`` included, ``end`` not."""

    start: int
    end: int


def time_slices(start: int, end: int, length: int) -> list[TimeSlice]:
    """``[start, end)`` cut into slices of ``length`` ms (the last one shorter)."""
    return [TimeSlice(at, min(at + length, end)) for at in range(start, end, length)]


@dataclass(frozen=True)
class Unreadable:
    """A millisecond whose messages outnumber a page: ``read`` of them were read, the rest cannot be."""

    at: int
    read: int


class HistoryPages:
    """Which page to ask for next, and what a page adds.

    Args:
        topic_filter: the ``Topic`` parameter (a topic or a filter).
        part: the range to read.
        page_size: ``MaxNumber``, 1..1024.
    """

    def __init__(self, topic_filter: str, part: TimeSlice, page_size: int = BY_TOPIC_LIMIT) -> None:
        self.topic_filter = topic_filter
        self.part = part
        self.page_size = page_size
        self.cursor = part.start
        self.done = part.start >= part.end
        self.pages = 0
        self._seen: set[str] = set()  # ids read at the cursor's millisecond

    def request(self) -> dict[str, Any]:
        """The parameters of the next call (``InstanceId`` aside)."""
        return {"Topic": self.topic_filter, "StartTime": self.cursor, "MaxNumber": self.page_size}

    def take(self, data: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Unreadable | None]:
        """The messages of a page (``Data``) that are new and within the range, oldest first,
        and a millisecond that cannot be read in full, if this page found one.

        Raises:
            ValueError: an entry without a ``MessageId`` or an integer ``StoreTimestamp``.
        """
        self.pages += 1
        entries = sorted(((_store_time(entry), _message_id(entry), entry) for entry in data), key=_by_time)
        new: list[dict[str, Any]] = []
        for store_time, message_id, entry in entries:
            if store_time >= self.part.end:
                self.done = True
                break
            if store_time > self.cursor or (store_time == self.cursor and message_id not in self._seen):
                new.append(entry)
        if self.done or len(data) < self.page_size:
            self.done = True
            return new, None
        last = entries[-1][0]
        if last == self.cursor and not new:
            unreadable = Unreadable(self.cursor, len(self._seen))
            self.cursor += 1
            self._seen = set()
            self.done = self.cursor >= self.part.end
            return new, unreadable
        if last > self.cursor:
            self._seen = set()
        self._seen.update(message_id for store_time, message_id, _ in entries if store_time == last)
        self.cursor = last
        return new, None


def _by_time(listed: tuple[int, str, dict[str, Any]]) -> int:
    return listed[0]  # stable: the service's order within a millisecond is kept, and entries are never compared


def _store_time(entry: dict[str, Any]) -> int:
    value = entry.get("StoreTimestamp") if isinstance(entry, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise ValueError(f"a listed message has no store time (StoreTimestamp): {entry!r:.200}")
    return int(value)


def _message_id(entry: dict[str, Any]) -> str:
    value = entry.get("MessageId")
    if not isinstance(value, str) or not value:
        raise ValueError(f"a listed message has no MessageId: {entry!r:.200}")
    return value
