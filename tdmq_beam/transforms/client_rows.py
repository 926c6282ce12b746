"""A client's status as Beam Rows, for the enrichment transform and Beam's `Enrichment` handler,
and as typed rows (`ClientRow`) where a schema is declared (Beam YAML).

No ``from __future__ import annotations`` here: Beam infers `ClientRow`'s schema
from its evaluated field annotations.
"""

from typing import Any, NamedTuple, Optional

import apache_beam as beam

from tdmq_beam.service.status_lookup import ClientStatus

__all__ = ["ClientRow", "SubscriptionRow", "details_row"]


class SubscriptionRow(NamedTuple):
    topic_filter: str
    qos: int


class ClientRow(NamedTuple):
    """A client's details with a declared schema (Unix milliseconds); the traffic counters,
    which only one of the two cloud APIs gives, are left out."""

    client_id: str
    client_address: str
    protocol_version: int
    keepalive: int
    connection_status: str
    clean_session: bool
    subscriptions: list[SubscriptionRow]
    create_time: int
    connect_time: int
    disconnect_time: int
    session_expiry_interval: Optional[int]  # noqa: UP045 (Beam's schema inference reads typing.Optional)

    @classmethod
    def of(cls, details: Any) -> "Optional[ClientRow]":  # noqa: UP045
        """The typed row of a `details_row` Row, or None for None."""
        if details is None:
            return None
        fields = details._asdict()
        fields["subscriptions"] = [SubscriptionRow(sub.topic_filter, sub.qos) for sub in fields["subscriptions"]]
        return cls(*[fields.get(name) for name in cls._fields])


def details_row(status: ClientStatus) -> Optional[beam.Row]:  # noqa: UP045
    """The details of ``status`` as a Beam Row (subscriptions as Rows), or None."""
    if status.details is None:
        return None
    fields = status.details.as_dict()
    fields["subscriptions"] = [beam.Row(**sub) for sub in fields["subscriptions"]]
    return beam.Row(**fields)
