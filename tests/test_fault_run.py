"""benchmarks/fault_run.py at a small size: exact accounting under 500/429/reset/delay faults."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "fault_run.py")


@pytest.mark.parametrize(
    ("rate", "kinds", "some_fail"),
    [
        ("0.15", "500,429,reset,delay", False),  # the realistic mix
        ("0.6", "500,reset", True),  # so many faults that some messages exhaust their 5 attempts
    ],
)
def test_fault_run_loses_nothing(rate, kinds, some_fail):
    run = subprocess.run(
        [sys.executable, SCRIPT, "--n", "600", "--fault-rate", rate, "--fault-kinds", kinds,
         "--timeout", "0.5", "--delay", "1.0"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = re.search(
        r"^RESULT fault_run input=(\d+) published=(\d+) failed=(\d+) delivered=(\d+) lost=(\d+)$", run.stdout, re.M
    )
    assert result, run.stdout
    given, published, failed, delivered, lost = map(int, result.groups())
    assert given == 600 and published + failed == 600
    assert delivered == published and lost == 0
    if some_fail:
        assert failed > 0  # and the script checked each exhausted its retries
    assert "retries" in run.stdout and "CHECK FAILED" not in run.stdout
