"""Waiting for state another process or thread changes, instead of sleeping a guessed while."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(read: Callable[[], T], until: Callable[[T], bool], *, timeout: float = 10.0, every: float = 0.02) -> T:
    """Calls ``read`` every ``every`` s until ``until`` holds for what it returns, or ``timeout`` s pass.

    Returns the last value read either way, so the caller's assert shows what was there: a broker
    sees a DISCONNECT a moment after the client has sent it, later still on a loaded machine.
    """
    deadline = time.monotonic() + timeout
    value = read()
    while not until(value) and time.monotonic() < deadline:
        time.sleep(every)
        value = read()
    return value
