"""`ReceivedMessage`: one MQTT message as the read side hands it to a pipeline.

A `typing.NamedTuple`, so Beam infers a schema from it: the PCollection holds
Rows that Beam SQL and Beam YAML can use, and `RowCoder` encodes them.
"""

# No `from __future__ import annotations` here: Beam infers the schema from
# the evaluated field annotations.
from collections.abc import Sequence
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.utils.timestamp import Timestamp

from tdmq_beam.mqtt.codec import Prop, Publish
from tdmq_beam.rules.message_properties import FORWARDED_PROPERTIES

__all__ = ["ReceivedMessage", "UserProperty"]


class UserProperty(NamedTuple):
    """One MQTT 5 user property (a key may repeat within a message)."""

    key: str
    value: str


class ReceivedMessage(NamedTuple):
    """One message as the broker delivered it to a reader.

    Attributes:
        topic: the topic it was published to.
        payload: its bytes.
        qos: the QoS it was delivered at (the lower of the published and subscribed QoS).
        retained: the broker sent it as a retained message (on subscribing).
        dup: the broker flagged it as a redelivery: an earlier delivery was not
            acknowledged, so downstream may already have seen it.
        user_properties: MQTT 5 user properties, in the order sent, repeated keys kept.
        content_type, payload_format_indicator, response_topic, correlation_data,
            message_expiry_interval: the MQTT 5 properties a broker forwards (the
            property table's ``forwarded`` rows), None where absent (always under
            MQTT 3.1.1). The expiry is what was left of it when the broker sent
            the message.
        receive_time: when the reader received it (the default event time).
    """

    topic: str
    payload: bytes
    qos: int
    retained: bool
    dup: bool
    user_properties: Sequence[UserProperty]
    content_type: Optional[str]  # noqa: UP045 (Beam's schema inference reads typing.Optional)
    payload_format_indicator: Optional[int]  # noqa: UP045
    response_topic: Optional[str]  # noqa: UP045
    correlation_data: Optional[bytes]  # noqa: UP045
    message_expiry_interval: Optional[int]  # noqa: UP045
    receive_time: Timestamp

    @classmethod
    def from_publish(cls, packet: Publish, receive_time: Timestamp) -> "ReceivedMessage":
        """The message a decoded PUBLISH carries."""
        props = packet.properties
        return cls(
            topic=packet.topic,
            payload=packet.payload,
            qos=packet.qos,
            retained=packet.retain,
            dup=packet.dup,
            user_properties=[UserProperty(key, value) for key, value in props.get(Prop.USER_PROPERTY, ())],
            receive_time=receive_time,
            **{name: props.get(identifier) for name, identifier in FORWARDED_PROPERTIES.items()},
        )

    def user_property(self, key: str) -> Optional[str]:  # noqa: UP045
        """The first value of user property ``key``, or None."""
        for prop in self.user_properties:
            if prop.key == key:
                return prop.value
        return None


beam.coders.registry.register_coder(ReceivedMessage, beam.coders.RowCoder)
beam.coders.registry.register_coder(UserProperty, beam.coders.RowCoder)
