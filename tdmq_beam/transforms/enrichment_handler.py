"""`TdmqClientStatusHandler`: the client-status lookup as a source handler for Beam's `Enrichment`.

For pipelines built on ``apache_beam.transforms.enrichment.Enrichment`` (and its
Redis cache)::

    rows | Enrichment(TdmqClientStatusHandler(connection, cloud, client_id_field="device_id"))

`Enrichment` calls the handler once per element, synchronously; prefer
`EnrichWithClientStatus` for throughput (``benchmarks/enrich_throughput.py``).
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.io.requestresponse import (
    UserCodeExecutionException,
    UserCodeQuotaException,
    UserCodeTimeoutException,
)
from apache_beam.transforms.enrichment import EnrichmentSourceHandler

from tdmq_beam.errors import ConfigurationError, RateLimitedError, RequestTimeoutError, TdmqError
from tdmq_beam.service.client import TdmqClient
from tdmq_beam.service.cloud_api import CloudApiConfig
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.service.status_lookup import ClientStatus
from tdmq_beam.transforms.client_rows import details_row

__all__ = ["TdmqClientStatusHandler"]


class TdmqClientStatusHandler(EnrichmentSourceHandler[beam.Row, beam.Row]):
    """Looks up a Row's client: the response Row has ``online`` and, with ``cloud``, ``client``.

    Errors map onto `Enrichment`'s retry contract: 429 and ``RequestLimitExceeded``
    raise `UserCodeQuotaException`, timeouts `UserCodeTimeoutException` (both
    retried by Enrichment's repeater), anything else `UserCodeExecutionException`.

    Args:
        connection: the instance access point and credentials.
        cloud: cloud API credentials, to add the client's details.
        client_id_field: the Row field holding the client id. Defaults to ``client_id``.
    """

    def __init__(
        self, connection: TdmqConnection, cloud: CloudApiConfig | None = None, *, client_id_field: str = "client_id"
    ) -> None:
        if not isinstance(connection, TdmqConnection):
            raise ConfigurationError(f"connection must be a TdmqConnection, got {type(connection).__name__}")
        if not client_id_field:
            raise ConfigurationError("client_id_field must name a field")
        self._connection = connection
        self._cloud = cloud
        self._field = client_id_field
        self._client: TdmqClient  # opened by __enter__, as Beam's Enrichment does first

    def __enter__(self) -> TdmqClientStatusHandler:
        self._client = TdmqClient(self._connection, self._cloud)
        return self

    def __exit__(self, *exc_info: object) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
            del self._client

    def _client_id(self, request: beam.Row) -> str:
        client_id = request._asdict().get(self._field)
        if not isinstance(client_id, str) or not client_id:
            raise UserCodeExecutionException(f"field {self._field!r} must hold the client id, got {client_id!r}")
        return client_id

    def __call__(self, request: beam.Row, *args: Any, **kwargs: Any) -> tuple[beam.Row, beam.Row]:  # type: ignore[override]  # Enrichment's handlers answer (request, response)
        client_id = self._client_id(request)
        try:
            online = self._client.is_online(client_id)
            fields: dict[str, Any] = {"online": online}
            if self._cloud is not None:
                details = self._client.describe_client(client_id)
                fields["client"] = details_row(ClientStatus(client_id, online, details, details is not None))
        except TdmqError as error:
            if isinstance(error, RateLimitedError) or getattr(error, "code", "").startswith("RequestLimitExceeded"):
                raise UserCodeQuotaException(str(error)) from None
            if isinstance(error, RequestTimeoutError):
                raise UserCodeTimeoutException(str(error)) from None
            raise UserCodeExecutionException(f"looking up client {client_id!r}: {error}") from None
        return request, beam.Row(**fields)

    def get_cache_key(self, request: beam.Row) -> str:
        return f"tdmq-client-status:{self._client_id(request)}"
