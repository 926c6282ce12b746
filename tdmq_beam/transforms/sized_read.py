"""Beam's read of an `UnboundedSource`, with each restriction sized by the source's backlog.

Beam's Python wrapper (``apache_beam.io.unbounded_source``) sizes every
restriction 1 (TODO beam#19137 there). A runner reads the backlog of a
streaming splittable DoFn from the size of the residual restriction each
self-checkpoint leaves behind, and Dataflow scales streaming jobs on it; so
this read sizes the residual as Java's wrapper does, with the reader's share
of the backlog in bytes (Java's ``getSplitBacklogBytes``), and 1 (Beam's
figure) where the source does not know its backlog.

The wrapper's DoFn and restriction provider are private to Beam: this module
subclasses them in one place, and ``tests/test_read_backlog.py`` fails
should Beam change them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import apache_beam as beam
from apache_beam.io import unbounded_source as beam_unbounded
from apache_beam.io.unbounded_source import UnboundedSource
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator

__all__ = ["BacklogSizedSource", "ReadSizedUnboundedSource"]


@runtime_checkable
class BacklogSizedSource(Protocol):
    """An `UnboundedSource` that knows its backlog."""

    def split_backlog_bytes(self) -> int | None:
        """This split's backlog in bytes, or None when it is not known."""


class _BacklogSizedProvider(beam_unbounded._UnboundedSourceRestrictionProvider):
    def restriction_size(self, element: Any, restriction: Any) -> int:
        source = restriction.source
        if not restriction.is_done and isinstance(source, BacklogSizedSource):
            size = source.split_backlog_bytes()
            if size is not None:
                return max(int(size), 0)
        return super().restriction_size(element, restriction)


_PROVIDER = _BacklogSizedProvider()


class _ReadSizedDoFn(beam_unbounded._ReadFromUnboundedSourceDoFn):
    """Beam's reading DoFn, with `_BacklogSizedProvider` as its restriction provider."""

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        unused_element: Any,
        bundle_finalizer: Any = beam.DoFn.BundleFinalizerParam,
        tracker: Any = beam.DoFn.RestrictionParam(_PROVIDER),
        watermark_estimator: Any = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ) -> Any:
        yield from super().process(unused_element, bundle_finalizer, tracker, watermark_estimator)


class ReadSizedUnboundedSource(beam_unbounded.ReadFromUnboundedSource):
    """`ReadFromUnboundedSource` (same arguments) whose restrictions are sized by the source's
    backlog, for sources that are `BacklogSizedSource`."""

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        source: UnboundedSource = self._source
        read = _ReadSizedDoFn(self._poll_interval, self._max_records_per_bundle, self._max_read_time_seconds)
        return pbegin | "Create" >> beam.Create([source]) | "ReadUnbounded" >> beam.ParDo(read)
