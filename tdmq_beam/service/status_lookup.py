"""Client status lookups that respect the service: per-process TTL caches, de-duplication, rate limits.

`StatusLookup` lives once per worker process (per transform), on the shared
client's event loop, so every DoFn instance in the process shares its caches:

- online status (the status API) and details (the cloud API) are cached
  separately, each with its own TTL; clients the cloud API does not know are
  cached too (negative caching) with their own TTL; both caches are bounded,
  evicting the least recently used;
- a lookup already in flight is shared: a hundred elements for one client in
  a batch make one request;
- lookups run concurrently, bounded by the connection's ``max_in_flight``;
  the status API is paced by ``status_qps`` (and the connection's ``tps``),
  the cloud API by ``CloudApiConfig.rate``. All of these are per worker
  process: divide the service's quota by the number of worker processes.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cachetools

from tdmq_beam.option_checks import non_negative, optional, positive, positive_int
from tdmq_beam.rules.token_bucket import TokenBucket
from tdmq_beam.service.client import AsyncTdmqClient, TdmqClient
from tdmq_beam.service.cloud_api import ClientDetails
from tdmq_beam.service.concurrency import run_bounded

__all__ = ["ClientStatus", "LookupResults", "LookupSettings", "StatusLookup"]


@dataclass(frozen=True)
class ClientStatus:
    """What is known of one client.

    Attributes:
        client_id: the client.
        online: whether it is connected now; None when the lookup failed and
            the element was passed through unknown.
        details: its details from the cloud API; None without a cloud config,
            or when the service does not know the client.
        known: whether the cloud API knows the client (None without a cloud config).
    """

    client_id: str
    online: bool | None
    details: ClientDetails | None = None
    known: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "online": self.online,
            "known": self.known,
            "client": self.details.as_dict() if self.details is not None else None,
        }


class LookupResults(list):
    """`StatusLookup.lookup_batch`'s results, with what the batch cost in ``stats``
    (hits, misses, status_calls, details_calls, throttled)."""

    stats: collections.Counter


@dataclass(frozen=True)
class LookupSettings:
    """Cache and rate settings of `StatusLookup` (see `EnrichWithClientStatus`)."""

    status_ttl: float = 5.0
    details_ttl: float = 60.0
    negative_ttl: float = 30.0
    max_cached: int = 100_000
    status_qps: float | None = None

    def __post_init__(self) -> None:
        for name in ("status_ttl", "details_ttl", "negative_ttl"):
            non_negative(name, getattr(self, name), unit=" seconds")
        positive_int("max_cached", self.max_cached)
        optional(positive, "status_qps", self.status_qps, unit=" calls per second, or None")


def _cache(size: int, ttl: float, negative_ttl: float | None = None) -> cachetools.TLRUCache:
    def expires(_key: Any, value: Any, now: float) -> float:
        return now + (negative_ttl if negative_ttl is not None and value is None else ttl)

    return cachetools.TLRUCache(maxsize=size, ttu=expires, timer=asyncio.get_running_loop().time)


class StatusLookup:
    """Cached, de-duplicated, rate-limited lookups on one `TdmqClient` (one per worker process)."""

    def __init__(self, client: TdmqClient, settings: LookupSettings) -> None:
        self.client = client
        self.settings = settings
        self._with_details = client.cloud is not None
        # Made on the client's loop: the caches use its clock.
        client.run(self._init_on_loop())

    async def _init_on_loop(self) -> None:
        settings = self.settings
        self._status = _cache(settings.max_cached, settings.status_ttl)
        self._details = _cache(settings.max_cached, settings.details_ttl, settings.negative_ttl)
        self._in_flight: dict[tuple[str, str], asyncio.Future] = {}
        self._status_bucket = TokenBucket(settings.status_qps) if settings.status_qps else None

    @property
    def aio(self) -> AsyncTdmqClient:
        return self.client.aio

    def submit_batch(self, client_ids: Sequence[str], concurrency: int | None = None):
        """Starts `lookup_batch` on the client's loop; returns a concurrent future."""
        return self.client.submit(self.lookup_batch(client_ids, concurrency))

    async def lookup_batch(self, client_ids: Sequence[str], concurrency: int | None = None) -> LookupResults:
        """One result per id (a `ClientStatus`, or the error that stopped it), in order.

        ``concurrency`` lookups run at once (default: the connection's ``max_in_flight``).
        """
        stats: collections.Counter = collections.Counter()
        throttled_before = self.aio.cloud_throttled
        results = LookupResults(
            await run_bounded(
                client_ids,
                lambda client_id: self.lookup(client_id, stats),
                concurrency or self.aio.max_in_flight,
            )
        )
        stats["throttled"] += self.aio.cloud_throttled - throttled_before
        results.stats = stats
        return results

    async def lookup(self, client_id: str, stats: collections.Counter | None = None) -> ClientStatus:
        """The client's status (and details with a cloud config), from the caches or the service."""
        stats = stats if stats is not None else collections.Counter()
        if not self._with_details:
            online = await self._cached("status", self._status, client_id, self._fetch_status, stats)
            return ClientStatus(client_id, online)
        online, details = await asyncio.gather(
            self._cached("status", self._status, client_id, self._fetch_status, stats),
            self._cached("details", self._details, client_id, self._fetch_details, stats),
        )
        return ClientStatus(client_id, online, details, details is not None)

    async def _cached(
        self,
        kind: str,
        cache: cachetools.TLRUCache,
        client_id: str,
        fetch: Callable[[str, collections.Counter], Awaitable[Any]],
        stats: collections.Counter,
    ) -> Any:
        try:
            value = cache[client_id]
        except KeyError:
            pass
        else:
            stats["hits"] += 1
            return value
        key = (kind, client_id)
        shared = self._in_flight.get(key)
        if shared is not None:
            stats["hits"] += 1  # de-duplicated: served by the call already in flight
            return await asyncio.shield(shared)
        stats["misses"] += 1
        future = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            value = await fetch(client_id, stats)
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        else:
            cache[client_id] = value
            future.set_result(value)
            return value
        finally:
            del self._in_flight[key]

    async def _fetch_status(self, client_id: str, stats: collections.Counter) -> bool:
        bucket = self._status_bucket
        if bucket is not None:
            wait = bucket.reserve()
            if wait:
                stats["throttled"] += 1
                await asyncio.sleep(wait)
        stats["status_calls"] += 1
        return await self.aio.is_online(client_id)

    async def _fetch_details(self, client_id: str, stats: collections.Counter) -> ClientDetails | None:
        stats["details_calls"] += 1
        return await self.aio.describe_client(client_id)
