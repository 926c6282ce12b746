"""A token bucket: the one rate-limit rule used by the emulator's quotas and the connector's TPS caps."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """Allows ``rate`` events per second on average, and bursts of up to ``burst``.

    Not thread-safe: each event loop or thread keeps its own bucket.

    Args:
        rate: tokens added per second; must be positive.
        burst: most tokens held at once. Defaults to ``max(rate, 1)``, one
            second's worth.
        clock: monotonic clock in seconds. Defaults to `time.monotonic`.
    """

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, 1.0))
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst}")
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_take(self) -> bool:
        """Takes one token if there is one; returns whether it did."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def reserve(self) -> float:
        """Takes one token now or in the future; returns the seconds to wait before using it."""
        self._refill()
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
