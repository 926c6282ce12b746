"""`Message`: an application message inside the emulator's broker, with what it forwards.

Which PUBLISH properties travel with a message to its subscribers is the
service's rule, read from the message-property table.
"""

from __future__ import annotations

from dataclasses import dataclass

from tdmq_beam.mqtt.codec import Prop, encode_utf8
from tdmq_beam.rules.message_properties import FORWARDED_PROPERTIES

__all__ = ["Message"]

# The properties of a PUBLISH that travel with the message to every subscriber, as sent; the
# Message Expiry Interval travels too, as what is left of it (computed at each send).
_FORWARDED = (
    *(identifier for identifier in FORWARDED_PROPERTIES.values() if identifier != Prop.MESSAGE_EXPIRY_INTERVAL),
    Prop.USER_PROPERTY,
)


@dataclass(slots=True)
class Message:
    """An application message inside the broker.

    Attributes:
        properties: the forwarded MQTT 5 properties, without Message Expiry
            Interval, which is computed at each send from ``expires_at``.
        expires_at: the loop time at which the message expires, or None.
        expiry_interval: the Message Expiry Interval it was published with, or None.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict
    expires_at: float | None = None
    publisher: str | None = None
    topic_bytes: bytes = b""
    expiry_interval: int | None = None

    @property
    def payload_size(self) -> int:
        return len(self.payload)

    @classmethod
    def create(
        cls,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: dict,
        publisher: str | None,
        loop_time: float,
    ) -> Message:
        forwarded = {key: properties[key] for key in _FORWARDED if key in properties}
        expiry = properties.get(Prop.MESSAGE_EXPIRY_INTERVAL)
        return cls(
            topic,
            payload,
            qos,
            retain,
            forwarded,
            loop_time + expiry if expiry is not None else None,
            publisher,
            encode_utf8(topic),
            expiry,
        )

    @property
    def immediate(self) -> bool:
        """Published with Message Expiry Interval 0: delivered to whoever can take it now, never stored."""
        return self.expiry_interval == 0
