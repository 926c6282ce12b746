"""Stopping a job with Ctrl-C (SIGINT) or SIGTERM: safely the first time, at once the second.

The first signal asks the job's reads to end after what they have read
(`tdmq_beam.transforms.graceful_stop`): requests in flight finish (each within
its retry policy), results and the journal are written, the summary says
``stopped: yes`` and the job exits 130. A second signal exits 130 at once;
the journal (``tdmq_beam_pipelines.journal``) still holds every command
published before it but those of the batches in flight. No traceback either way: the handlers replace Python's
KeyboardInterrupt for the job's run, on the main thread only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from tdmq_beam.transforms.graceful_stop import clear_stop, request_stop, stop_requested

__all__ = ["EXIT_STOPPED", "run_stoppably", "stop_on_signals"]

EXIT_STOPPED = 130
"""Exit status of a job stopped by a signal (128 + SIGINT, as shells report it)."""

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(program: str) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM stop the job safely (then at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread (a job run from a test's thread)
        return
    clear_stop()

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop_requested():
            print(f"{program}: {name} again: stopping at once (the journal has what was written)", file=sys.stderr)
            sys.stderr.flush()
            os._exit(EXIT_STOPPED)
        print(f"{program}: {name}: stopping after what is in flight (again to stop at once)", file=sys.stderr)
        request_stop()

    previous = {signum: signal.signal(signum, handle) for signum in _SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_stoppably(program: str, job: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``job()``'s summary, run under `stop_on_signals`, with ``stopped``: whether a signal ended it."""
    with stop_on_signals(program):
        summary = job()
    summary["stopped"] = stop_requested()
    return summary
