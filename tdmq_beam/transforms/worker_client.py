"""One client per worker process, shared by every DoFn instance of a transform (Beam's `Shared`),
and `WorkerClientFn`, the base of the DoFns that call the service on it."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.utils.shared import Shared

from tdmq_beam.service.client import TdmqClient
from tdmq_beam.service.cloud_api import CloudApiConfig
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.service.status_lookup import LookupSettings, StatusLookup

__all__ = ["WorkerClientFn", "acquire_client", "acquire_status_lookup"]

_SHARED = Shared()


def acquire_client(connection: TdmqConnection | None, cloud: CloudApiConfig | None, tag: str) -> TdmqClient:
    """The process's client for ``tag`` (one tag per transform instance), made on first use.

    The client (its event loop thread and connection pool) lives while any
    DoFn holds it, and closes when the last one lets go.
    """
    return _SHARED.acquire(lambda: TdmqClient(connection, cloud), tag=tag)


def acquire_status_lookup(
    connection: TdmqConnection | None, cloud: CloudApiConfig | None, settings: LookupSettings, tag: str
) -> StatusLookup:
    """The process's status lookup (client and caches) for ``tag``, made on first use."""
    return _SHARED.acquire(lambda: StatusLookup(TdmqClient(connection, cloud), settings), tag=tag)


class WorkerClientFn(beam.DoFn):
    """Base DoFn holding its worker process's client for ``tag`` from ``setup`` to ``teardown``,
    and reporting Beam `Lineage` once per DoFn instance, in its first bundle (``report_lineage``)."""

    def __init__(self, connection: TdmqConnection | None, cloud: CloudApiConfig | None, tag: str) -> None:
        self._connection = connection
        self._cloud = cloud
        self._tag = tag
        self._lineage_reported = False
        self.client: TdmqClient  # set up by setup(), on the worker

    def report_lineage(self) -> None:
        """Reports the DoFn's Lineage sources and sinks (none by default)."""

    def setup(self) -> None:
        self.client = acquire_client(self._connection, self._cloud, self._tag)

    def start_bundle(self) -> None:
        if not self._lineage_reported:
            self._lineage_reported = True
            self.report_lineage()

    def teardown(self) -> None:
        self.client = None  # type: ignore[assignment]  # the last DoFn to let go closes the shared client
