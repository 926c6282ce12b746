"""Cloud API 3.0 at ``POST /``: the client and message query actions, TC3-signed.

Answers as Tencent Cloud does: HTTP 200 with ``Response.Error`` for every
business outcome, ``Content-Type: application/json`` exactly (the official SDK
parses errors only then), client details built from the broker's live state.
"""

from __future__ import annotations

import hmac
import json
import random
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tdmq_beam.emulator.broker import Broker
from tdmq_beam.emulator.cloud_errors import CloudError, integer_parameter, string_parameter
from tdmq_beam.emulator.http_api import RequestError, parse_query
from tdmq_beam.emulator.message_query import MessageQuery
from tdmq_beam.emulator.session import Session
from tdmq_beam.mqtt.codec import PacketType
from tdmq_beam.mqtt.topics import shared_subscription
from tdmq_beam.rules import tc3
from tdmq_beam.rules.cloud_actions import CLOUD_ACTIONS
from tdmq_beam.rules.token_bucket import TokenBucket

__all__ = ["SIGNATURE_WINDOW", "CloudApi"]

SIGNATURE_WINDOW = 300
"""Seconds a signature's timestamp may be from the server's clock."""

MAX_CLIENT_LIST = 1024

_AUTHORIZATION = re.compile(
    r"^TC3-HMAC-SHA256 Credential=(?P<secret_id>[^/]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<service>[^/]+)/tc3_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9;_-]+), Signature=(?P<signature>[0-9a-f]{64})$"
)


def _answer(body: dict) -> web.Response:
    return web.Response(body=json.dumps({"Response": body}).encode(), headers={"Content-Type": "application/json"})


class CloudApi:
    """Verifies signatures, applies the per-action rate limit, and describes clients."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.config = broker.config
        self.requests: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        messages = MessageQuery(broker.store)
        # One handler per row of CLOUD_ACTIONS (a test checks that none is missing).
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "DescribeClientList": self._describe_client_list,
            "DescribeMQTTClient": self._describe_mqtt_client,
            "DescribeMessageByTopic": messages.by_topic,
            "DescribeMessageList": messages.time_range,
            "DescribeMessageDetails": messages.details,
            "DescribeSharedSubscriptionLag": self._describe_shared_subscription_lag,
        }
        self._limits = (
            {action: TokenBucket(self.config.cloud_rate) for action in CLOUD_ACTIONS} if self.config.cloud_rate else {}
        )

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        if request.method not in ("POST", "GET"):
            return web.Response(status=405, headers={"Allow": "GET, POST"})
        request_id = str(uuid.uuid4())
        action = request.headers.get("X-TC-Action", "")
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise CloudError(
                    "RequestSizeLimitExceeded", f"the request body exceeds {self.config.max_cloud_body} bytes"
                ) from None
            result = self._dispatch(request, action, body)
        except CloudError as error:
            self.requests[f"cloud:{action or '?'}"][error.code] += 1
            return _answer({"Error": {"Code": error.code, "Message": error.message}, "RequestId": request_id})
        self.requests[f"cloud:{action}"]["OK"] += 1
        result["RequestId"] = request_id
        return _answer(result)

    def _dispatch(self, request: web.Request, action: str, body: bytes) -> dict:
        self._verify(request, action, body)
        if action not in CLOUD_ACTIONS:
            raise CloudError("InvalidAction", f"the action {action!r} does not exist")
        if action in self.config.offline_actions:
            raise CloudError("ActionOffline", f"the action {action} is offline")
        version = request.headers.get("X-TC-Version", "")
        expected = CLOUD_ACTIONS[action].version
        if version != expected:
            raise CloudError("NoSuchVersion", f"{action} has no version {version!r}; use {expected}")
        if action in self.config.cloud_denied_actions:
            raise CloudError(
                "AuthFailure.UnauthorizedOperation", f"the credential is not authorized to call {action} (CAM)"
            )
        if not request.headers.get("X-TC-Region", "").strip():
            raise CloudError("MissingParameter", "the request is missing the required parameter Region")
        limit = self._limits.get(action)
        if limit is not None and not limit.try_take():
            raise CloudError("RequestLimitExceeded", f"{action} is limited to {self.config.cloud_rate:g} requests/s")
        params = self._parameters(request, body)
        unknown = sorted(set(params) - CLOUD_ACTIONS[action].parameters)
        if unknown:
            raise CloudError("UnknownParameter", f"the parameter {unknown[0]} is not recognized by {action}")
        instance_id = params.get("InstanceId")
        if not instance_id:
            raise CloudError("MissingParameter", "the parameter InstanceId is required")
        if instance_id != self.config.instance_id:
            raise CloudError("ResourceNotFound.Instance", f"instance {instance_id!r} does not exist")
        return self._handlers[action](params)

    @staticmethod
    def _parameters(request: web.Request, body: bytes) -> dict:
        """The action's parameters: the JSON body of a POST, the query of a GET."""
        if request.method == "GET":
            try:
                return parse_query(request.raw_path.partition("?")[2])
            except RequestError as exc:
                raise CloudError("InvalidParameter", str(exc)) from None
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            raise CloudError("InvalidParameter", "the request body is not JSON") from None
        if not isinstance(params, dict):
            raise CloudError("InvalidParameter", "the request body is not a JSON object")
        return params

    def _verify(self, request: web.Request, action: str, body: bytes) -> None:
        headers = request.headers
        match = _AUTHORIZATION.match(headers.get("Authorization", ""))
        if match is None:
            raise CloudError("AuthFailure.InvalidAuthorization", "the Authorization header is not TC3-HMAC-SHA256")
        timestamp_text = headers.get("X-TC-Timestamp", "")
        if not timestamp_text.isdigit():
            raise CloudError("MissingParameter", "X-TC-Timestamp is missing or not a Unix time")
        timestamp = int(timestamp_text)
        if abs(time.time() - timestamp) > SIGNATURE_WINDOW:
            raise CloudError("AuthFailure.SignatureExpire", "the signature's timestamp is more than 5 minutes off")
        if not match["secret_id"].startswith("AKID"):
            raise CloudError("AuthFailure.InvalidSecretId", "the SecretId is not a cloud API key (AKID...)")
        if match["secret_id"] != self.config.secret_id:
            raise CloudError("AuthFailure.SecretIdNotFound", "the SecretId does not exist")
        signed = match["signed"].split(";")
        if "content-type" not in signed or "host" not in signed:
            raise CloudError("AuthFailure.SignatureFailure", "SignedHeaders must include content-type and host")
        if match["date"] != tc3.utc_date(timestamp):
            raise CloudError("AuthFailure.SignatureFailure", "the credential date does not match X-TC-Timestamp")
        known = CLOUD_ACTIONS.get(action)
        expected_service = known.service if known is not None else match["service"]
        if match["service"] != expected_service:
            raise CloudError(
                "AuthFailure.SignatureFailure",
                f"the credential scope names service {match['service']!r}; {action} belongs to {expected_service!r}",
            )
        signature = tc3.sign(
            secret_key=self.config.secret_key,
            service=match["service"],
            timestamp=timestamp,
            headers={name: headers.get(name, "") for name in signed},
            payload=body,
            method=request.method,
            query=request.raw_path.partition("?")[2] if request.method == "GET" else "",
            unsigned_payload=headers.get("X-TC-Content-SHA256") == tc3.UNSIGNED_PAYLOAD,
        )
        if not hmac.compare_digest(signature, match["signature"]):
            raise CloudError("AuthFailure.SignatureFailure", "the signature does not match")

    def _describe_mqtt_client(self, params: dict) -> dict:
        client_id = params.get("ClientId")
        if not client_id:
            raise CloudError("MissingParameter", "the parameter ClientId is required")
        session = self.broker.sessions.get(client_id)
        if session is None:
            raise CloudError("ResourceNotFound.Client", f"client {client_id!r} does not exist")
        details = _client_fields(session)
        details["MQTTClientSubscriptions"] = [
            {"TopicFilter": sub.topic_filter, "Qos": sub.qos} for sub in session.subscriptions.values()
        ]
        details["Inbound"] = _traffic(session, "in", session.bytes_in)
        details["OutBound"] = _traffic(session, "out", session.bytes_out)
        return details

    def _describe_client_list(self, params: dict) -> dict:
        prefix = params.get("ClientId") or ""
        number = integer_parameter(params, "Number", MAX_CLIENT_LIST)
        online_status = integer_parameter(params, "OnlineStatus", 0)
        max_timestamp = integer_parameter(params, "MaxTimestamp", 0)
        if number < 1:
            raise CloudError("InvalidParameterValue", f"Number must be 1..{MAX_CLIENT_LIST}, got {number}")
        number = min(number, MAX_CLIENT_LIST)
        if online_status not in (0, 1, 2):
            raise CloudError("InvalidParameterValue", "OnlineStatus must be 0, 1 or 2")
        clients: list[dict] = []
        # In no particular order, as the service's console says it lists them ("randomly displayed"):
        # a caller cannot count on the exact id coming first.
        candidates = [client_id for client_id in self.broker.sessions if client_id.startswith(prefix)]
        random.shuffle(candidates)
        for client_id in candidates:
            if len(clients) >= number:
                break
            session = self.broker.sessions[client_id]
            online = session.connection is not None
            if (online_status == 1 and not online) or (online_status == 2 and online):
                continue
            last_change = session.connected_ms if online else session.disconnected_ms
            if max_timestamp and last_change > max_timestamp:
                continue
            info = _client_fields(session)
            info["MQTTClientSubscriptions"] = [
                {
                    "TopicFilter": sub.topic_filter,
                    "Qos": sub.qos,
                    "Lag": sum(1 for d in session.queue if d.qos),
                    "Inflight": len(session.inflight),
                    "UserProperties": [],
                }
                for sub in session.subscriptions.values()
            ]
            info["ExpireIntervalInSeconds"] = session.expiry_interval
            clients.append(info)
        return {"Clients": clients}

    def _describe_shared_subscription_lag(self, params: dict) -> dict:
        expression = string_parameter(params, "SharedSubscription")
        if (shared := shared_subscription(expression)) is None:
            raise CloudError(
                "InvalidParameterValue", f"SharedSubscription must be $share/{{group}}/{{filter}}, got {expression!r}"
            )
        return {"Lag": self.broker.shared_lag(*shared)}

    def snapshot(self) -> dict:
        return {api: dict(counts) for api, counts in self.requests.items()}


def _client_fields(session: Session) -> dict:
    connected = session.connection is not None
    return {
        "ClientId": session.client_id,
        "ClientAddress": session.address,
        "ProtocolVersion": session.protocol_level,
        "Keepalive": session.keepalive,
        "ConnectionStatus": "CONNECTED" if connected else "DISCONNECTED",
        "CreateTime": session.created_ms,
        "ConnectTime": session.connected_ms,
        "DisconnectTime": 0 if connected else session.disconnected_ms,
        "CleanSession": session.clean_start,
    }


def _traffic(session: Session, direction: str, total_bytes: int) -> dict:
    items = [
        {"MessageType": PacketType.NAMES[packet_type], "Qos": qos, "Count": count}
        for (way, packet_type, qos), count in session.packet_counts.items()
        if way == direction
    ]
    return {"Bytes": total_bytes, "Items": items}
