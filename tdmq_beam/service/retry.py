"""The one retry policy every call of the client uses, and the clock it waits on."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tdmq_beam.errors import ConfigurationError, TdmqError
from tdmq_beam.option_checks import non_negative, positive, positive_int

__all__ = ["SYSTEM_CLOCK", "Clock", "RetryPolicy"]

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff, full jitter and Retry-After.

    Retryable errors (429, 5xx, connection refused or reset, timeouts) are
    tried again; others fail at once. The wait before attempt ``n + 1`` is a
    random value in ``[0, min(max_backoff, initial_backoff * multiplier**(n-1))]``,
    but never less than the server's Retry-After.

    Args:
        max_attempts: attempts in all, the first included. Defaults to 5.
        initial_backoff: seconds; the cap of the first wait. Defaults to 0.2.
        max_backoff: seconds; the cap of any computed wait. Defaults to 10.
        multiplier: growth of the cap per attempt. Defaults to 2.
        deadline: seconds from the first attempt after which no new attempt
            starts. Defaults to 120.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 10.0
    multiplier: float = 2.0
    deadline: float = 120.0

    def __post_init__(self) -> None:
        positive_int("max_attempts", self.max_attempts)
        non_negative("initial_backoff", self.initial_backoff, unit=" seconds")
        non_negative("max_backoff", self.max_backoff, unit=" seconds")
        if non_negative("multiplier", self.multiplier) < 1:
            raise ConfigurationError(f"multiplier must be at least 1, got {self.multiplier!r}")
        positive("deadline", self.deadline, unit=" seconds")

    @classmethod
    def none(cls) -> RetryPolicy:
        """No retries: one attempt."""
        return cls(max_attempts=1)

    def backoff(self, attempt: int, error: TdmqError, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        wait = (rng or random).uniform(0, cap)
        if error.retry_after is not None:
            wait = max(wait, error.retry_after)
        return wait

    async def run(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        on_retry: Callable[[TdmqError], None] | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> tuple[T, int]:
        """Runs ``call`` until it succeeds or the policy gives up.

        Args:
            call: one attempt.
            on_retry: told of each error that will be retried.
            clock: time and sleeping (default: the event loop's); tests give a
                fake one, so that backoffs take no time.
            rng: the jitter's random source (default: the module's).

        Returns:
            (the result, the number of attempts made).

        Raises:
            TdmqError: the last error, its ``attempts`` set to the attempts made.
        """
        clock = clock or SYSTEM_CLOCK
        started = clock.now()
        attempt = 1
        while True:
            try:
                return await call(), attempt
            except TdmqError as error:
                error.attempts = attempt
                if not error.retryable or attempt >= self.max_attempts:
                    raise
                wait = self.backoff(attempt, error, rng)
                if clock.now() - started + wait > self.deadline:
                    raise
                if on_retry is not None:
                    on_retry(error)
                _LOGGER.debug("attempt %d failed (%s); retrying in %.2fs", attempt, error, wait)
                await clock.sleep(wait)
                attempt += 1


class Clock:
    """Time as the client sees it: ``now`` (monotonic seconds), ``wall`` (Unix seconds) and ``sleep``.

    The one seam through which the retry, Retry-After and throttling logic
    meets time, so tests can run it with no sleeping.
    """

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = Clock()
