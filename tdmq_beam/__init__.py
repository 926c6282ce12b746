"""tdmq-beam: Apache Beam connector for Tencent Cloud TDMQ for MQTT."""

from tdmq_beam.client import AsyncTdmqClient, PublishResult, TdmqClient
from tdmq_beam.cloud_api import ClientDetails, ClientSubscription, CloudApiConfig
from tdmq_beam.connection import TdmqConnection
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
from tdmq_beam.message import MqttMessage
from tdmq_beam.retry import RetryPolicy
from tdmq_beam.secret import Secret

__version__ = "0.1.0"

__all__ = [
    "AsyncTdmqClient",
    "AuthenticationError",
    "ClientDetails",
    "ClientSubscription",
    "CloudApiConfig",
    "CloudApiError",
    "ConfigurationError",
    "InvalidMessageError",
    "InvalidRequestError",
    "MqttMessage",
    "PermissionDeniedError",
    "PublishResult",
    "RateLimitedError",
    "RetryPolicy",
    "Secret",
    "ServerError",
    "TdmqClient",
    "TdmqConnection",
    "TdmqError",
    "TransportError",
]
