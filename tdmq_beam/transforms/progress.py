"""Progress of a long run, logged by each worker process: counts so far, rate, retries, throttling, ETA.

One `Progress` per transform per worker process (every DoFn instance of the
transform in the process adds to it). It logs on the ``tdmq_beam.progress``
logger, at INFO, at most once per ``interval`` seconds, so a backfill of
millions of elements says how it is doing without flooding the console.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["LOGGER_NAME", "Progress", "progress_for"]

LOGGER_NAME = "tdmq_beam.progress"
_LOGGER = logging.getLogger(LOGGER_NAME)

_REGISTRY: dict[str, Progress] = {}
_REGISTRY_LOCK = threading.Lock()


class Progress:
    """Counts one transform's outcomes in this process and logs them now and then.

    Args:
        label: what is counted, e.g. ``WriteToTdmqMqtt``.
        interval: seconds between two log lines at least.
        expected: how many elements this process is expected to handle, for an ETA; None when unknown.
    """

    def __init__(self, label: str, interval: float, expected: int | None = None) -> None:
        self.label = label
        self.interval = interval
        self.expected = expected
        self.done = 0
        self.failed = 0
        self._started = time.monotonic()
        self._logged = self._started
        self._lock = threading.Lock()

    def add(self, done: int, failed: int, retried: int, throttled: int) -> str | None:
        """Adds a finished batch; returns the line it logged, if it was time to log one.

        Args:
            done: elements finished in the batch, failed ones included.
            failed: of those, the ones that failed.
            retried, throttled: the process's totals so far (the worker client counts them).
        """
        with self._lock:
            self.done += done
            self.failed += failed
            now = time.monotonic()
            if now - self._logged < self.interval:
                return None
            self._logged = now
            elapsed = now - self._started
            rate = self.done / elapsed if elapsed > 0 else 0.0
            line = (
                f"{self.label}: {self.done:,} done ({self.failed:,} failed) in {elapsed:,.0f} s, {rate:,.0f}/s; "
                f"{retried:,} retried, {throttled:,} throttled"
            )
            if self.expected and rate > 0 and self.done < self.expected:
                line += f"; about {(self.expected - self.done) / rate:,.0f} s to go"
        _LOGGER.info("%s", line)
        return line


def progress_for(tag: str, label: str, interval: float, expected: int | None = None) -> Progress:
    """The process's `Progress` of the transform ``tag``, made on first use."""
    with _REGISTRY_LOCK:
        progress = _REGISTRY.get(tag)
        if progress is None:
            progress = _REGISTRY[tag] = Progress(label, interval, expected)
        return progress
