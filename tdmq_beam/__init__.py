"""tdmq-beam: Apache Beam connector for Tencent Cloud TDMQ for MQTT."""

from tdmq_beam.avro_mapping import avro_mapping
from tdmq_beam.client import AsyncTdmqClient, PublishResult, TdmqClient
from tdmq_beam.client_status import ClientStatus
from tdmq_beam.cloud_api import ClientDetails, ClientSubscription, CloudApiConfig
from tdmq_beam.connection import TdmqConnection
from tdmq_beam.enrich import EnrichResult, EnrichWithClientStatus
from tdmq_beam.enrichment_handler import TdmqClientStatusHandler
from tdmq_beam.errors import (
    AuthenticationError,
    CloudApiError,
    ConfigurationError,
    InvalidMessageError,
    InvalidRequestError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    TdmqError,
    TransportError,
)
from tdmq_beam.keepalive import KeepAliveResult, KeepAliveSet, SetClientKeepAlive
from tdmq_beam.mapping import IdempotencyKey, MessageMapping
from tdmq_beam.message import MqttMessage
from tdmq_beam.payload import AvroPayload, FieldPayload, JsonPayload
from tdmq_beam.results import FailedMessage, PublishedMessage
from tdmq_beam.retry import RetryPolicy
from tdmq_beam.secret import Secret
from tdmq_beam.write import WriteToTdmqMqtt, WriteToTdmqMqttResult

__version__ = "0.1.0"

__all__ = [
    "AsyncTdmqClient",
    "AuthenticationError",
    "AvroPayload",
    "ClientDetails",
    "ClientStatus",
    "ClientSubscription",
    "CloudApiConfig",
    "CloudApiError",
    "ConfigurationError",
    "EnrichResult",
    "EnrichWithClientStatus",
    "FailedMessage",
    "FieldPayload",
    "IdempotencyKey",
    "InvalidMessageError",
    "InvalidRequestError",
    "JsonPayload",
    "KeepAliveResult",
    "KeepAliveSet",
    "MessageMapping",
    "MqttMessage",
    "PermissionDeniedError",
    "PublishResult",
    "PublishedMessage",
    "RateLimitedError",
    "RetryPolicy",
    "Secret",
    "ServerError",
    "SetClientKeepAlive",
    "TdmqClient",
    "TdmqClientStatusHandler",
    "TdmqConnection",
    "TdmqError",
    "TransportError",
    "WriteToTdmqMqtt",
    "WriteToTdmqMqttResult",
    "avro_mapping",
]
