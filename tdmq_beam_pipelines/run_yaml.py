"""``python -m tdmq_beam_pipelines.run_yaml PIPELINE``: a Beam YAML pipeline, run by Beam's own
``apache_beam.yaml.main``, from wherever the package is installed.

What it adds to Beam's main, and why:

- PIPELINE is an example's name (``backfill_device_commands``, ``enrich_client_status``: the files
  of ``tdmq_beam_pipelines/yaml/``, installed with the package) or the path of any ``.yaml`` file;
- the Jinja variable ``schemas`` is the installed schema directory unless given, so the examples'
  default schema is found outside a checkout (run by Beam's main, it is ``schemas/`` under the
  working directory);
- Beam's start-up noise is left out (the ML transforms and file systems it cannot import, the INFO
  lines of the Prism runner it falls back from), and a mistyped flag, a configuration error or a
  bad ``--jinja_variables`` is one line and exit status 2, as in the other jobs; a Ctrl-C ends it
  with status 130, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tdmq_beam.errors import ConfigurationError
from tdmq_beam_pipelines.package_files import SCHEMAS, YAML_PIPELINES
from tdmq_beam_pipelines.service_flags import check_beam_flags, usage_error
from tdmq_beam_pipelines.signals import EXIT_STOPPED

__all__ = ["EXAMPLES", "main"]

PROGRAM = "run_yaml"
EXAMPLES = {path.stem: path for path in sorted(YAML_PIPELINES.glob("*.yaml"))}
"""The example pipelines by name."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m tdmq_beam_pipelines.{PROGRAM}",
        description="Runs a Beam YAML pipeline with apache_beam.yaml.main, the package's schemas found where installed",
        epilog="Any other argument is a Beam pipeline option (--runner, --direct_num_workers, ...).",
        allow_abbrev=False,
    )
    parser.add_argument("pipeline", help=f"an example ({', '.join(EXAMPLES)}) or the path of a .yaml file")
    parser.add_argument(
        "--jinja_variables",
        default="{}",
        help='a JSON object of the pipeline\'s variables, e.g. \'{"input": "commands.jsonl", "output": "out/yaml"}\'; '
        f"schemas defaults to {SCHEMAS}",
    )
    parser.add_argument(
        "--json_schema_validation", default="generic", help="Beam's: none, generic or per_transform (default generic)"
    )
    return parser


def _variables(text: str) -> dict:
    try:
        variables = json.loads(text)
    except ValueError as exc:
        usage_error(PROGRAM, f"--jinja_variables is not JSON ({exc})")
    if not isinstance(variables, dict):
        usage_error(PROGRAM, f"--jinja_variables must be a JSON object, got {type(variables).__name__}")
    return variables


def _caused_by_configuration(error: BaseException) -> bool:
    """Whether ``error`` is, or wraps, a `ConfigurationError` (Beam YAML wraps a transform's
    errors in a ValueError of its own that names the transform)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ConfigurationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the pipeline; returns the exit status (0; 2 for a usage or configuration error; 130 stopped)."""
    parser = _parser()
    args, beam_args = parser.parse_known_args(argv)
    check_beam_flags(parser, beam_args)
    path = EXAMPLES.get(args.pipeline, Path(args.pipeline))
    if not path.is_file():
        usage_error(PROGRAM, f"no pipeline {args.pipeline!r}: give an example ({', '.join(EXAMPLES)}) or a .yaml file")
    variables = {"schemas": str(SCHEMAS), **_variables(args.jinja_variables)}
    logging.basicConfig(level=logging.WARNING)
    from apache_beam.yaml import main as yaml_main  # here: its import logs what the filter of our commands drops
    from jinja2.exceptions import UndefinedError  # Beam YAML's (the yaml extra)

    yaml_argv = [
        f"--yaml_pipeline_file={path}",
        f"--jinja_variables={json.dumps(variables)}",
        f"--json_schema_validation={args.json_schema_validation}",
        *beam_args,
    ]
    try:
        yaml_main.run(yaml_argv)
    except UndefinedError as exc:
        usage_error(PROGRAM, f"the pipeline needs a Jinja variable ({exc}): give it in --jinja_variables")
    except ValueError as exc:
        if not _caused_by_configuration(exc):
            raise
        usage_error(PROGRAM, str(exc))  # Beam's text names the transform and its line, then ours
    except KeyboardInterrupt:
        print(f"{PROGRAM}: stopped", file=sys.stderr)
        return EXIT_STOPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
