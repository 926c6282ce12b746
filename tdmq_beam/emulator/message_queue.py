"""`MessageQueue`: a session's queue or a shared group's backlog, counting its payload bytes.

The broker bounds what waits for absent or slow clients in messages and in
bytes (``max_queued``, ``max_queued_bytes``): a count alone lets 100,000
messages of 1 MiB each hold 100 GiB. The queue keeps the byte count as items
come and go; the broker decides what to drop (`Broker._enqueue`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Generic, Protocol, TypeVar

__all__ = ["MessageQueue"]


class _Sized(Protocol):
    @property
    def payload_size(self) -> int: ...


T = TypeVar("T", bound=_Sized)


class MessageQueue(Generic[T]):
    """A FIFO of messages or deliveries with the sum of their payload sizes (``bytes``)."""

    __slots__ = ("_items", "bytes")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self.bytes = 0

    def append(self, item: T) -> None:
        self._items.append(item)
        self.bytes += item.payload_size

    def popleft(self) -> T:
        item = self._items.popleft()
        self.bytes -= item.payload_size
        return item

    def extendleft(self, items: Iterable[T]) -> None:
        for item in items:
            self._items.appendleft(item)
            self.bytes += item.payload_size

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)
