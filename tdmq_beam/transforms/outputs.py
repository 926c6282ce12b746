"""A DoFn's tagged outputs, kept apart on every runner.

Beam 2.77's Dask runner hands every output of a multi-output ``ParDo`` to every
consumer: its translation keys each Dask bag by the producing transform, not by
the output's tag (docs/runners.md shows the smallest reproduction). On such a runner
the DoFn emits ``(tag, value)`` pairs on its one output instead, and one
``FlatMap`` per output picks its own. Every other runner gets an ordinary
multi-output ``ParDo``, which costs nothing extra per element.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam

from tdmq_beam.transforms.runner_limits import RunnerCapabilities

__all__ = ["par_do_with_outputs"]


def _pick(pair: tuple[str | None, Any], tag: str | None) -> Iterator[Any]:
    if pair[0] == tag:
        yield pair[1]


def par_do_with_outputs(
    pcoll: beam.PCollection,
    label: str,
    make_fn: Callable[[bool], beam.DoFn],
    main: str,
    types: dict[str, Any],
) -> dict[str, beam.PCollection]:
    """Applies the DoFn ``make_fn(pairs)`` and returns its outputs by name.

    Args:
        make_fn: builds the DoFn; with ``pairs`` True it must emit ``(tag, value)`` on its main
            output (tag None for the main output) instead of ``TaggedOutput``.
        main: the main output's name.
        types: element type of each output by name, the main one included.
    """
    tags = [name for name in types if name != main]
    if not RunnerCapabilities.of(pcoll.pipeline).tagged_outputs:
        pairs = pcoll | label >> beam.ParDo(make_fn(True))
        return {
            name: pairs
            | f"{label}.{name}" >> beam.FlatMap(_pick, None if name == main else name).with_output_types(types[name])
            for name in types
        }
    outputs = pcoll | label >> beam.ParDo(make_fn(False)).with_output_types(
        types[main], **{tag: types[tag] for tag in tags}
    ).with_outputs(*tags, main=main)
    return {name: outputs[name] for name in types}
