"""One client per worker process, shared by every DoFn instance of a transform (Beam's `Shared`)."""

from __future__ import annotations

from apache_beam.utils.shared import Shared

from tdmq_beam.service.client import TdmqClient
from tdmq_beam.service.cloud_api import CloudApiConfig
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.service.status_lookup import LookupSettings, StatusLookup

__all__ = ["acquire_client", "acquire_status_lookup"]

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
