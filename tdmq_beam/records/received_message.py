"""`ReceivedMessage`: one MQTT message as the read side hands it to a pipeline.

A `typing.NamedTuple`, so Beam infers a schema from it: the PCollection holds
Rows that Beam SQL and Beam YAML can use, and `RowCoder` encodes them.
"""

# No `from __future__ import annotations` here: Beam infers the schema from
# the evaluated field annotations.
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional

import apache_beam as beam
from apache_beam.utils.timestamp import Timestamp

from tdmq_beam.mqtt.codec import Prop, Publish
from tdmq_beam.rules.message_properties import FORWARDED_PROPERTIES
from tdmq_beam.rules.stored_messages import DETAIL_FIELDS, QOS, decode_bytes, detail_value

__all__ = ["ReceivedMessage", "UserProperty"]


class UserProperty(NamedTuple):
    """One MQTT 5 user property (a key may repeat within a message)."""

    key: str
    value: str


class ReceivedMessage(NamedTuple):
    """One message as the broker delivered it to a reader, or as the service stored it.

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
        receive_time: when the reader received it (the default event time); for a
            stored message (`ReadTdmqMessageHistory`), when the service stored it.
        message_id: the service's id of a stored message; None for a live read (MQTT
            does not carry it).
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
    message_id: Optional[str] = None  # noqa: UP045

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

    @classmethod
    def from_stored(cls, details: Mapping[str, Any]) -> "ReceivedMessage":
        """The message a ``DescribeMessageDetails`` answer describes.

        Raises:
            ValueError: a field does not read as the service's answers do, naming it.
        """
        fields = {
            prop.name: None if details.get(field) in (None, "") else detail_value(prop, field, details[field])
            for field, prop in DETAIL_FIELDS.items()
        }
        try:
            listed = details.get("UserProperties") or ()
            user_properties = [UserProperty(str(prop["Key"]), str(prop["Value"])) for prop in listed]
        except (KeyError, TypeError):
            raise ValueError("the answer's UserProperties are not a list of {Key, Value}") from None
        return cls(
            topic=str(details.get("OriginTopic") or ""),
            payload=decode_bytes("Body", str(details.get("Body") or "")),
            qos=detail_value(QOS, "Qos", details.get("Qos") or 0),
            retained=bool(details.get("Retain")),
            dup=False,
            user_properties=user_properties,
            receive_time=Timestamp(micros=_integer("StoreTimestamp", details.get("StoreTimestamp") or 0) * 1000),
            message_id=str(details.get("MessageId") or "") or None,
            **fields,
        )

    def user_property(self, key: str) -> Optional[str]:  # noqa: UP045
        """The first value of user property ``key``, or None."""
        for prop in self.user_properties:
            if prop.key == key:
                return prop.value
        return None


def _integer(field: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"the answer's {field} is not an integer: {value!r}") from None


beam.coders.registry.register_coder(ReceivedMessage, beam.coders.RowCoder)
beam.coders.registry.register_coder(UserProperty, beam.coders.RowCoder)
