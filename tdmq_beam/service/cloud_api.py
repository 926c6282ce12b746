"""The cloud API (control plane): `CloudApiConfig`, `ClientDetails`, and the signed async caller.

Two generations describe one client: ``DescribeClientList`` (service mqtt,
2024-05-16) and ``DescribeMQTTClient`` (service trocket, 2023-03-08; announced
for retirement in March 2026). ``api="auto"`` starts with the first and falls
back to the second for the rest of the run only when the service says the
first is offline or unknown. Every other action is called through
`CloudApiCaller.call_with_retries`, by its row in `CLOUD_ACTIONS`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import ssl
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp

from tdmq_beam.errors import CloudApiError, ConfigurationError, RequestTimeoutError, ServerError, TransportError
from tdmq_beam.json_documents import load_json
from tdmq_beam.option_checks import one_of, optional, positive
from tdmq_beam.rules import tc3
from tdmq_beam.rules.cloud_actions import CLOUD_ACTIONS, RETIRED_CODES
from tdmq_beam.rules.token_bucket import TokenBucket
from tdmq_beam.secret import Secret, SecretLike, as_secret
from tdmq_beam.service.environment import CLOUD_API_ENVIRONMENT, options_from_env
from tdmq_beam.service.retry import RetryPolicy

__all__ = ["CLOUD_IN_FLIGHT", "ClientDetails", "ClientSubscription", "CloudApiCaller", "CloudApiConfig"]

_LOGGER = logging.getLogger(__name__)

ApiChoice = Literal["auto", "DescribeClientList", "DescribeMQTTClient"]

_DESCRIBE_ACTIONS = ("DescribeClientList", "DescribeMQTTClient")
"""The two generations, newest first: ``api="auto"`` tries them in this order."""
CLOUD_IN_FLIGHT = 16
"""Cloud API calls at once per worker process by default: at 20 requests/s per action and
latencies of a few hundred ms, a handful keeps the limit busy."""
CLIENT_LIST_LIMIT = 1024
"""The most clients one DescribeClientList call answers."""


class CloudApiConfig:
    """Credentials and target of the cloud API.

    Args:
        secret_id: the SecretId of the credential (shown masked).
        secret_key: the SecretKey (str or `Secret`); never shown.
        region: the instance's region, e.g. ``ap-guangzhou``.
        instance_id: the TDMQ for MQTT instance id, e.g. ``mqtt-xxxx``.
        endpoint: ``scheme://host[:port]`` serving every action (the emulator,
            a proxy). Defaults to Tencent's hosts, one per service, over https.
        api: ``auto`` (DescribeClientList, then DescribeMQTTClient should the
            former not be available), or one of the two actions. Defaults to auto.
        token: session token of temporary credentials (str or `Secret`).
        rate: requests per second per worker process, per action. Defaults
            to 20, the service's documented limit: divide by the number of
            worker processes to stay within it.
        timeout: seconds per request. Defaults to 10.
        retry: retry policy. Defaults to `RetryPolicy()`.
        ca_cert: CA bundle (PEM) that signed the endpoint's certificate, for an https
            ``endpoint`` with a private CA (a proxy, the emulator over TLS). Defaults to
            the system's CAs. The connection's ``ca_cert`` is not used here: the two APIs
            are different hosts.
    """

    def __init__(
        self,
        *,
        secret_id: str,
        secret_key: SecretLike,
        region: str,
        instance_id: str,
        endpoint: str | None = None,
        api: ApiChoice = "auto",
        token: SecretLike | None = None,
        rate: float | None = 20.0,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        ca_cert: str | os.PathLike | None = None,
    ) -> None:
        if not isinstance(secret_id, str) or not secret_id:
            raise ConfigurationError("secret_id is required")
        if secret_key is None or secret_key == "":
            raise ConfigurationError("secret_key is required")
        if not isinstance(region, str) or not region:
            raise ConfigurationError("region is required, e.g. 'ap-guangzhou'")
        if not isinstance(instance_id, str) or not instance_id:
            raise ConfigurationError("instance_id is required, e.g. 'mqtt-xxxx'")
        one_of("api", api, ("auto", *_DESCRIBE_ACTIONS))
        if endpoint is not None:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
                raise ConfigurationError(f"endpoint must be scheme://host[:port], got {endpoint!r}")
            if parts.username or parts.password:
                raise ConfigurationError("endpoint must not carry credentials")
            endpoint = f"{parts.scheme}://{parts.netloc}"
        optional(positive, "rate", rate, unit=" calls per second, or None")
        positive("timeout", timeout, unit=" seconds")
        self.secret_id = secret_id
        self.secret_key: Secret = as_secret(secret_key)  # type: ignore[assignment]  # checked non-empty above
        self.region = region
        self.instance_id = instance_id
        self.endpoint = endpoint
        self.api = api
        self.token: Secret | None = as_secret(token)
        self.rate = rate
        self.timeout = float(timeout)
        self.retry = retry or RetryPolicy()
        self.ca_cert = os.fspath(ca_cert) if ca_cert is not None else None

    @classmethod
    def from_env(cls, **options: Any) -> CloudApiConfig:
        """The configuration from environment variables; ``options`` given here win over them.

        ``TENCENTCLOUD_SECRET_ID``, ``TENCENTCLOUD_REGION`` and ``TDMQ_INSTANCE_ID`` (required),
        ``TDMQ_CLOUD_ENDPOINT`` (defaults to Tencent's hosts); the secret key is
        ``Secret.env("TENCENTCLOUD_SECRET_KEY")``, read on each worker where it signs, never here.

        Raises:
            ConfigurationError: a required variable is unset, or a value is not valid.
        """
        return cls(**options_from_env(CLOUD_API_ENVIRONMENT, options, what="CloudApiConfig"))

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the cloud API calls: the system's CAs, or ``ca_cert``'s.

        Raises:
            ConfigurationError: ``ca_cert`` is missing or not a PEM bundle (naming the file).
        """
        if self.ca_cert is None:
            return None
        try:
            return ssl.create_default_context(cafile=self.ca_cert)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            problem = f"cloud ca_cert {self.ca_cert} is not a readable PEM CA bundle ({reason})"
            raise ConfigurationError(problem) from None

    def url_and_host(self, action: str) -> tuple[str, str]:
        """The URL to POST to and the Host header (signed) for ``action``."""
        if self.endpoint is not None:
            return self.endpoint + "/", urlsplit(self.endpoint).netloc
        host = CLOUD_ACTIONS[action].host
        return f"https://{host}/", host

    def display_data(self) -> dict[str, Any]:
        masked = self.secret_id[:4] + "..." + self.secret_id[-4:] if len(self.secret_id) > 8 else "..."
        data = {
            "secret_id": masked,
            "secret_key": self.secret_key.describe(),
            "region": self.region,
            "instance_id": self.instance_id,
            "api": self.api,
            "rate": self.rate,
        }
        if self.endpoint:
            data["cloud_endpoint"] = self.endpoint
        if self.token is not None:
            data["token"] = self.token.describe()
        if self.ca_cert is not None:
            data["cloud_ca_cert"] = self.ca_cert
        return data

    def __repr__(self) -> str:
        return "CloudApiConfig(" + ", ".join(f"{k}={v!r}" for k, v in self.display_data().items()) + ")"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CloudApiConfig) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((self.secret_id, self.instance_id, self.region))


@dataclass(frozen=True)
class ClientSubscription:
    topic_filter: str
    qos: int


@dataclass(frozen=True)
class ClientDetails:
    """One client as the cloud API describes it. Times are Unix milliseconds.

    ``inbound`` (server to client) and ``outbound`` (client to server) traffic
    come only from DescribeMQTTClient; ``session_expiry_interval`` only from
    DescribeClientList.
    """

    client_id: str
    client_address: str
    protocol_version: int
    keepalive: int
    connection_status: str
    clean_session: bool
    subscriptions: tuple[ClientSubscription, ...]
    create_time: int
    connect_time: int
    disconnect_time: int
    session_expiry_interval: int | None = None
    inbound: dict | None = None
    outbound: dict | None = None

    @property
    def online(self) -> bool:
        return self.connection_status == "CONNECTED"

    @classmethod
    def from_response(cls, data: dict) -> ClientDetails:
        return cls(
            client_id=data.get("ClientId", ""),
            client_address=data.get("ClientAddress", ""),
            protocol_version=int(data.get("ProtocolVersion") or 0),
            keepalive=int(data.get("Keepalive") or 0),
            connection_status=data.get("ConnectionStatus", ""),
            clean_session=bool(data.get("CleanSession")),
            subscriptions=tuple(
                ClientSubscription(sub.get("TopicFilter", ""), int(sub.get("Qos") or 0))
                for sub in data.get("MQTTClientSubscriptions") or ()
            ),
            create_time=int(data.get("CreateTime") or 0),
            connect_time=int(data.get("ConnectTime") or 0),
            disconnect_time=int(data.get("DisconnectTime") or 0),
            session_expiry_interval=data.get("ExpireIntervalInSeconds"),
            inbound=data.get("Inbound"),
            outbound=data.get("OutBound"),
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain types only, for records in pipelines."""
        return {
            "client_id": self.client_id,
            "client_address": self.client_address,
            "protocol_version": self.protocol_version,
            "keepalive": self.keepalive,
            "connection_status": self.connection_status,
            "clean_session": self.clean_session,
            "subscriptions": [{"topic_filter": s.topic_filter, "qos": s.qos} for s in self.subscriptions],
            "create_time": self.create_time,
            "connect_time": self.connect_time,
            "disconnect_time": self.disconnect_time,
            "session_expiry_interval": self.session_expiry_interval,
        }


class CloudApiCaller:
    """Signs and sends cloud API requests on an aiohttp session (one event loop)."""

    def __init__(self, config: CloudApiConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self._session = session
        self._secret_key = config.secret_key.resolve()
        self._token = config.token.resolve() if config.token is not None else None
        self.action = _DESCRIBE_ACTIONS[0] if config.api == "auto" else config.api
        self._limits = {action: TokenBucket(config.rate) for action in CLOUD_ACTIONS} if config.rate else {}
        self.throttled = 0

    async def describe_client(self, client_id: str) -> tuple[ClientDetails | None, int]:
        """The client's details (None when the service does not know it), and the attempts made."""
        while True:
            action = self.action
            try:
                return await self.config.retry.run(functools.partial(self._describe_once, action, client_id))
            except CloudApiError as error:
                if (
                    self.config.api == "auto"
                    and action == _DESCRIBE_ACTIONS[0]
                    and error.code.startswith(RETIRED_CODES)
                ):
                    _LOGGER.warning(
                        "%s is not available (%s); using %s from now on", action, error.code, _DESCRIBE_ACTIONS[1]
                    )
                    self.action = _DESCRIBE_ACTIONS[1]
                    continue
                if self.config.api == "auto" and error.code == "ClientListTruncated":
                    return await self._describe_exactly(client_id, error)
                raise

    async def _describe_exactly(self, client_id: str, truncated: CloudApiError) -> tuple[ClientDetails | None, int]:
        """Under ``api="auto"``, a client the list could not settle, asked of DescribeMQTTClient by its exact id
        while that action lasts; the list's error when it is gone."""
        try:
            return await self.config.retry.run(functools.partial(self._describe_once, _DESCRIBE_ACTIONS[1], client_id))
        except CloudApiError as error:
            if error.code.startswith(RETIRED_CODES):
                raise truncated from None
            raise

    async def call_with_retries(self, action: str, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """`call` under the config's `RetryPolicy`: the ``Response`` object and the attempts made."""
        return await self.config.retry.run(functools.partial(self.call, action, params))

    async def _describe_once(self, action: str, client_id: str) -> ClientDetails | None:
        params: dict[str, Any] = {"InstanceId": self.config.instance_id, "ClientId": client_id}
        if action == "DescribeClientList":
            params["Number"] = str(CLIENT_LIST_LIMIT)
        try:
            response = await self.call(action, params)
        except CloudApiError as error:
            if error.code == "ResourceNotFound.Client":
                return None
            raise
        if action == "DescribeMQTTClient":
            return ClientDetails.from_response(response)
        clients = response.get("Clients") or []
        for client in clients:
            if client.get("ClientId") == client_id:  # the filter is a prefix match
                return ClientDetails.from_response(client)
        if len(clients) >= CLIENT_LIST_LIMIT:
            # A full list without the id says nothing: the service lists at most 1,024 of the clients
            # whose ids start with it, in no set order. Never report such a client as unknown.
            raise CloudApiError(
                "ClientListTruncated",
                f"DescribeClientList answered {len(clients)} clients whose id starts with {client_id!r}, not "
                f"{client_id!r} itself: more clients share the prefix than one call lists, so it cannot tell "
                "whether the client exists",
                request_id=response.get("RequestId"),
            )
        return None

    async def call(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """One signed request for a known action; returns ``Response`` or raises `CloudApiError`."""
        limit = self._limits.get(action)
        if limit is not None:
            wait = limit.reserve()
            if wait:
                self.throttled += 1
                await asyncio.sleep(wait)
        service, version = CLOUD_ACTIONS[action].service, CLOUD_ACTIONS[action].version
        url, host = self.config.url_and_host(action)
        body = json.dumps(params, separators=(",", ":")).encode()
        timestamp = int(time.time())
        signed = {"Content-Type": "application/json", "Host": host}
        signature = tc3.sign(
            secret_key=self._secret_key, service=service, timestamp=timestamp, headers=signed, payload=body
        )
        headers = {
            **signed,
            "X-TC-Action": action,
            "X-TC-Version": version,
            "X-TC-Timestamp": str(timestamp),
            "X-TC-Region": self.config.region,
            "Authorization": tc3.authorization_header(
                secret_id=self.config.secret_id, service=service, timestamp=timestamp,
                signed_headers=list(signed), signature=signature,
            ),
        }  # fmt: skip
        if self._token:
            headers["X-TC-Token"] = self._token
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=self.config.timeout)
            ) as response:
                if response.status != 200:
                    text = (await response.text(errors="replace"))[:300]
                    raise ServerError(f"cloud API answered HTTP {response.status}: {text}", status=response.status)
                document = await response.json(content_type=None, loads=load_json)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(
                f"cloud API {action} at {host}: no answer within {self.config.timeout:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"cloud API {action} at {host}: {type(exc).__name__}: {exc}") from None
        except ValueError:
            raise ServerError(f"cloud API {action} answered with a body that is not JSON") from None
        result = document.get("Response") if isinstance(document, dict) else None
        if not isinstance(result, dict):
            raise ServerError(f"cloud API {action} answered without a Response object")
        error = result.get("Error")
        if error:
            raise CloudApiError(
                str(error.get("Code", "Unknown")), str(error.get("Message", "")), request_id=result.get("RequestId")
            )
        return result
