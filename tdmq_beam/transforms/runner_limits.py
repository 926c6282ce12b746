"""What some runners cannot do, resolved once per pipeline: `RunnerCapabilities`.

Beam's Dask runner (2.77, 2.78) is the one runner here with limits that reach the
connector. Its translation (``apache_beam/runners/dask``) keys each Dask bag by
the producing transform, not by the output tag, so every output of a
multi-output ``ParDo`` reaches every consumer; it runs no stateful DoFn; in 2.77 it
collects a partition's outputs before it calls ``finish_bundle``, so whatever a DoFn
emits there is dropped (2.78 keeps them; the table counts 2.77, the shape both run);
it reads no files through ``ReadFromText``, reports no metrics, and keeps a Dask
client open after the run. (It also computes only the branch of the last transform
applied: docs/runners.md has the list and the pipelines' shapes that run anyway.)

Transforms ask `RunnerCapabilities.of(pipeline)` in ``expand`` and hand DoFns
plain settings; no DoFn and no pipeline tests the runner's name.
"""

from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam

__all__ = ["RunnerCapabilities"]


@dataclass(frozen=True)
class RunnerCapabilities:
    """What the pipeline's runner does as Beam's model says.

    Attributes:
        tagged_outputs: each output of a multi-output ParDo reaches only its own consumers.
        finish_bundle_outputs: what a DoFn emits in ``finish_bundle`` reaches downstream.
        stateful_dofns: stateful DoFns (so ``GroupIntoBatches``) run.
        file_io: Beam's text file reads and writes (``ReadFromText``, ``WriteToText``) both run.
        metrics: the pipeline result reports metrics.
        leaves_client_open: the result holds a client (``result.client``) to close after the run.
        mqtt_read_beside_pubsub: an MQTT read (``ReadFromTdmqMqtt``) runs in a pipeline that
            also reads Pub/Sub. Not on the DirectRunner: Beam 2.77 runs such a pipeline on its
            ``BundleBasedDirectRunner``, which cannot run Beam's UnboundedSource wrapper
            (docs/runners.md).
    """

    tagged_outputs: bool = True
    finish_bundle_outputs: bool = True
    stateful_dofns: bool = True
    file_io: bool = True
    metrics: bool = True
    leaves_client_open: bool = False
    mqtt_read_beside_pubsub: bool = True

    @classmethod
    def of(cls, pipeline: beam.Pipeline) -> RunnerCapabilities:
        """The capabilities of ``pipeline``'s runner."""
        return cls.named(type(pipeline.runner).__name__)

    @classmethod
    def named(cls, runner: str | None) -> RunnerCapabilities:
        """The capabilities of the runner named ``runner`` (a ``--runner`` value; None: the DirectRunner)."""
        name = (runner or "DirectRunner").rsplit(".", 1)[-1]
        if name == "DaskRunner":
            return _DASK
        return _DIRECT if name in ("DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner") else _FULL


_FULL = RunnerCapabilities()
_DIRECT = RunnerCapabilities(mqtt_read_beside_pubsub=False)
_DASK = RunnerCapabilities(
    tagged_outputs=False,
    finish_bundle_outputs=False,
    stateful_dofns=False,
    file_io=False,
    metrics=False,
    leaves_client_open=True,
)
