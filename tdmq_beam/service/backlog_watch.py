"""The backlog of a shared subscription, polled from the cloud API in the background.

A reader asks how far behind its subscription is on Beam's thread, where it
must not wait on the network; so each worker process polls
``DescribeSharedSubscriptionLag`` once per subscription in a thread of its
own, every ``interval`` seconds, and readers read the last figure. The
thread stops once no reader has asked for ``3 * interval`` seconds (a
finished read) and starts again with the next reader. A failed poll keeps
the last figure and is logged once per distinct error; the read never fails
for it. No Beam here: `tdmq_beam.transforms.sized_read` turns the figure into
the size of Beam's restrictions.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tdmq_beam.errors import TdmqError
from tdmq_beam.service.client import TdmqClient
from tdmq_beam.service.cloud_api import CloudApiConfig

__all__ = ["BACKLOG_WATCHES", "BacklogSettings", "BacklogWatches", "SubscriptionBacklog"]

_LOGGER = logging.getLogger(__name__)

FIRST_POLL_WAIT = 2.0
"""Seconds the first reader of a subscription waits for the first figure (later ones never wait)."""


@dataclass(frozen=True)
class BacklogSettings:
    """Where to ask for a read's backlog, and how often.

    Attributes:
        cloud: the cloud API credentials (their secrets resolve on the worker).
        expressions: the read's ``$share/{group}/{filter}`` subscriptions; the backlog is their sum.
        interval: seconds between polls, per worker process.
    """

    cloud: CloudApiConfig
    expressions: tuple[str, ...]
    interval: float

    @property
    def key(self) -> tuple[str, str, tuple[str, ...]]:
        return self.cloud.region, self.cloud.instance_id, self.expressions


class SubscriptionBacklog:
    """One subscription's backlog as last polled, and the mean size of the messages read from it.

    Attributes:
        messages: the service's ``Lag`` summed over the expressions; None before the first answer.
        failures: polls that failed, in all.
    """

    def __init__(self, settings: BacklogSettings, *, on_stop: Callable[[SubscriptionBacklog], None]) -> None:
        self.settings = settings
        self.messages: int | None = None
        self.failures = 0
        self._on_stop = on_stop
        self._read_messages = 0
        self._read_bytes = 0
        self._wanted_at = time.monotonic()
        self._lock = threading.Lock()
        self._answered = threading.Event()
        self._stop = threading.Event()
        self._last_error = ""
        self._thread = threading.Thread(target=self._run, name="tdmq-beam-backlog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_for_first(self, timeout: float) -> bool:
        return self._answered.wait(timeout)

    def want(self) -> None:
        """A reader still reads: keep polling."""
        self._wanted_at = time.monotonic()

    def observe(self, messages: int, size_bytes: int) -> None:
        """``messages`` more were read, of ``size_bytes`` payload bytes in all."""
        with self._lock:
            self._read_messages += messages
            self._read_bytes += size_bytes

    def split_bytes(self, num_readers: int) -> int | None:
        """One reader's share of the backlog in bytes, at the mean payload size read so far (one
        byte a message before any is read): what Java's readers report as ``getSplitBacklogBytes``.
        None when the backlog is not known."""
        messages = self.messages
        if messages is None:
            return None
        with self._lock:
            mean = self._read_bytes / self._read_messages if self._read_messages else 1.0
        return math.ceil(messages / num_readers * max(mean, 1.0))

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        interval = self.settings.interval
        client = None
        try:
            client = TdmqClient(None, self.settings.cloud)
            while True:
                self._poll(client)
                if self._stop.wait(interval) or time.monotonic() - self._wanted_at > 3 * interval:
                    return
        except Exception as error:  # a backlog figure never fails the read
            self._failed(error)
        finally:
            self._answered.set()
            if client is not None:
                client.close()
            self._on_stop(self)

    def _poll(self, client: TdmqClient) -> None:
        try:
            messages = sum(client.shared_subscription_lag(expression) for expression in self.settings.expressions)
        except TdmqError as error:
            self._failed(error)
        else:
            self.messages = messages
        self._answered.set()

    def _failed(self, error: BaseException) -> None:
        self.failures += 1
        text = f"{type(error).__name__}: {error}"
        if text != self._last_error:  # once per distinct error, not every interval
            self._last_error = text
            _LOGGER.warning("cannot poll the backlog of %s: %s", ", ".join(self.settings.expressions), text)


class BacklogWatches:
    """The process's polled subscriptions, by (region, instance, expressions)."""

    def __init__(self) -> None:
        self._watches: dict[tuple[str, str, tuple[str, ...]], SubscriptionBacklog] = {}
        self._lock = threading.Lock()

    def watch(self, settings: BacklogSettings, *, first_wait: float = FIRST_POLL_WAIT) -> SubscriptionBacklog:
        """The subscription's backlog, polled from now on; the first caller waits up to
        ``first_wait`` seconds for the first figure."""
        with self._lock:
            backlog = self._watches.get(settings.key)
            if backlog is not None:
                backlog.want()
                return backlog
            backlog = SubscriptionBacklog(settings, on_stop=self._forget)
            self._watches[settings.key] = backlog
            backlog.start()
        backlog.wait_for_first(first_wait)
        return backlog

    def get(self, settings: BacklogSettings) -> SubscriptionBacklog | None:
        with self._lock:
            return self._watches.get(settings.key)

    def stop_all(self) -> None:
        with self._lock:
            watches = list(self._watches.values())
        for backlog in watches:
            backlog.stop()

    def _forget(self, backlog: SubscriptionBacklog) -> None:
        with self._lock:
            if self._watches.get(backlog.settings.key) is backlog:
                del self._watches[backlog.settings.key]


BACKLOG_WATCHES = BacklogWatches()
