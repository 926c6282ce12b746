"""Where the jobs take a client's status from: ``--status-source``, written once for the jobs that enrich.

``query`` asks the service (one API call per client per ``--status-ttl``);
``events`` answers from the client events (`ReadClientEvents`, no API call;
as wrong as the events are late or lost); ``events+query`` answers from the
events where they have settled the client and asks the service for the rest.
The events modes add no client details, so they refuse the cloud API flags.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import apache_beam as beam

from tdmq_beam import ConfigurationError, ReadClientEvents, TdmqConnection
from tdmq_beam.transforms.enrich import SOURCES, check_source
from tdmq_beam_pipelines.service_flags import usage_error

__all__ = ["add_status_source_flags", "check_status_source", "status_options"]


def add_status_source_flags(group: argparse._ArgumentGroup, *, client_id_prefix: str) -> None:
    """``--status-source``, ``--staleness``, ``--offline-expiry`` and ``--events-client-id-prefix`` in ``group``."""
    group.add_argument(
        "--status-source",
        choices=SOURCES,
        default="query",
        help="query: ask the service per client; events: the client events alone (no API call); "
        "events+query: the events where they are fresh, the service for the rest",
    )
    group.add_argument(
        "--staleness", type=float, default=600.0, help="events+query: seconds after which a client's events are asked"
    )
    group.add_argument(
        "--offline-expiry", type=float, default=86400.0, help="events: seconds an offline client is remembered"
    )
    group.add_argument(
        "--events-client-id-prefix",
        default=client_id_prefix,
        help="events: client id prefix of the events reader",
    )


def check_status_source(program: str, args: argparse.Namespace) -> None:
    """One line and exit 2 for a ``--status-source`` that cannot work with the other flags."""
    try:
        check_source(args.status_source, with_cloud=bool(args.secret_id))
    except ConfigurationError:
        usage_error(
            program,
            f"--status-source {args.status_source} adds no client details: drop the cloud API flags "
            "(--secret-id ...) or use --status-source query",
        )


def status_options(
    pipeline: beam.Pipeline,
    args: argparse.Namespace,
    connection: TdmqConnection,
    *,
    client_events: beam.PTransform | None = None,
    **read_options: Any,
) -> dict[str, Any]:
    """The `EnrichWithClientStatus` keywords for ``args.status_source``: with an events source,
    the client events read from the service (``client_events`` replaces that read, for
    tests), their malformed ones logged."""
    if args.status_source == "query":
        return {}
    if client_events is None:
        client_events = ReadClientEvents(connection, client_id_prefix=args.events_client_id_prefix, **read_options)
    read = pipeline | "ClientEvents" >> client_events
    events = getattr(read, "events", read)
    failed = getattr(read, "failed", None)
    if failed is not None:
        _ = failed | "LogBadEvents" >> beam.Map(
            lambda failure: logging.getLogger(__name__).warning("malformed client event: %s", failure.reason)
        )
    return {
        "source": args.status_source,
        "events": events,
        "staleness": args.staleness,
        "offline_expiry": args.offline_expiry,
    }
