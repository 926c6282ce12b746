"""The command line every job shares: its parser, the service flags (access point, credentials,
cloud API, progress), the settings they describe checked once, and one-line usage errors."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import logging
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import NoReturn

from tdmq_beam import (
    CloudApiConfig,
    RetryPolicy,
    Secret,
    TdmqConnection,
)
from tdmq_beam.errors import ConfigurationError
from tdmq_beam.secret import secret_reference
from tdmq_beam.service.preflight import SettingNames, preflight_problem
from tdmq_beam.transforms.progress import LOGGER_NAME

__all__ = [
    "EXIT_RECORDS_FAILED",
    "EXIT_USAGE",
    "add_cloud_flags",
    "add_connection_flags",
    "add_progress_flags",
    "add_service_flags",
    "check_beam_flags",
    "cloud_from_flags",
    "connection_from_flags",
    "job_parser",
    "parse_job_flags",
    "preflight",
    "service_from_flags",
    "show_progress",
    "usage_error",
]

EXIT_USAGE = 2
"""Exit status of a usage or configuration error (argparse's)."""
EXIT_RECORDS_FAILED = 3
"""Exit status of a run in which some records failed (unless --allow-failed)."""


def usage_error(program: str, message: str) -> NoReturn:
    """Prints one line, ``{program}: error: {message}``, and exits with status 2 (no traceback)."""
    print(f"{program}: error: {message}", file=sys.stderr)
    error = SystemExit(message)
    error.code = EXIT_USAGE
    raise error


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, but not "(default: None)" after a help text that says what the
    default is; and never breaks a line inside a path at a hyphen, so a default reads (and copies) whole."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


def job_parser(program: str, description: str, *, beam_options: str) -> argparse.ArgumentParser:
    """The parser of ``python -m tdmq_beam_pipelines.{program}``; the job adds its own groups, then
    `add_service_flags`. ``beam_options`` names a few of the Beam options the job is run with."""
    return argparse.ArgumentParser(
        formatter_class=_HelpFormatter,
        prog=f"python -m tdmq_beam_pipelines.{program}",
        description=f"{description}; with no arguments, a demo on the embedded emulator.",
        epilog=f"Any other argument is a Beam pipeline option ({beam_options}, ...).",
    )


def add_service_flags(parser: argparse.ArgumentParser, *, cloud_purpose: str = "client details") -> None:
    """The flags of the service every job takes: access point and credentials, cloud API, progress."""
    add_connection_flags(parser)
    add_cloud_flags(parser, cloud_purpose)
    add_progress_flags(parser)


def parse_job_flags(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, list[str]]:
    """(the job's flags, the Beam arguments it leaves to Beam); warnings logged, progress lines shown
    unless ``--quiet``."""
    logging.basicConfig(level=logging.WARNING)
    args, beam_args = parser.parse_known_args(argv)
    check_beam_flags(parser, beam_args)
    show_progress(args)
    return args, beam_args


def check_beam_flags(parser: argparse.ArgumentParser, beam_args: Sequence[str]) -> None:
    """Exits with one line (status 2) naming the first of ``beam_args`` that is neither one of
    ``parser``'s flags nor a Beam pipeline option, with the nearest spelling of either."""
    if unknown := _not_beam_options(beam_args):
        flag = unknown.split("=", 1)[0]
        known = [*parser._option_string_actions, *_beam_parser()._option_string_actions]
        nearest = difflib.get_close_matches(flag, [k for k in known if k.startswith("--")], n=1, cutoff=0.6)
        hint = f"; did you mean {nearest[0]}?" if nearest else " (neither this job's nor a Beam pipeline option)"
        usage_error(parser.prog.rsplit(".", 1)[-1], f"unknown flag {flag}{hint}")


def _beam_parser() -> argparse.ArgumentParser:
    """A parser of every Beam pipeline option, as `PipelineOptions.get_all_options` builds it."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    for option_class in {str(cls): cls for cls in PipelineOptions.__subclasses__()}.values():
        option_class._add_argparse_args(parser)
    return parser


def _import_runner_options(beam_args: Sequence[str]) -> None:
    """Imports the module of a ``--runner`` given by its path, whose options (Dask's) are declared there."""
    args = list(beam_args)
    runner = next((arg.split("=", 1)[1] for arg in args if arg.startswith("--runner=")), None)
    if runner is None and "--runner" in args and args.index("--runner") + 1 < len(args):
        runner = args[args.index("--runner") + 1]
    if runner and "." in runner:
        with contextlib.suppress(ImportError):
            importlib.import_module(runner.rsplit(".", 1)[0])


def _not_beam_options(beam_args: Sequence[str]) -> str | None:
    """The first of ``beam_args`` that is a flag no Beam pipeline option takes (Beam itself only
    logs "Discarding unparseable args" and runs on with its defaults), or None."""
    if not beam_args:
        return None
    _import_runner_options(beam_args)
    _, unknown = _beam_parser().parse_known_args(list(beam_args))
    return next((arg for arg in unknown if arg.startswith("-")), None)


def service_from_flags(
    program: str,
    args: argparse.Namespace,
    *,
    check: Callable[[], object] | None = None,
    cloud_needed_for: str | None = None,
) -> tuple[TdmqConnection, CloudApiConfig | None]:
    """The connection and cloud API config the flags describe, checked before any input is read.

    A setting that does not fit, or one the job's own ``check`` refuses (a `ValueError`, such as
    a `ConfigurationError`), exits with one line; so does a missing cloud credential when
    ``cloud_needed_for`` says what needs it. Then the `preflight` call checks that both answer.
    """
    try:
        connection = connection_from_flags(args)
        cloud = cloud_from_flags(args)
        if check is not None:
            check()
    except ValueError as exc:  # a ConfigurationError is one
        usage_error(program, f"invalid settings: {exc}")
    if cloud_needed_for is not None and cloud is None:
        usage_error(program, cloud_needed_for)
    preflight(program, connection, cloud)
    return connection, cloud


_FLAG_NAMES = SettingNames(
    credentials="--username and --password-env/--password-file, or --client-cert/--client-key",
    endpoint="--endpoint",
    ca_cert="--ca-cert",
    secret="--secret-id and --secret-key-*",
    instance="--instance-id",
    region="--tencent-region",
    cloud_endpoint="--cloud-endpoint",
)


def preflight(program: str, connection: TdmqConnection, cloud: CloudApiConfig | None = None) -> None:
    """Checks once, before any input is read, that the endpoint answers and accepts the credentials,
    and the cloud API credential when given (`preflight_problem`); exits with one line naming the
    cause and the flag to fix."""
    if (problem := preflight_problem(connection, cloud, names=_FLAG_NAMES)) is not None:
        usage_error(program, problem)


def add_progress_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("progress")
    group.add_argument("--quiet", action="store_true", help="no progress lines while the run goes on")
    group.add_argument(
        "--progress-interval", type=float, default=5.0, help="seconds between two progress lines of a worker"
    )


def show_progress(args: argparse.Namespace) -> None:
    """Progress lines of the workers (``tdmq_beam.progress``) on stderr, unless ``--quiet``."""
    logger = logging.getLogger(LOGGER_NAME)
    if args.quiet:
        logger.setLevel(logging.WARNING)
        return
    handler = next((h for h in logger.handlers if getattr(h, "_tdmq_progress", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("progress: %(message)s"))
        handler._tdmq_progress = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    else:
        handler.stream = sys.stderr  # type: ignore[attr-defined]  # today's stderr (main may run again)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("service (without --endpoint: the embedded emulator)")
    group.add_argument("--endpoint", help="instance access point, http(s)://host[:port]")
    group.add_argument("--username", help="Basic authentication user")
    group.add_argument("--password-env", metavar="NAME", help="environment variable holding the password")
    group.add_argument("--password-file", metavar="PATH", help="file holding the password")
    group.add_argument("--client-cert", help="client certificate chain (PEM) for mTLS")
    group.add_argument("--client-key", help="client private key (PEM) for mTLS")
    group.add_argument("--key-password-env", metavar="NAME", help="environment variable holding the key passphrase")
    group.add_argument("--ca-cert", help="CA bundle of the server certificate")
    group.add_argument("--tps", type=float, help="requests/s per worker process (instance quota / workers)")
    group.add_argument("--max-in-flight", type=int, default=64, help="requests in flight per worker process")
    group.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    group.add_argument("--max-attempts", type=int, default=5, help="attempts per call, the first included")


def add_cloud_flags(parser: argparse.ArgumentParser, purpose: str = "client details") -> None:
    group = parser.add_argument_group(f"cloud API ({purpose}; optional)")
    group.add_argument("--secret-id", help="SecretId of the cloud API credential")
    group.add_argument("--secret-key-env", metavar="NAME", help="environment variable holding the SecretKey")
    group.add_argument("--secret-key-file", metavar="PATH", help="file holding the SecretKey")
    group.add_argument(
        "--tencent-region", help="Tencent Cloud region of the instance, e.g. ap-guangzhou (--region is Beam's)"
    )
    group.add_argument("--instance-id", help="TDMQ for MQTT instance id")
    group.add_argument("--cloud-endpoint", help="cloud API endpoint (default: Tencent's hosts)")
    group.add_argument("--cloud-ca-cert", help="CA bundle of the cloud endpoint's certificate (default: the system's)")
    group.add_argument("--cloud-api", choices=("auto", "DescribeMQTTClient", "DescribeClientList"), default="auto")
    group.add_argument("--cloud-rate", type=float, default=20.0, help="cloud API requests/s per worker process")


def connection_from_flags(args: argparse.Namespace) -> TdmqConnection:
    """The connection the flags describe; `ValueError` naming what does not fit."""
    return TdmqConnection(
        args.endpoint,
        username=args.username,
        password=secret_reference("password", args.password_env, args.password_file),
        client_cert=args.client_cert,
        client_key=args.client_key,
        ca_cert=args.ca_cert,
        key_password=Secret.env(args.key_password_env) if args.key_password_env else None,
        timeout=args.timeout,
        max_in_flight=args.max_in_flight,
        tps=args.tps,
        retry=RetryPolicy(max_attempts=args.max_attempts),
        mqtt_endpoint=getattr(args, "mqtt_endpoint", None),  # the read side's flag
    )


def cloud_from_flags(args: argparse.Namespace) -> CloudApiConfig | None:
    """The cloud API config the flags describe, or None when no --secret-id is given."""
    if not args.secret_id:
        return None
    secret_key = secret_reference("SecretKey", args.secret_key_env, args.secret_key_file)
    if secret_key is None:
        raise ConfigurationError("--secret-id needs its SecretKey: give --secret-key-env or --secret-key-file")
    return CloudApiConfig(
        secret_id=args.secret_id,
        secret_key=secret_key,
        region=args.tencent_region,
        instance_id=args.instance_id,
        endpoint=args.cloud_endpoint,
        ca_cert=args.cloud_ca_cert,
        api=args.cloud_api,
        rate=args.cloud_rate,
        retry=RetryPolicy(max_attempts=args.max_attempts),
    )
