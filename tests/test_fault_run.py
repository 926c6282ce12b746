"""benchmarks/fault_run.py at a small size: exact accounting under 500/429/reset/delay faults."""

from __future__ import annotations

import os
import re
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "fault_run.py")


def test_fault_run_loses_nothing():
    run = subprocess.run(
        [sys.executable, SCRIPT, "--n", "800", "--fault-rate", "0.15", "--timeout", "0.5", "--delay", "1.0"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = re.search(
        r"^RESULT fault_run input=(\d+) published=(\d+) failed=(\d+) delivered=(\d+) lost=(\d+)$", run.stdout, re.M
    )
    assert result, run.stdout
    given, published, failed, delivered, lost = map(int, result.groups())
    assert given == 800 and published + failed == 800
    assert delivered == published and lost == 0
    assert "retries" in run.stdout and "CHECK FAILED" not in run.stdout
