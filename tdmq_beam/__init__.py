"""tdmq-beam: Apache Beam connector for Tencent Cloud TDMQ for MQTT.

The public names load lazily (PEP 562): ``from tdmq_beam import TdmqClient`` imports
the service client and not Beam; ``WriteToTdmqMqtt`` and the other transforms import
Beam when first named. The layers, bottom up: `tdmq_beam.mqtt` (protocol pieces
shared with the emulator), `tdmq_beam.service` (the client), `tdmq_beam.records`
(record mapping), `tdmq_beam.transforms` (Beam), and `tdmq_beam.emulator`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "ClientEvent": "tdmq_beam.records.client_event",
    "ClientEventsResult": "tdmq_beam.transforms.client_events",
    "ReadClientEvents": "tdmq_beam.transforms.client_events",
    "TrackClientStatus": "tdmq_beam.transforms.track_status",
    "TrackedStatus": "tdmq_beam.records.tracked_status",
    "AsyncTdmqClient": "tdmq_beam.service.client",
    "AuthenticationError": "tdmq_beam.errors",
    "Batching": "tdmq_beam.transforms.batched_calls",
    "AvroPayload": "tdmq_beam.records.payload",
    "ClientDetails": "tdmq_beam.service.cloud_api",
    "ClientStatus": "tdmq_beam.service.status_lookup",
    "ClientSubscription": "tdmq_beam.service.cloud_api",
    "CloudApiConfig": "tdmq_beam.service.cloud_api",
    "CloudApiError": "tdmq_beam.errors",
    "CloudLookup": "tdmq_beam.transforms.cloud_lookup",
    "CloudLookupTransform": "tdmq_beam.transforms.cloud_lookup",
    "MissingMessage": "tdmq_beam.transforms.verify",
    "VerifiedMessage": "tdmq_beam.transforms.verify",
    "VerifyResult": "tdmq_beam.transforms.verify",
    "VerifyStoredMessages": "tdmq_beam.transforms.verify",
    "ConfigurationError": "tdmq_beam.errors",
    "DecodeMqttMessages": "tdmq_beam.transforms.decode",
    "DecodeResult": "tdmq_beam.transforms.decode",
    "DeduplicateMessages": "tdmq_beam.transforms.deduplicate",
    "EnrichResult": "tdmq_beam.transforms.enrich",
    "EnrichWithClientStatus": "tdmq_beam.transforms.enrich",
    "FailedMessage": "tdmq_beam.transforms.results",
    "FieldPayload": "tdmq_beam.records.payload",
    "HistoryResult": "tdmq_beam.transforms.history",
    "IdempotencyKey": "tdmq_beam.records.mapping",
    "InvalidMessageError": "tdmq_beam.errors",
    "InvalidRequestError": "tdmq_beam.errors",
    "JsonPayload": "tdmq_beam.records.payload",
    "KeepAliveResult": "tdmq_beam.transforms.keepalive",
    "KeepAliveSet": "tdmq_beam.transforms.keepalive",
    "MessageDecoder": "tdmq_beam.records.message_decoding",
    "MessageDefaults": "tdmq_beam.records.mapping",
    "MessageMapping": "tdmq_beam.records.mapping",
    "MqttMessage": "tdmq_beam.service.message",
    "PermissionDeniedError": "tdmq_beam.errors",
    "ProtocolViolationError": "tdmq_beam.errors",
    "PublishResult": "tdmq_beam.service.client",
    "PublishedMessage": "tdmq_beam.transforms.results",
    "RateLimitedError": "tdmq_beam.errors",
    "ReadFromTdmqMqtt": "tdmq_beam.transforms.read",
    "ReadTdmqMessageHistory": "tdmq_beam.transforms.history",
    "ReceivedMessage": "tdmq_beam.records.received_message",
    "RetryPolicy": "tdmq_beam.service.retry",
    "Secret": "tdmq_beam.secret",
    "ServerError": "tdmq_beam.errors",
    "StoredMessageInfo": "tdmq_beam.transforms.history",
    "SetClientKeepAlive": "tdmq_beam.transforms.keepalive",
    "TdmqClient": "tdmq_beam.service.client",
    "TdmqClientStatusHandler": "tdmq_beam.transforms.enrichment_handler",
    "TdmqConnection": "tdmq_beam.service.connection",
    "TdmqError": "tdmq_beam.errors",
    "TransportError": "tdmq_beam.errors",
    "UserProperty": "tdmq_beam.records.received_message",
    "WriteToTdmqMqtt": "tdmq_beam.transforms.write",
    "WriteToTdmqMqttResult": "tdmq_beam.transforms.write",
    "avro_mapping": "tdmq_beam.records.avro_mapping",
}

__all__ = [
    "AsyncTdmqClient",
    "AuthenticationError",
    "AvroPayload",
    "Batching",
    "ClientDetails",
    "ClientEvent",
    "ClientEventsResult",
    "ClientStatus",
    "ClientSubscription",
    "CloudApiConfig",
    "CloudApiError",
    "CloudLookup",
    "CloudLookupTransform",
    "ConfigurationError",
    "DecodeMqttMessages",
    "DecodeResult",
    "DeduplicateMessages",
    "EnrichResult",
    "EnrichWithClientStatus",
    "FailedMessage",
    "FieldPayload",
    "HistoryResult",
    "IdempotencyKey",
    "InvalidMessageError",
    "InvalidRequestError",
    "JsonPayload",
    "KeepAliveResult",
    "KeepAliveSet",
    "MessageDecoder",
    "MessageDefaults",
    "MessageMapping",
    "MissingMessage",
    "MqttMessage",
    "PermissionDeniedError",
    "ProtocolViolationError",
    "PublishResult",
    "PublishedMessage",
    "RateLimitedError",
    "ReadClientEvents",
    "ReadFromTdmqMqtt",
    "ReadTdmqMessageHistory",
    "ReceivedMessage",
    "RetryPolicy",
    "Secret",
    "ServerError",
    "SetClientKeepAlive",
    "StoredMessageInfo",
    "TdmqClient",
    "TdmqClientStatusHandler",
    "TdmqConnection",
    "TdmqError",
    "TrackClientStatus",
    "TrackedStatus",
    "TransportError",
    "UserProperty",
    "VerifiedMessage",
    "VerifyResult",
    "VerifyStoredMessages",
    "WriteToTdmqMqtt",
    "WriteToTdmqMqttResult",
    "avro_mapping",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tdmq_beam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # what a type checker and an IDE see
    from tdmq_beam.errors import (
        AuthenticationError,
        CloudApiError,
        ConfigurationError,
        InvalidMessageError,
        InvalidRequestError,
        PermissionDeniedError,
        ProtocolViolationError,
        RateLimitedError,
        ServerError,
        TdmqError,
        TransportError,
    )
    from tdmq_beam.records.avro_mapping import avro_mapping
    from tdmq_beam.records.client_event import ClientEvent
    from tdmq_beam.records.mapping import IdempotencyKey, MessageDefaults, MessageMapping
    from tdmq_beam.records.message_decoding import MessageDecoder
    from tdmq_beam.records.payload import AvroPayload, FieldPayload, JsonPayload
    from tdmq_beam.records.received_message import ReceivedMessage, UserProperty
    from tdmq_beam.records.tracked_status import TrackedStatus
    from tdmq_beam.secret import Secret
    from tdmq_beam.service.client import AsyncTdmqClient, PublishResult, TdmqClient
    from tdmq_beam.service.cloud_api import ClientDetails, ClientSubscription, CloudApiConfig
    from tdmq_beam.service.connection import TdmqConnection
    from tdmq_beam.service.message import MqttMessage
    from tdmq_beam.service.retry import RetryPolicy
    from tdmq_beam.service.status_lookup import ClientStatus
    from tdmq_beam.transforms.batched_calls import Batching
    from tdmq_beam.transforms.client_events import ClientEventsResult, ReadClientEvents
    from tdmq_beam.transforms.cloud_lookup import CloudLookup, CloudLookupTransform
    from tdmq_beam.transforms.decode import DecodeMqttMessages, DecodeResult
    from tdmq_beam.transforms.deduplicate import DeduplicateMessages
    from tdmq_beam.transforms.enrich import EnrichResult, EnrichWithClientStatus
    from tdmq_beam.transforms.enrichment_handler import TdmqClientStatusHandler
    from tdmq_beam.transforms.history import HistoryResult, ReadTdmqMessageHistory, StoredMessageInfo
    from tdmq_beam.transforms.keepalive import KeepAliveResult, KeepAliveSet, SetClientKeepAlive
    from tdmq_beam.transforms.read import ReadFromTdmqMqtt
    from tdmq_beam.transforms.results import FailedMessage, PublishedMessage
    from tdmq_beam.transforms.track_status import TrackClientStatus
    from tdmq_beam.transforms.verify import MissingMessage, VerifiedMessage, VerifyResult, VerifyStoredMessages
    from tdmq_beam.transforms.write import WriteToTdmqMqtt, WriteToTdmqMqttResult
