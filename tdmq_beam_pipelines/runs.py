"""Running a pipeline job to its end and reading its counters: what every job here does alike."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

__all__ = ["committed_counters", "committed_gauges", "new_pipeline", "result_line", "run_to_end"]


def new_pipeline(beam_args: Sequence[str], *, streaming: bool = False) -> beam.Pipeline:
    """A pipeline from the Beam arguments the job did not take for itself.

    The jobs import everything they use from modules, so the main session is not saved.
    """
    options = PipelineOptions(list(beam_args))
    options.view_as(SetupOptions).save_main_session = False
    if streaming:
        options.view_as(StandardOptions).streaming = True
    return beam.Pipeline(options=options)


def run_to_end(pipeline: beam.Pipeline) -> tuple[Any, float]:
    """Runs ``pipeline`` until it finishes: (its result, the seconds it took)."""
    started = time.monotonic()
    result = pipeline.run()
    result.wait_until_finish()
    return result, time.monotonic() - started


def committed_counters(
    result: Any, namespaces: Iterable[str] | Callable[[str], bool], *, except_steps: str | None = None
) -> dict[str, int]:
    """The committed counters of ``namespaces`` (names, or a test of a name), summed by counter name;
    with ``except_steps``, not those of steps whose label starts with it."""
    wanted = namespaces if callable(namespaces) else frozenset(namespaces).__contains__
    counters: dict[str, int] = {}
    for metric in result.metrics().query(MetricsFilter())["counters"]:
        if except_steps is not None and metric.key.step.startswith(except_steps):
            continue
        if wanted(metric.key.metric.namespace):
            name = metric.key.metric.name
            counters[name] = counters.get(name, 0) + metric.committed
    return counters


def committed_gauges(result: Any, namespace: str) -> dict[str, int]:
    """The committed gauges of ``namespace`` by name (the latest value of each, over all steps)."""
    latest: dict[str, tuple[Any, int]] = {}
    for metric in result.metrics().query(MetricsFilter().with_namespace(namespace))["gauges"]:
        gauge = metric.committed
        name = metric.key.metric.name
        if gauge is not None and (name not in latest or gauge.timestamp > latest[name][0]):
            latest[name] = (gauge.timestamp, gauge.value)
    return {name: value for name, (_, value) in latest.items()}


def result_line(result: Any) -> str:
    """A result (published, failed, verified, missing) as one JSON line whose ``element`` is the
    element as JSON itself, not a JSON string inside the JSON (what the Avro records hold, as
    ``element_json``): jq and BigQuery read it as it is."""
    record = result.as_dict()
    element = json.loads(record.pop("element_json"))
    return json.dumps({"element": element, **record}, ensure_ascii=False)
