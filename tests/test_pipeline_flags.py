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
def test_a_secret_id_without_its_key_is_one_line_before_anything_runs(module, capsys, monkeypatch):
    monkeypatch.setenv("FLAGS_TEST_PASSWORD", "p")
    argv = ["--endpoint", "http://127.0.0.1:1", "--username", "u", "--password-env", "FLAGS_TEST_PASSWORD"]
    argv += ["--secret-id", "AKIDtest", "--instance-id", "mqtt-1"]
    argv += {
        backfill: ["--input", "in.avro", "--output", "out"],
        enrich_job: ["--input", "in.jsonl", "--output", "out"],
        ingest_job: ["--mqtt-endpoint", "mqtt://127.0.0.1:1", "--output", "out"],
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
