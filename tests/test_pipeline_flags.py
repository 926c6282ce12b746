"""The pipelines' own flags never shadow a Beam pipeline option, and each reaches where it belongs."""

from __future__ import annotations

import contextlib

import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from tdmq_beam_pipelines import backfill_device_commands as backfill
from tdmq_beam_pipelines import enrich_client_status as enrich_job
from tdmq_beam_pipelines import ingest_device_telemetry as ingest_job
from tdmq_beam_pipelines.service_flags import cloud_from_flags


def _beam_flags() -> set[str]:
    """Every command-line flag of every Beam pipeline option class loaded, the runners' included."""
    import argparse

    with contextlib.suppress(ImportError):
        import apache_beam.runners.dask.dask_runner  # noqa: F401 (registers DaskOptions)
    parser = argparse.ArgumentParser(conflict_handler="resolve")  # classes repeat some flags
    classes = list(PipelineOptions.__subclasses__())
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        with contextlib.suppress(argparse.ArgumentError, TypeError, ValueError):
            cls._add_argparse_args(parser)
    return {flag.lstrip("-").replace("-", "_") for action in parser._actions for flag in action.option_strings}


@pytest.mark.parametrize("module", [backfill, enrich_job, ingest_job], ids=lambda module: module.__name__)
def test_no_flag_collides_with_a_beam_option(module):
    ours = {
        flag.lstrip("-").replace("-", "_")
        for action in module._parser()._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help")
    }
    beam_flags = _beam_flags()
    assert {"region", "project", "runner", "dask_connection_timeout"} <= beam_flags
    assert ours & beam_flags == set()


def test_region_reaches_beam_and_tencent_region_the_cloud_api(monkeypatch):
    monkeypatch.setenv("FLAGS_TEST_SECRET_KEY", "k")
    argv = [
        "--endpoint", "http://127.0.0.1:1", "--username", "u", "--password-env", "P",
        "--secret-id", "AKIDtest", "--secret-key-env", "FLAGS_TEST_SECRET_KEY", "--instance-id", "mqtt-1",
        "--tencent-region", "ap-guangzhou", "--region", "us-central1", "--project", "my-project",
    ]  # fmt: skip
    args, beam_args = enrich_job._parser().parse_known_args(argv)
    google = PipelineOptions(beam_args).view_as(GoogleCloudOptions)
    assert (google.region, google.project) == ("us-central1", "my-project")
    cloud = cloud_from_flags(args)
    assert cloud is not None and (cloud.region, cloud.instance_id) == ("ap-guangzhou", "mqtt-1")


@pytest.mark.parametrize(
    "parser",
    [
        backfill._parser,
        enrich_job._parser,
        lambda: __import__("tdmq_beam.emulator.cli", fromlist=["_"])._build_parser(),
    ],
    ids=["backfill", "enrich", "tdmq-emulator"],
)
def test_help_shows_every_default(parser):
    built = parser()
    shown = built.format_help()
    for action in built._actions:
        if action.default not in (None, False, [], "==SUPPRESS==") and action.help:
            assert f"(default: {action.default})" in " ".join(shown.split()), action.option_strings


@pytest.mark.parametrize("module", [backfill, enrich_job, ingest_job], ids=lambda module: module.__name__)
def test_a_secret_id_without_its_key_is_one_line_before_anything_runs(module, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FLAGS_TEST_PASSWORD", "p")
    commands = tmp_path / "in.avro"
    commands.write_bytes(b"")
    argv = ["--endpoint", "http://127.0.0.1:1", "--username", "u", "--password-env", "FLAGS_TEST_PASSWORD"]
    argv += ["--secret-id", "AKIDtest", "--instance-id", "mqtt-1"]
    argv += {
        backfill: ["--input", str(commands), "--output", "out"],
        enrich_job: ["--input", str(commands), "--output", "out"],
        ingest_job: ["--mqtt-endpoint", "mqtt://127.0.0.1:1", "--output", "out", "--max-records", "1"],
    }[module]
    with pytest.raises(SystemExit) as exit_:
        module.main(argv)
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"{module.PROGRAM}: error: invalid settings: "
        "--secret-id needs its SecretKey: give --secret-key-env or --secret-key-file"
    )


@pytest.mark.parametrize("module", [backfill, enrich_job, ingest_job], ids=lambda module: module.__name__)
def test_every_job_names_itself_and_takes_the_service_flags(module):
    parser = module._parser()
    assert parser.prog == f"python -m tdmq_beam_pipelines.{module.PROGRAM}"
    assert module.__name__ == f"tdmq_beam_pipelines.{module.PROGRAM}"
    flags = {flag for action in parser._actions for flag in action.option_strings}
    assert {"--endpoint", "--password-env", "--secret-id", "--cloud-rate", "--quiet", "--max-attempts"} <= flags


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--max-inflight", "10"], "unknown flag --max-inflight; did you mean --max-in-flight?"),
        (["--allow-faild"], "unknown flag --allow-faild; did you mean --allow-failed?"),
        (["--password_env", "X"], "unknown flag --password_env; did you mean --password-env?"),
        (["--zzqq=1"], "unknown flag --zzqq (neither this job's nor a Beam pipeline option)"),
    ],
)
def test_a_mistyped_flag_is_one_line_with_the_nearest_spelling(flag, message, capsys):
    from tdmq_beam_pipelines import backfill_device_commands

    with pytest.raises(SystemExit) as caught:
        backfill_device_commands.main(flag)
    assert caught.value.code == 2
    assert capsys.readouterr().err.strip() == f"backfill_device_commands: error: {message}"


def test_beam_options_pass_and_a_runners_own_options_too():
    from tdmq_beam_pipelines.service_flags import _not_beam_options

    assert _not_beam_options(["--runner", "DirectRunner", "--direct_num_workers", "2", "--save_main_session"]) is None
    dask = ["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner", "--dask_client_address", "127.0.0.1:1"]
    assert _not_beam_options(dask) is None


def test_help_keeps_a_hyphenated_default_whole_and_says_no_default_none(monkeypatch):
    from tdmq_beam_pipelines.service_flags import job_parser

    monkeypatch.setenv("COLUMNS", "60")
    parser = job_parser("demo", "A demo", beam_options="--runner")
    path = "/home/someone/my-checkout-of-tdmq-beam/schemas/device-command.avsc"
    parser.add_argument("--schema", default=path, help="Avro schema of a command, with mqtt.* annotations")
    parser.add_argument("--failed-output", help="prefix of the failed files (default OUTPUT-failed)")
    shown = parser.format_help()
    assert path in shown  # not broken at a hyphen
    assert "(default: None)" not in shown and "(default OUTPUT-failed)" in " ".join(shown.split())


def test_our_commands_hide_beams_import_warnings_and_users_programs_keep_them(tmp_path):
    import os
    import subprocess
    import sys

    broken = tmp_path / "apitools"  # an environment whose Google client library does not import
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('not installed here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = subprocess.run([sys.executable, "-m", "tdmq_beam_pipelines.backfill_device_commands", "--help"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    assert command.returncode == 0 and "apitools not found" not in command.stderr, command.stderr
    program = subprocess.run([sys.executable, "-c", "import tdmq_beam_pipelines.backfill_device_commands"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    assert "apitools not found" in program.stderr  # Beam's warning, untouched in a user's program
