"""The example jobs: ``python -m tdmq_beam_pipelines.{backfill_device_commands, enrich_client_status,
ingest_device_telemetry}``.

Run as such a command, the package first silences the warnings Beam logs while it imports the
optional file systems and cloud clients an environment lacks (``Failed to import GCSFileSystem``,
``apitools not found``): they are about Beam's extras, not the job, and they buried the job's own
one-line errors. Imported into a user's program, it changes nothing.
"""

from __future__ import annotations

import logging
import sys

_BEAM_IMPORT_NOISE = (
    "Failed to import GCSFileSystem",
    "Failed to import HadoopFileSystem",
    "Failed to import S3FileSystem",
    "Failed to import AzureBlobStorageFileSystem",
    "apitools not found",
    "Could not load ML transform module",  # Beam YAML's providers, for ML extras not installed
)


class _QuietBeamImports(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_BEAM_IMPORT_NOISE)


def _run_as_our_command() -> bool:
    argv = list(getattr(sys, "orig_argv", ()))
    return any(
        arg == "-m" and argv[i + 1 : i + 2] and argv[i + 1].startswith(__name__ + ".") for i, arg in enumerate(argv)
    )


if _run_as_our_command():
    for _name in ("", "apache_beam.io.filesystems"):
        logging.getLogger(_name).addFilter(_QuietBeamImports())
