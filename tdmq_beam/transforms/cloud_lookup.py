"""`CloudLookup`: one cloud API call per element, as a transform, in one small class.

Like Beam's ``EnrichmentSourceHandler``: a lookup says which action it calls
(a row of `CLOUD_ACTIONS`), which parameters an element becomes (``request``),
and what an answer becomes (``result``); `CloudLookupTransform` does the rest
(signing, the per-action rate limit, retries, concurrent batches, windowing
kept, typed outputs, ``failed`` with a reason, display data, metrics, lineage).
A public transform over a lookup is a few lines: its label, outputs and result
type, and an ``__init__`` that checks its own options (see `verify.py`).

The lookup, not the transform, travels to the workers: it must pickle, and
holds only what its calls need.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping
from typing import Any, ClassVar

from apache_beam.metrics.metric import Lineage

from tdmq_beam.errors import CloudApiError, ConfigurationError, TdmqError
from tdmq_beam.option_checks import instance_of
from tdmq_beam.rules.cloud_actions import CLOUD_ACTIONS
from tdmq_beam.service.cloud_api import CloudApiConfig
from tdmq_beam.service.concurrency import run_bounded
from tdmq_beam.transforms.base import CallTransform
from tdmq_beam.transforms.batched_calls import FAILED, BatchedCallsFn, Batching, Output
from tdmq_beam.transforms.results import failure_from_error

__all__ = ["CloudLookup", "CloudLookupTransform"]


class CloudLookup:
    """What a cloud lookup does with one element: subclass it and set `action`, write `request` and `result`.

    Attributes:
        action: the cloud API action (a key of `CLOUD_ACTIONS`).
        not_found: error codes meaning "no such resource": `result` gets None for them
            instead of the element going to ``failed``.
    """

    action: ClassVar[str]
    not_found: ClassVar[tuple[str, ...]] = ()

    def request(self, element: Any) -> dict[str, Any]:
        """The action's parameters for ``element`` (``InstanceId`` is added). Raise
        `MappingError` (or any `InvalidMessageError`) to send the element to ``failed`` uncalled."""
        raise NotImplementedError

    def result(self, element: Any, response: dict[str, Any] | None) -> Output:
        """What the answer (the ``Response`` object, or None for a `not_found` code) becomes:
        ``(None, value)`` for the main output, ``(name, value)`` for another."""
        raise NotImplementedError

    def describe(self, element: Any) -> str:
        """What was being done, for the reason of a failure (``calling DescribeMessageDetails``)."""
        return f"calling {self.action}"

    def display_data(self) -> dict[str, Any]:
        """The lookup's own settings for the transform's display data."""
        return {}


class _CloudLookupFn(BatchedCallsFn):
    """Makes one call of the lookup's action per element, concurrently, on the worker's client."""

    COUNTERS = ("calls", "not_found", "failed")

    def __init__(self, lookup: CloudLookup, *, cloud: CloudApiConfig, **options: Any) -> None:
        super().__init__(cloud=cloud, **options)
        self._lookup = lookup
        self._instance_id = cloud.instance_id

    def report_lineage(self) -> None:
        Lineage.sources().add("tencentcloud_mqtt", self.instance, subtype=self._lookup.action)

    def prepare(self, element: Any) -> dict[str, Any]:
        return {"InstanceId": self._instance_id, **self._lookup.request(element)}

    def start(self, work: list[dict[str, Any]]) -> concurrent.futures.Future:
        aio, action, not_found = self.client.aio, self._lookup.action, self._lookup.not_found

        async def call(params: dict[str, Any]) -> dict[str, Any] | None:
            try:
                return (await aio.call_cloud(action, params))[0]
            except CloudApiError as error:
                if error.code in not_found:
                    return None
                raise

        return self.client.submit(run_bounded(work, call, self.concurrency))

    def output(self, element: Any, params: dict[str, Any], result: dict[str, Any] | TdmqError | None) -> Output:
        if isinstance(result, TdmqError):
            self.counters["failed"].inc()
            return FAILED, failure_from_error(element, None, result, context=self._lookup.describe(element))
        self.counters["calls" if result is not None else "not_found"].inc()
        return self._lookup.result(element, result)


class CloudLookupTransform(CallTransform):
    """Base of the transforms that make one cloud API call per element with a `CloudLookup`.

    A subclass sets ``LABEL``, ``MAIN``, ``main_type``, ``OUTPUTS`` (if any) and
    ``Result``, and passes its lookup to ``__init__``.

    Args:
        cloud: cloud API credentials and instance.
        lookup: what each element's call is.
        batching: how calls are batched: a `Batching`, just its mode or its
            settings as a dict. Defaults to ``Batching()``.

    Raises:
        ConfigurationError: an option that cannot work, naming it.
    """

    NEEDS_CONNECTION = False

    def __init__(
        self,
        cloud: CloudApiConfig,
        lookup: CloudLookup,
        *,
        batching: Batching | str | Mapping[str, Any] | None = None,
    ) -> None:
        instance_of("cloud", cloud, CloudApiConfig)
        super().__init__(None, cloud, batching=batching)
        instance_of("lookup", lookup, CloudLookup)
        if lookup.action not in CLOUD_ACTIONS:
            raise ConfigurationError(
                f"{type(lookup).__name__}.action {lookup.action!r} is not a known cloud API action"
            )
        self._lookup = lookup

    def new_fn(self, **options: Any) -> _CloudLookupFn:
        return _CloudLookupFn(self._lookup, **options)

    def describe(self) -> dict[str, Any]:
        return {"action": self._lookup.action, **self._lookup.display_data()}
