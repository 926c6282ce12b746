"""Every Python snippet of the README and docs/ runs as written, as a user would run it: a script
of its own (``python snippet.py``) in a folder holding the README's ``commands.jsonl`` and the
``schemas/``, with the environment `TdmqConnection.from_env` reads pointing at an emulator, while
devices connect, publish telemetry and leave. Each snippet has its check below (what it printed,
wrote, published), and a snippet without one fails: a new snippet needs its check.

The snippets are found with pytest-examples and linted with ruff as part of the test.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import apache_beam
import pytest
from mqtt_peers import PahoClient
from pytest_examples import CodeExample, EvalExample, find_examples

from tdmq_beam.testing import TdmqEmulator

_BEAM = tuple(int(part) for part in apache_beam.__version__.split(".")[:2])

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_COMMAND = '{"device_id": "dev-1", "command_id": "c-1", "command": "reboot", "issued_at": 0}'
DEVICES = [f"dev-{n}" for n in range(1, 6)]
SNIPPET_TIMEOUT = 180


@dataclass
class SnippetRun:
    """What one snippet did: its exit status and output, the folder it ran in, and the messages an
    MQTT subscriber to ``devices/+/commands`` received meanwhile."""

    returncode: int
    stdout: str
    stderr: str
    folder: Path
    commands: list

    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def file_lines(self, prefix: str) -> list[str]:
        """The lines of the files ``prefix*`` the snippet wrote (Beam's shards), in order."""
        return [line for path in sorted(self.folder.glob(prefix + "*")) for line in path.read_text().splitlines()]


def _ran_clean(run: SnippetRun) -> None:
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]


def _check_write(run: SnippetRun) -> None:
    _ran_clean(run)
    (published,) = run.file_lines("published")
    topic, message_id = published.split()
    assert topic == "devices/dev-1/commands" and len(message_id) == 32
    assert run.file_lines("failed") == []
    (message,) = run.commands
    assert json.loads(message.payload) == {"command_id": "c-1", "command": "reboot", "issued_at": 0}
    properties = message.properties
    assert properties.CorrelationData == b"c-1" and properties.ContentType == "application/json"
    assert 3500 < properties.MessageExpiryInterval <= 3600
    keys = [key for key, _ in properties.UserProperty]
    assert ("command-id", "c-1") in properties.UserProperty and "idempotency-key" in keys


def _check_verify(run: SnippetRun) -> None:
    _ran_clean(run)
    (line,) = run.lines()
    assert line.endswith(tuple("0123456789")) and " stored at " in line
    assert len(run.commands) == 1


def _check_client(run: SnippetRun) -> None:
    _ran_clean(run)
    message_id, details, *results = run.lines()
    assert len(message_id) == 32
    assert details == "None"  # dev-42 never connected
    assert len(results) == 3 and all("error=None" in result for result in results)
    first = run.commands[0]
    assert first.topic == "devices/dev-42/commands" and first.properties.ResponseTopic == "devices/dev-42/replies"
    assert [m.topic for m in run.commands[1:]] == [f"devices/dev-{n}/commands" for n in range(3)]


def _check_enrich(run: SnippetRun) -> None:
    _ran_clean(run)
    (line,) = run.file_lines("enriched")
    enriched = json.loads(line)
    client = enriched.pop("client")
    assert enriched == {**json.loads(README_COMMAND), "online": True}
    assert client["connection_status"] == "CONNECTED"  # the devices keep dev-1 up
    assert run.file_lines("failed") == []


def _check_enrichment(run: SnippetRun) -> None:
    _ran_clean(run)
    (row,) = run.lines()
    assert row.startswith("Row(device_id='dev-1', command='reboot', online=True, client=")


def _check_emulator(run: SnippetRun) -> None:
    _ran_clean(run)
    address, published, requests = run.lines()
    assert address.startswith("http://127.0.0.1:") and address.split()[1].isdigit()
    assert published == "50"
    statuses = ast.literal_eval(requests)
    assert statuses["200"] == 50 and statuses.get("500", 0) + statuses.get("429", 0) > 0


def _check_history(run: SnippetRun) -> None:
    _ran_clean(run)
    (count,) = run.lines()  # nothing failed
    assert int(count) >= 10  # the readings the devices published before it ran


def _check_read(run: SnippetRun) -> None:
    _ran_clean(run)
    records = [line for line in run.lines() if line.startswith("{")]
    assert len(records) >= 100 and len(records) == len(run.lines())
    assert all("'device_id': 'dev-" in record and "'temperature': 21.5" in record for record in records)


def _check_client_events(run: SnippetRun) -> None:
    _ran_clean(run)
    changes = [line for line in run.lines() if line.startswith("TrackedStatus(")]
    readings = [line for line in run.lines() if line.startswith("{")]
    assert changes and readings and len(changes) + len(readings) == len(run.lines())  # nothing failed
    assert all("'online': True" in r or "'online': False" in r for r in readings)


def _check_unbounded_reproduction(run: SnippetRun) -> None:
    assert run.returncode != 0
    assert "UnboundedSource restriction was neither finished nor checkpointed" in run.stderr


def _check_dask_reproduction(run: SnippetRun) -> None:
    """The Dask runner's two limits the page shows; its prints would come on the worker, in this
    process (`test_the_snippet_runs_as_written` checks which do)."""
    _ran_clean(run)


CHECKS: dict[str, list[Callable[[SnippetRun], None]]] = {
    "README.md": [],
    "client-events.md": [_check_client_events],
    "client.md": [_check_client],
    "emulator.md": [_check_emulator],
    "enrich.md": [_check_enrich, _check_enrichment],
    "history.md": [_check_history],
    "read.md": [_check_read],
    "runners.md": [_check_unbounded_reproduction, _check_dask_reproduction],
    "write.md": [_check_write, _check_verify],
}
NEEDS_DASK = {("runners.md", 1)}


def _snippets() -> Iterator[tuple[str, int, CodeExample]]:
    for doc in DOCS:
        for index, example in enumerate(find_examples(doc)):
            yield doc.name, index, example


SNIPPETS = list(_snippets())


def test_every_snippet_has_its_check():
    found: dict[str, int] = {}
    for name, _, _ in SNIPPETS:
        found[name] = found.get(name, 0) + 1
    assert {name: count for name, count in found.items()} == {
        name: len(checks) for name, checks in CHECKS.items() if checks
    }


class _Devices:
    """dev-1 stays online; the others connect, publish a telemetry reading each and leave, over
    and over, so that reads see telemetry and client events while a snippet runs."""

    def __init__(self, emulator: TdmqEmulator) -> None:
        self._emulator = emulator
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.readings = 0

    def _run(self) -> None:
        with self._emulator.simulated_clients() as devices:
            devices.online("dev-1")
            while not self._stop.is_set():
                for device in DEVICES[1:]:
                    devices.online(device)
                    payload = {"seq": self.readings, "sent_at": int(time.time() * 1000), "temperature": 21.5}
                    devices.publish(device, [(f"devices/{device}/telemetry", json.dumps(payload).encode())])
                    devices.disconnect(device)
                    self.readings += 1
                    if self._stop.wait(0.02):
                        break

    def __enter__(self) -> _Devices:
        self._thread.start()
        deadline = time.monotonic() + 30
        while self.readings < 10:  # some history before any snippet
            assert time.monotonic() < deadline, "the devices did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture(scope="module")
def service():
    """An emulator of this module's own (the snippets' client ids are fixed), with devices on it."""
    with TdmqEmulator() as emulator, _Devices(emulator):
        yield emulator


@pytest.fixture
def dask_scheduler():
    """The scheduler runners.md's snippet names, tcp://127.0.0.1:8786, with a worker in this process."""
    distributed = pytest.importorskip("distributed", reason="needs Dask: pip install 'dask[distributed]'")
    if not _free(8786):
        pytest.skip("something listens on 127.0.0.1:8786, the snippet's scheduler address")
    cluster = distributed.LocalCluster(
        n_workers=1, processes=False, threads_per_worker=1, host="127.0.0.1", scheduler_port=8786,
        dashboard_address=None,
    )  # fmt: skip
    try:
        yield cluster
    finally:
        cluster.close()


def _run_snippet(example: CodeExample, emulator: TdmqEmulator, folder: Path) -> SnippetRun:
    (folder / "commands.jsonl").write_text(README_COMMAND + "\n")
    shutil.copytree(ROOT / "schemas", folder / "schemas")
    script = folder / "snippet.py"
    script.write_text(example.source)
    subscriber = PahoClient(emulator.mqtt_port, f"snippet-watch-{os.getpid()}")
    subscriber.connect()
    subscriber.subscribe("devices/+/commands", qos=1)
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=folder,
            env={**os.environ, **emulator.environment()},
            capture_output=True,
            text=True,
            timeout=SNIPPET_TIMEOUT,
        )
        time.sleep(0.3)  # the last message's way to the subscriber
        commands = []
        while not subscriber.messages.empty():
            commands.append(subscriber.messages.get())
    finally:
        subscriber.disconnect()
    return SnippetRun(done.returncode, done.stdout, done.stderr, folder, commands)


@pytest.mark.timeout(SNIPPET_TIMEOUT + 60)
@pytest.mark.parametrize(("doc", "index", "example"), SNIPPETS, ids=[f"{d}:{e.start_line}" for d, _, e in SNIPPETS])
def test_the_snippet_runs_as_written(doc, index, example, service, tmp_path, request, capsys):
    cluster = request.getfixturevalue("dask_scheduler") if (doc, index) in NEEDS_DASK else None
    run = _run_snippet(example, service, tmp_path)
    CHECKS[doc][index](run)
    if cluster is not None:
        assert cluster.scheduler.task_prefixes  # the pipelines ran on the worker here...
        # ...the first branch's print never came, and finish_bundle's output as the page says
        assert capsys.readouterr().out.split() == ([] if _BEAM < (2, 78) else ["[1,", "2,", "3]"])


@pytest.mark.parametrize(("doc", "index", "example"), SNIPPETS, ids=[f"{d}:{e.start_line}" for d, _, e in SNIPPETS])
def test_the_snippet_is_lint_clean(doc, index, example, eval_example: EvalExample):
    eval_example.config.ruff_line_length = 120
    eval_example.config.line_length = 120
    eval_example.lint_ruff(example)


def _readme_shell_block(starting: str) -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S)
    (block,) = [block for block in blocks if block.startswith(starting)]
    return block


def _free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.timeout(300)
def test_the_readmes_own_commands_run_as_written(tmp_path):
    """The README's second example, as a shell runs it: the emulator on its default ports, a
    mosquitto_sub watching, the README's command line published by the backfill."""
    if shutil.which("mosquitto_sub") is None:
        pytest.skip("needs mosquitto_sub: apt-get install mosquitto-clients")
    if not (_free(8080) and _free(1883)):
        pytest.skip("the README's emulator needs 127.0.0.1:8080 and :1883, which are in use here")
    block = _readme_shell_block("tdmq-emulator")
    assert README_COMMAND in block  # the command the Python snippets read too
    output = tmp_path / "shell-output"
    with output.open("w") as out:
        shell = subprocess.Popen(["bash", "-e", "-c", block], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # fmt: skip
        try:
            status = shell.wait(timeout=240)
            time.sleep(1)  # the subscriber's last line
        finally:
            os.killpg(shell.pid, signal.SIGTERM)  # the subscriber, backgrounded in the block
            text = output.read_text()
            if pid := re.search(r"pid=(\d+)", text):
                os.kill(int(pid.group(1)), signal.SIGTERM)  # the detached emulator
    assert status == 0, text
    assert "Error" not in text and "Traceback" not in text, text
    ready = r"^tdmq-emulator serving http=http://127.0.0.1:8080 mqtt=mqtt://127.0.0.1:1883 pid=\d+$"
    assert re.search(ready, text, re.M), text
    assert re.search(r"^published: +1$", text, re.M) and re.search(r"^failed: +0 ", text, re.M), text
    (delivered,) = [line for line in text.splitlines() if line.startswith("devices/")]
    topic, payload = delivered.split(" ", 1)
    assert topic == "devices/dev-1/commands" and json.loads(payload)["command_id"] == "c-1"
