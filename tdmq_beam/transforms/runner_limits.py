"""What some runners cannot do, named in one place: Beam 2.77's Dask runner, for now.

Its translation (``apache_beam/runners/dask``) keys each Dask bag by the
producing transform, not by the output tag, so every output of a multi-output
``ParDo`` reaches every consumer; and it collects a partition's outputs before
it calls ``finish_bundle``, so whatever a DoFn emits there is dropped. (It also
reads and writes no files, runs no stateful DoFn, reports no metrics, and
computes only the branch of the last transform applied: the README has the
list and the pipelines' shapes that run anyway.)
"""

from __future__ import annotations

import apache_beam as beam

__all__ = ["drops_finish_bundle_outputs", "is_dask", "mixes_tagged_outputs"]


def is_dask(pipeline: beam.Pipeline) -> bool:
    """Whether the pipeline runs on Beam's Dask runner."""
    return type(pipeline.runner).__name__ == "DaskRunner"


def mixes_tagged_outputs(pipeline: beam.Pipeline) -> bool:
    """Whether the runner would send every output of a ParDo to every consumer."""
    return is_dask(pipeline)


def drops_finish_bundle_outputs(pipeline: beam.Pipeline) -> bool:
    """Whether the runner drops what a DoFn emits in ``finish_bundle``."""
    return is_dask(pipeline)
