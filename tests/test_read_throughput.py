"""benchmarks/read_throughput.py at a small size: every reader reads the whole feed, and the RESULT line is there."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from brokers import need_mosquitto

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "read_throughput.py")


def _run(*args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Runs the benchmark; returns the run and each reader's figures."""
    run = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return run, [json.loads(line) for line in run.stdout.splitlines() if line.startswith('{"reader"')]


def test_read_throughput_loses_nothing():
    run, readers = _run("--rate", "500", "--seconds", "2")
    assert [reader["reader"] for reader in readers] == ["paho", "beam x1", "beam x2"]
    assert all(reader["read"] == reader["published"] == 1000 for reader in readers), readers
    result = re.search(r"^RESULT read_throughput ratio_vs_paho=([\d.]+) msgs_per_s=(\d+) lost=(\d+)$", run.stdout, re.M)
    assert result is not None, run.stdout[-2000:]
    assert result[3] == "0"


def test_the_drain_mode_reads_the_whole_queue_with_every_reader():
    need_mosquitto()
    run, readers = _run("--drain", "2000", "--budget", "60")
    assert [reader["reader"] for reader in readers] == ["paho", "mosquitto_sub", "ReadFromTdmqMqtt"]
    assert all(reader["read"] == reader["published"] == 2000 for reader in readers), readers
    pattern = r"^RESULT read_drain ratio_vs_paho=[\d.]+ ratio_vs_mosquitto_sub=[\d.]+ msgs_per_s=\d+ lost=(\d+)$"
    result = re.search(pattern, run.stdout, re.M)
    assert result is not None, run.stdout[-2000:]
    assert result[1] == "0"
