"""`DeduplicateMessages`: drops a received message whose idempotency key was seen recently.

At-least-once reading means a message may come twice (flagged ``dup``), and a
publisher that retries may send it twice. `WriteToTdmqMqtt` can stamp each
message with an ``idempotency-key`` user property; this transform keeps the
first message per key within a window of event time.
"""

from __future__ import annotations

from collections.abc import Iterable

import apache_beam as beam
from apache_beam.coders import BooleanCoder
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain

from tdmq_beam.option_checks import non_empty_text, positive
from tdmq_beam.records.received_message import ReceivedMessage

__all__ = ["DeduplicateMessages"]


class _FirstPerKeyFn(beam.DoFn):
    """Passes the first value of each key, then drops the key's values until ``window`` seconds
    of event time later. Beam's `DeduplicatePerKey` also declares a processing-time timer,
    which sends a DirectRunner pipeline to the runner that cannot run the MQTT source."""

    SEEN = userstate.ReadModifyWriteStateSpec("seen", BooleanCoder())
    EXPIRY = userstate.TimerSpec("expiry", TimeDomain.WATERMARK)

    def __init__(self, window: float) -> None:
        self._window = window

    def process(
        self,
        element: tuple[str, ReceivedMessage],
        timestamp=beam.DoFn.TimestampParam,
        seen=beam.DoFn.StateParam(SEEN),
        expiry=beam.DoFn.TimerParam(EXPIRY),
    ) -> Iterable[ReceivedMessage]:
        if seen.read():
            return
        seen.write(True)
        expiry.set(timestamp + self._window)
        yield element[1]

    @userstate.on_timer(EXPIRY)
    def forget(self, seen=beam.DoFn.StateParam(SEEN)) -> None:
        seen.clear()


def _by_key_presence(message: ReceivedMessage, partitions: int, property_name: str) -> int:
    return 0 if message.user_property(property_name) is not None else 1


class DeduplicateMessages(beam.PTransform):
    """Drops a `ReceivedMessage` whose idempotency key was seen within ``window`` seconds of event time.

    State is kept per key and forgotten once the watermark passes the window,
    so memory stays bounded by the keys seen in one window. Messages without
    the property pass untouched.

    Args:
        window: seconds of event time within which a repeated key is dropped.
        idempotency_property: the user property holding the key. Defaults to
            ``idempotency-key`` (what `WriteToTdmqMqtt` adds with ``idempotency_key``).

    Raises:
        ConfigurationError: a window that is not positive seconds.
    """

    def __init__(self, window: float, *, idempotency_property: str = "idempotency-key") -> None:
        super().__init__()
        self._window = positive("window", window, unit=" seconds")
        non_empty_text("idempotency_property", idempotency_property)
        self._property = idempotency_property

    def expand(self, messages: beam.PCollection[ReceivedMessage]) -> beam.PCollection[ReceivedMessage]:
        key = self._property
        keyed, unkeyed = messages | "HasIdempotencyKey" >> beam.Partition(_by_key_presence, 2, key)  # type: ignore[arg-type]
        unique = (
            keyed
            | "KeyByIdempotencyKey" >> beam.Map(lambda message: (message.user_property(key), message))
            | "Deduplicate" >> beam.ParDo(_FirstPerKeyFn(self._window)).with_output_types(ReceivedMessage)
        )
        return (unique, unkeyed) | "Merge" >> beam.Flatten().with_output_types(ReceivedMessage)
