"""A backfill stopped by a signal, or killed, and resumed: every command delivered, few twice.

The backfill runs as a real process (``python -m tdmq_beam_pipelines.backfill_device_commands``)
against an emulator of the test's own, and an MQTT subscriber (paho) counts what devices would
receive. Ctrl-C (SIGINT) stops it safely: exit 130, a summary saying ``stopped: yes``, result
files and a journal, no traceback and no asyncio noise. SIGKILL gives it no chance at all: the
journal, written a batch at a time, still lets ``--resume`` publish only what was not accepted.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import time

import pytest
from mqtt_peers import PahoClient

from tdmq_beam.testing import TdmqEmulator
from tdmq_beam_pipelines import backfill_device_commands as backfill
from tdmq_beam_pipelines.journal import journaled_keys

IN_FLIGHT = 16  # --max-in-flight
BATCH = 128  # the write's batch size: 2 x in flight, at least 128
IN_FLIGHT_BATCHES = 32  # Batching's max_pending_batches


def _commands(path, count: int) -> set[str]:
    commands = backfill.generate_commands(count, 200, 0, seed=17)
    with open(path, "w") as handle:
        for command in commands:
            handle.write(json.dumps(command) + "\n")
    return {command["command_id"] for command in commands}


def _start(emulator: TdmqEmulator, source, output, *extra: str) -> subprocess.Popen:
    argv = [
        sys.executable, "-m", "tdmq_beam_pipelines.backfill_device_commands", "--input", str(source),
        "--output", str(output), "--endpoint", emulator.http_url, "--username", emulator.username,
        "--password-env", "STOP_TEST_PASSWORD", "--quiet", "--max-in-flight", str(IN_FLIGHT), *extra,
    ]  # fmt: skip
    env = {**os.environ, "STOP_TEST_PASSWORD": emulator.password}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _accepted(emulator: TdmqEmulator) -> int:
    return emulator.stats()["messages"]["messages_received"]


def _wait_accepted(emulator: TdmqEmulator, process: subprocess.Popen, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _accepted(emulator) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the backfill did not get going"
        time.sleep(0.05)


def _received(subscriber: PahoClient, quiet: float = 2.0) -> collections.Counter:
    """Command ids of everything the subscriber got, until it has been quiet ``quiet`` seconds."""
    seen: collections.Counter = collections.Counter()
    while True:
        try:
            message = subscriber.messages.get(timeout=quiet)
        except queue.Empty:
            return seen
        seen[json.loads(message.payload)["command_id"]] += 1


def _summary(stdout: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in stdout.splitlines() if ":" in line and not line.startswith(" "))


@pytest.fixture
def service():
    with TdmqEmulator() as emulator:
        subscriber = PahoClient(emulator.mqtt_port, "stop-resume-watcher")
        subscriber.connect()
        subscriber.subscribe("devices/#", 1)
        yield emulator, subscriber
        subscriber.disconnect()


def test_ctrl_c_stops_safely_and_resume_publishes_the_rest(service, tmp_path):
    emulator, subscriber = service
    source, output = tmp_path / "commands.jsonl", tmp_path / "out" / "run"
    expected = _commands(source, 30_000)
    first = _start(emulator, source, output)
    _wait_accepted(emulator, first, 3_000)
    first.send_signal(signal.SIGINT)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr[-3000:]
    for noise in ("Traceback", "Task was destroyed", "Event loop is closed", "KeyboardInterrupt"):
        assert noise not in stderr, stderr[-3000:]
    assert "SIGINT: stopping after what is in flight" in stderr
    summary = _summary(stdout)
    assert summary["stopped"].strip().startswith("yes")
    published_first = int(summary["published"])
    assert 3_000 <= published_first < 30_000
    published_files = list((tmp_path / "out").glob("run-published-*.jsonl"))
    assert sum(1 for name in published_files for _ in open(name)) == published_first  # what it knew, written
    assert len(journaled_keys(f"{output}-journal")) == published_first

    second = _start(emulator, source, output, "--resume")
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr[-3000:]
    summary = _summary(stdout)
    assert int(summary["skipped"].split()[0]) == published_first
    assert int(summary["published"]) == 30_000 - published_first
    seen = _received(subscriber)
    assert set(seen) == expected
    assert sum(seen.values()) == 30_000  # a safe stop publishes nothing twice


@pytest.mark.parametrize(
    ("commands", "kill_after", "pending"),
    [(100_000, 30_000, 1), (20_000, 5_000, IN_FLIGHT_BATCHES)],
    ids=["default-pending-batches", "one-pending-batch"],
)
def test_a_killed_backfill_resumes_from_its_journal(service, tmp_path, commands, kill_after, pending):
    emulator, subscriber = service
    source, output = tmp_path / "commands.jsonl", tmp_path / "out" / "run"
    expected = _commands(source, commands)
    first = _start(emulator, source, output, "--max-pending-batches", str(pending))
    _wait_accepted(emulator, first, kill_after)
    first.kill()
    first.communicate(timeout=60)
    accepted_before = _accepted(emulator)
    journaled = len(journaled_keys(f"{output}-journal"))
    in_flight = pending * BATCH  # what one worker may have accepted but not handed on
    assert accepted_before - in_flight <= journaled <= accepted_before

    second = _start(emulator, source, output, "--resume", "--max-pending-batches", str(pending))
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr[-3000:]
    assert int(_summary(stdout)["skipped"].split()[0]) == journaled
    seen = _received(subscriber)
    assert set(seen) == expected  # every command delivered
    twice = sum(count - 1 for count in seen.values())
    assert twice == accepted_before - journaled  # exactly those accepted but not yet journaled at the kill
    assert twice <= in_flight  # at most the batches one worker had in flight: one, with --max-pending-batches 1


def test_ctrl_c_ends_the_ingest_reads_after_what_they_read(tmp_path):
    with TdmqEmulator() as emulator:
        output = tmp_path / "out" / "telemetry"
        argv = [
            sys.executable, "-m", "tdmq_beam_pipelines.ingest_device_telemetry", "--endpoint", emulator.http_url,
            "--mqtt-endpoint", f"mqtt://127.0.0.1:{emulator.mqtt_port}", "--username", emulator.username,
            "--password-env", "STOP_TEST_PASSWORD", "--client-id-prefix", "stop-ingest", "--quiet",
            "--max-read-time", "300", "--output", str(output),
        ]  # fmt: skip
        env = {**os.environ, "STOP_TEST_PASSWORD": emulator.password}
        ingest = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 120
        while not all((emulator.session_state(f"stop-ingest-{i}") or {}).get("connected") for i in (0, 1)):
            assert ingest.poll() is None and time.monotonic() < deadline, ingest.communicate()
            time.sleep(0.1)
        publisher = PahoClient(emulator.mqtt_port, "stop-ingest-device")
        publisher.connect()
        for i in range(40):
            reading = {"seq": i, "sent_at": 1_700_000_000_000 + i, "temperature": 20.5}
            publisher.publish("devices/sensor-9/telemetry", json.dumps(reading).encode(), qos=1)
        publisher.disconnect()
        time.sleep(3)  # read, and acknowledged with the next bundle
        started = time.monotonic()
        ingest.send_signal(signal.SIGINT)
        stdout, stderr = ingest.communicate(timeout=120)
    assert ingest.returncode == 130, stderr[-3000:]
    assert time.monotonic() - started < 60  # not the 300 s of --max-read-time
    for noise in ("Traceback", "Task was destroyed", "Event loop is closed", "KeyboardInterrupt"):
        assert noise not in stderr, stderr[-3000:]
    summary = _summary(stdout)
    assert summary["stopped"].strip().startswith("yes") and int(summary["received"]) == 40
    written = [json.loads(line) for name in (tmp_path / "out").glob("telemetry-0*.jsonl") for line in open(name)]
    assert sorted(record["seq"] for record in written) == list(range(40))
