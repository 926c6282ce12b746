"""The package installs whole: a wheel built from this tree, installed into a fresh virtual
environment, runs the demos from another directory with the schemas and YAML files it ships."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with the wheel installed (its dependencies from this interpreter's site-packages)."""
    base = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools keeps a build/ folder beside setup.py, whose stale files (a module
    # since removed) would go into the next wheel; and the checkout stays as it was.
    source = base / "source"
    ignored = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")
    shutil.copytree(ROOT, source, ignore=ignored)
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(base)]
    subprocess.run([*build, str(source)], check=True, timeout=300)
    (wheel,) = base.glob("tdmq_beam-*.whl")
    environment = base / "venv"
    venv.create(environment, system_site_packages=True, with_pip=True)
    python = environment / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=300)  # fmt: skip
    return python


def test_the_wheel_ships_the_schemas_and_yaml_and_runs_the_demo_elsewhere(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [installed, "-c", "import tdmq_beam_pipelines.package_files as f; print(f.SCHEMAS); print(f.YAML_PIPELINES)"],
        cwd=elsewhere, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    schemas, yaml_dir = (Path(line) for line in where.stdout.split())
    assert str(ROOT) not in str(schemas) and "site-packages" in str(schemas)  # the installed copy, not this tree
    assert {p.name for p in schemas.glob("*.avsc")} >= {"device_command.avsc", "failed_message.avsc"}
    assert (yaml_dir / "backfill_device_commands.yaml").is_file()
    demo = subprocess.run(
        [installed, "-m", "tdmq_beam_pipelines.backfill_device_commands", "--quiet",
         "--sample-commands", "60", "--sample-devices", "6", "--sample-invalid", "2"],
        cwd=elsewhere, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "published:    58" in demo.stdout, demo.stdout


def test_the_installed_yaml_example_runs_elsewhere_with_the_installed_schema(installed, tmp_path):
    """``run_yaml`` finds the example and its schema in the installed package; ``tdmq-emulator
    --detach`` of the venv serves it. Nothing of this checkout is on the way."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "commands.jsonl").write_text(
        '{"device_id": "dev-1", "command_id": "c-1", "command": "reboot", "issued_at": 0}\n'
    )
    emulator = subprocess.run(
        [installed.parent / "tdmq-emulator", "--detach", "--http-port", "0", "--mqtt-port", "0"],
        cwd=elsewhere, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert emulator.returncode == 0, emulator.stderr
    http_url = emulator.stdout.split("http=")[1].split()[0]
    pid = int(emulator.stdout.rsplit("pid=", 1)[1])
    try:
        variables = {"endpoint": http_url, "input": "commands.jsonl", "output": "out/yaml"}
        run = subprocess.run(
            [installed, "-m", "tdmq_beam_pipelines.run_yaml", "backfill_device_commands",
             f"--jinja_variables={json.dumps(variables)}"],
            cwd=elsewhere, capture_output=True, text=True, timeout=300,
            env={**os.environ, "TDMQ_PASSWORD": "secret0"},
        )  # fmt: skip
    finally:
        os.kill(pid, signal.SIGTERM)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr == "", run.stderr  # none of Beam's start-up noise
    (published,) = [json.loads(line) for path in elsewhere.glob("out/yaml-published*") for line in path.open()]
    assert published["topic"] == "devices/dev-1/commands" and len(published["message_id"]) == 32
