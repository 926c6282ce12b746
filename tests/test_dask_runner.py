"""The backfill on a real distributed engine: Beam's Dask runner, a Dask scheduler and two worker
processes on 127.0.0.1, against the emulator; every record accounted for as on the DirectRunner."""

from __future__ import annotations

import glob
import json

import pytest

distributed = pytest.importorskip("distributed", reason="needs Dask: pip install 'dask[distributed]'")

from mqtt_peers import PahoClient  # noqa: E402

from tdmq_beam_pipelines import backfill_device_commands  # noqa: E402


@pytest.fixture(scope="module")
def dask_cluster(emulator):
    import os

    os.environ["DASK_TEST_PASSWORD"] = emulator.password  # resolved on the workers: they inherit it
    os.environ["DASK_TEST_SECRET_KEY"] = emulator.secret_key
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()
        os.environ.pop("DASK_TEST_PASSWORD", None)
        os.environ.pop("DASK_TEST_SECRET_KEY", None)


def test_the_backfill_runs_on_dask_with_every_record_accounted_for(dask_cluster, emulator, tmp_path, capsys):
    subscriber = PahoClient(emulator.mqtt_port, "dask-watch")
    subscriber.connect()
    subscriber.subscribe("devices/#", qos=1)
    commands = [
        {"device_id": f"dask-dev-{i % 7}", "command_id": f"c-{i}", "command": "reboot", "params": {},
         "issued_at": 1_700_000_000_000 + i}
        for i in range(300)
    ]  # fmt: skip
    source = tmp_path / "commands.jsonl"
    lines = [json.dumps(command) for command in commands]
    lines.insert(10, "{not json")
    lines.insert(20, json.dumps({**commands[0], "device_id": "dask-#", "command_id": "c-bad"}))
    source.write_text("\n".join(lines) + "\n")
    output = str(tmp_path / "results")

    status = backfill_device_commands.main([
        "--endpoint", emulator.http_url, "--username", emulator.username, "--password-env", "DASK_TEST_PASSWORD",
        "--input", str(source), "--output", output, "--quiet", "--allow-failed",
        "--secret-id", emulator.secret_id, "--secret-key-env", "DASK_TEST_SECRET_KEY",
        "--tencent-region", "ap-guangzhou", "--instance-id", emulator.instance_id,
        "--cloud-endpoint", emulator.http_url, "--verify", "--verify-sample", "0.1",
        "--runner", "apache_beam.runners.dask.dask_runner.DaskRunner", "--dask_client_address", dask_cluster,
    ])  # fmt: skip

    out = capsys.readouterr().out
    assert status == 0, out
    published = [json.loads(line) for name in glob.glob(output + "-published-*.jsonl") for line in open(name)]
    failed = [json.loads(line) for name in glob.glob(output + "-failed-*.jsonl") for line in open(name)]
    assert sorted(p["element"]["command_id"] for p in published) == sorted(
        c["command_id"] for c in commands
    )  # each exactly once
    assert sorted(f["error_kind"] for f in failed) == ["invalid_record", "unparseable"]
    assert any("line 11" in f["reason"] for f in failed)
    assert "read:         302" in out and "published:    300" in out and "failed:       2" in out
    # The audit of a sample (chosen by message id) runs there too: every one checked is stored.
    verified = [json.loads(line) for name in glob.glob(output + "-verified-*.jsonl") for line in open(name)]
    assert 5 <= len(verified) <= 60 and not glob.glob(output + "-missing-*.jsonl")
    assert f"verified:     {len(verified)} " in out and "missing:      0 " in out
    assert {v["message_id"] for v in verified} <= {p["message_id"] for p in published}
    received = {message.payload for message in subscriber.receive(300, timeout=30)}
    assert len(received) == 300
    subscriber.disconnect()
