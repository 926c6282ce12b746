"""A process-wide request to stop reading, for a job stopped by a signal: the reads end as if
their input were over, so everything read so far goes through and the pipeline finishes.

`ReadFromTdmqMqtt`'s readers end their read at the next message (as at ``max_read_time``); a
job's own sources check `stop_requested` too. Nothing here touches signals: a job's command
calls `request_stop` from its handler (``tdmq_beam_pipelines.signals``). Per worker process: on
a distributed runner each worker must be told (Dataflow's drain does what this does, for it).
"""

from __future__ import annotations

import threading

__all__ = ["clear_stop", "request_stop", "stop_requested"]

_STOP = threading.Event()


def request_stop() -> None:
    """Asks every read in this process to end after what it has read."""
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    """Forgets a request (for the next run in the same process)."""
    _STOP.clear()
