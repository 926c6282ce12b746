"""A DoFn's tagged outputs, kept apart on every runner.

Beam's Dask runner (2.77, 2.78) hands every output of a multi-output ``ParDo`` to every
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
from apache_beam import pvalue

from tdmq_beam.transforms.runner_limits import RunnerCapabilities

__all__ = ["output", "par_do_with_outputs"]


def _pick(pair: tuple[str | None, Any], tag: str | None) -> Iterator[Any]:
    if pair[0] == tag:
        yield pair[1]


def output(tag: str | None, value: Any, pairs: bool, wrap: Callable[[Any], Any] | None = None) -> Any:
    """What a DoFn applied with `par_do_with_outputs` emits for ``value`` on output ``tag`` (None:
    the main one): the ``(tag, value)`` pair when ``pairs``, else ``value`` (as a ``TaggedOutput``
    for another output). ``wrap`` puts what is emitted in a timestamp or windows
    (``TimestampedValue``, ``WindowedValue.with_value``)."""
    if pairs:
        return (tag, value) if wrap is None else wrap((tag, value))
    wrapped = value if wrap is None else wrap(value)
    return wrapped if tag is None else pvalue.TaggedOutput(tag, wrapped)


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
