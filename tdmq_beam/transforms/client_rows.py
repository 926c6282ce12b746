"""A client's status as Beam Rows, for the enrichment transform and Beam's `Enrichment` handler."""

from __future__ import annotations

import apache_beam as beam

from tdmq_beam.service.status_lookup import ClientStatus

__all__ = ["details_row"]


def details_row(status: ClientStatus) -> beam.Row | None:
    """The details of ``status`` as a Beam Row (subscriptions as Rows), or None."""
    if status.details is None:
        return None
    fields = status.details.as_dict()
    fields["subscriptions"] = [beam.Row(**sub) for sub in fields["subscriptions"]]
    return beam.Row(**fields)
