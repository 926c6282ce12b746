"""Many calls at once, bounded: the one worker pool behind every batch call of the client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from tdmq_beam.errors import TdmqError

__all__ = ["run_bounded"]

T = TypeVar("T")
R = TypeVar("R")


async def run_bounded(items: Sequence[T], call: Callable[[T], Awaitable[R]], concurrency: int) -> list[R | TdmqError]:
    """Runs ``call`` on every item, at most ``concurrency`` at a time, in one event loop.

    A few long-lived workers pull from one shared iterator (cheaper than a task
    per item). A `TdmqError` is the result of its item, never raised: one
    item's failure does not stop the others.

    Returns:
        One result (or the `TdmqError` that stopped it) per item, in input order.
    """
    results: list[R | TdmqError | None] = [None] * len(items)
    jobs = iter(enumerate(items))

    async def worker() -> None:
        for index, item in jobs:
            try:
                results[index] = await call(item)
            except TdmqError as error:
                results[index] = error

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(items))))))
    return results  # type: ignore[return-value]  # every slot is filled
