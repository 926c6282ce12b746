"""Running pipelines in tests and reading back what they produced."""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def to_json_lines(pcoll: beam.PCollection, path: str, label: str) -> None:
    """Writes records' ``as_dict()`` to ``path`` as JSON lines (one shard)."""
    (
        pcoll
        | f"{label}ToJson" >> beam.Map(lambda record: json.dumps(record.as_dict(), sort_keys=True))
        | f"{label}Write" >> beam.io.WriteToText(path, shard_name_template="", num_shards=1)
    )


def read_json_lines(path: str) -> list[dict[str, Any]]:
    records = []
    for name in sorted(glob.glob(path + "*")):
        with open(name) as handle:
            records.extend(json.loads(line) for line in handle if line.strip())
    return records


def run(build, tmp_path, *args: str) -> tuple[list[dict], list[dict]]:
    """Builds with ``build(pipeline) -> WriteResult-like``, runs, and returns (published, failed) records."""
    published_path = os.path.join(tmp_path, "published.jsonl")
    failed_path = os.path.join(tmp_path, "failed.jsonl")
    with beam.Pipeline(options=PipelineOptions(list(args))) as pipeline:
        result = build(pipeline)
        to_json_lines(result.published, published_path, "Published")
        to_json_lines(result.failed, failed_path, "Failed")
    return read_json_lines(published_path), read_json_lines(failed_path)
