"""The cloud API actions this project calls: one row per action, shared by the client and the emulator.

A row is what both ends must agree on: the service named in the credential
scope, the API version, Tencent's default host, and the parameters the action
takes (anything else the service answers with ``UnknownParameter``). Every
action is limited to 20 requests/s by default (Tencent's documented limit).
Sources: ``../shared/reference/tdmq-api.md`` section 2 and the models of
``tencentcloud-sdk-python-mqtt`` 3.1 (``tencentcloud/mqtt/v20240516/models.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CLOUD_ACTIONS", "RETIRED_CODES", "CloudAction"]


@dataclass(frozen=True)
class CloudAction:
    name: str
    service: str
    version: str
    host: str
    parameters: frozenset[str]


_MQTT = ("mqtt", "2024-05-16", "mqtt.tencentcloudapi.com")

CLOUD_ACTIONS: dict[str, CloudAction] = {
    action.name: action
    for action in (
        # Client APIs.
        CloudAction(
            "DescribeClientList", *_MQTT,
            frozenset(("InstanceId", "ClientId", "Number", "OnlineStatus", "MaxTimestamp")),
        ),
        CloudAction(
            "DescribeMQTTClient", "trocket", "2023-03-08", "trocket.tencentcloudapi.com",
            frozenset(("InstanceId", "ClientId")),
        ),
        # Message APIs: the service's stored messages.
        CloudAction(
            "DescribeMessageByTopic", *_MQTT,
            frozenset(("InstanceId", "Topic", "StartTime", "MaxNumber", "FilterExpression")),
        ),
        CloudAction(
            "DescribeMessageList", *_MQTT,
            frozenset(("InstanceId", "Topic", "StartTime", "EndTime", "TaskRequestId", "Offset", "Limit")),
        ),
        CloudAction("DescribeMessageDetails", *_MQTT, frozenset(("InstanceId", "MessageId", "Subscription"))),
        # Shared subscriptions: the backlog of a $share/{group}/{filter} expression.
        CloudAction("DescribeSharedSubscriptionLag", *_MQTT, frozenset(("InstanceId", "SharedSubscription"))),
    )
}  # fmt: skip

RETIRED_CODES = ("InvalidAction", "ActionOffline", "UnsupportedOperation", "NoSuchVersion")
"""Error-code prefixes meaning "this action is gone" (not "this call failed")."""
