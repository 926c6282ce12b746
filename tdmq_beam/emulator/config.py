"""What the emulator serves and how: users, ACL, cloud credentials, limits and faults."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tdmq_beam.errors import ConfigurationError
from tdmq_beam.mqtt.topics import filter_covers, topic_filter_error, topic_matches
from tdmq_beam.option_checks import int_in_range, non_negative, non_negative_int, optional, positive, positive_int

__all__ = [
    "DEFAULT_INSTANCE_ID",
    "DEFAULT_SECRET_ID",
    "DEFAULT_SECRET_KEY",
    "DEFAULT_USERS",
    "Acl",
    "AclRule",
    "Action",
    "EmulatorConfig",
    "FaultConfig",
]

Action = Literal["connect", "publish", "subscribe"]

# The pair in the seed documents' curl examples (Basic dXNlcjA6c2VjcmV0MA==).
DEFAULT_USERS = {"user0": "secret0"}
# The example credential of Tencent Cloud's API documentation.
DEFAULT_SECRET_ID = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE"
DEFAULT_SECRET_KEY = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE"
DEFAULT_INSTANCE_ID = "mqtt-local"

FAULT_KINDS = ("500", "429", "reset", "delay")


@dataclass(frozen=True)
class AclRule:
    """One ACL rule: who (user and client id, each or ``*``), what action, which topic filter, allow or deny."""

    user: str
    action: Literal["connect", "publish", "subscribe", "all"]
    topic: str
    permission: Literal["allow", "deny"]
    client_id: str = "*"

    def applies(self, user: str | None, action: Action, topic: str | None, client_id: str | None = None) -> bool:
        if self.user != "*" and self.user != user:
            return False
        if self.client_id != "*" and self.client_id != client_id:
            return False
        if self.action != "all" and self.action != action:
            return False
        if topic is None or action == "connect":
            return True
        if action == "publish":
            return topic_matches(self.topic, topic)
        return filter_covers(self.topic, topic)


@dataclass(frozen=True)
class Acl:
    """Ordered ACL rules: the first rule that applies decides; no rule applying allows."""

    rules: tuple[AclRule, ...] = ()

    def allows(
        self, user: str | None, action: Action, topic: str | None = None, *, client_id: str | None = None
    ) -> bool:
        for rule in self.rules:
            if rule.applies(user, action, topic, client_id):
                return rule.permission == "allow"
        return True

    @classmethod
    def from_json(cls, document: dict) -> Acl:
        """Reads ``{"rules": [{"user", "clientid", "action", "topic", "permission"}, ...]}``.

        ``user`` and ``clientid`` default to ``*`` (anyone), ``action`` to ``all``,
        ``topic`` to ``#``.

        Raises:
            ValueError: naming the first rule that is not well formed.
        """
        rules = []
        for index, raw in enumerate(document.get("rules", [])):
            where = f"ACL rule {index + 1}"
            if not isinstance(raw, dict):
                raise ValueError(f"{where} is not an object")
            action = raw.get("action", "all")
            permission = raw.get("permission")
            topic = raw.get("topic", "#")
            if action not in ("connect", "publish", "subscribe", "all"):
                raise ValueError(f"{where}: action must be connect, publish, subscribe or all")
            if permission not in ("allow", "deny"):
                raise ValueError(f"{where}: permission must be allow or deny")
            if topic_filter_error(topic):
                raise ValueError(f"{where}: {topic_filter_error(topic)}")
            unknown = set(raw) - {"user", "clientid", "action", "topic", "permission"}
            if unknown:
                raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
            rules.append(AclRule(str(raw.get("user", "*")), action, topic, permission, str(raw.get("clientid", "*"))))
        return cls(tuple(rules))

    @classmethod
    def from_file(cls, path: str | Path) -> Acl:
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read ACL file {path}: {exc}") from exc
        return cls.from_json(document)


@dataclass
class FaultConfig:
    """Faults injected into HTTP publish requests.

    Attributes:
        rate: fraction of publish requests that fail, 0..1. Defaults to 0.
        kinds: the kinds drawn from, evenly: ``500`` (Internal Server Error),
            ``429`` (with Retry-After), ``reset`` (connection closed without a
            response), ``delay`` (answer after ``delay_seconds``, longer than a
            typical client timeout).
        seed: seed of the random draw, so a run can be repeated.
        delay_seconds: how long ``delay`` holds a request. Defaults to 30.
        retry_after: the Retry-After seconds sent with an injected 429.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int | None = None
    delay_seconds: float = 30.0
    retry_after: int = 1
    _random: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if non_negative("fault rate", self.rate) > 1:
            raise ConfigurationError(f"fault rate must be within 0..1, got {self.rate!r}")
        unknown = [kind for kind in self.kinds if kind not in FAULT_KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"fault kinds must be among {', '.join(FAULT_KINDS)}, got {self.kinds}")
        self._random.seed(self.seed)

    def draw(self) -> str | None:
        """The fault for the next request, or None for none."""
        if self.rate and self._random.random() < self.rate:
            return self._random.choice(self.kinds)
        return None


@dataclass
class EmulatorConfig:
    """Everything the emulator serves.

    Attributes:
        host: address to listen on. Defaults to 127.0.0.1.
        http_port: HTTP(S) port for the data-plane and cloud APIs; 0 picks a free one.
        mqtt_port: MQTT port; 0 picks a free one.
        users: username -> password. Defaults to ``user0``/``secret0``.
        allow_anonymous: accept MQTT connections without a username.
        acl: the ACL. Defaults to allowing everything.
        tps: data-plane requests per second before 429 (publish, status and
            keep-alive together); 0 for no limit.
        secret_id, secret_key: the cloud API credential.
        instance_id: the instance id the cloud API answers for.
        cloud_rate: cloud API requests per second per action before
            ``RequestLimitExceeded``. Defaults to 20, as the service documents.
        offline_actions: cloud API actions answered with ``ActionOffline``
            (to rehearse DescribeMQTTClient's retirement).
        cloud_denied_actions: cloud API actions the credential is not
            authorized for (answered ``AuthFailure.UnauthorizedOperation``, as
            a CAM policy would).
        max_packet_size: largest MQTT packet accepted, in bytes. Defaults to 1 MiB.
        max_payload: largest HTTP publish body, in bytes. Defaults to 1 MiB.
        max_inflight: outgoing QoS 1/2 window per MQTT 3.x client (MQTT 5
            clients set theirs with Receive Maximum), and the Receive Maximum
            the broker announces to MQTT 5 clients. Defaults to 16, as the
            service documents.
        retry_interval: seconds after which an unacknowledged QoS 1/2 message
            is sent again (with DUP) while its client stays connected; 0 only
            on reconnection. Defaults to 120, as the service documents.
        max_subscriptions: topic filters per client. Defaults to 30, as the
            service documents.
        topic_alias_maximum: topic aliases an MQTT 5 client may use towards
            the broker (announced in CONNACK). Defaults to 64.
        max_keepalive: the longest keep-alive the broker accepts (MQTT 5:
            imposed with Server Keep Alive, also on clients asking for 0);
            0 for no cap.
        max_cloud_body: largest cloud API request body, in bytes. Defaults to
            10 MiB, the limit of Tencent Cloud API 3.0.
        max_queued: messages queued per session before the oldest are dropped.
        max_queued_bytes: payload bytes queued per session (and per shared group's
            backlog) before the oldest are dropped. Defaults to 64 MiB.
        max_connections: MQTT connections at once; past it CONNECT is refused
            (Quota exceeded; 3.1.1: Server unavailable), as the service refuses
            clients past its instance's limit. Defaults to 10,000.
        max_connections_per_address: MQTT connections at once from one
            address (a flood from one host cannot take them all); 0 for no cap.
            Defaults to 0: on one machine every test client shares 127.0.0.1.
        max_session_expiry: the longest a persistent session outlives its
            connection, in seconds: an MQTT 5 client asking for more is told so
            in CONNACK, and MQTT 3.1.1 sessions (which ask for nothing) expire
            after it too. Defaults to 7 days.
        max_retained_bytes: payload bytes of retained messages kept in all;
            a retained message past it is delivered but not retained. Defaults to 64 MiB.
        max_write_buffer: bytes waiting to be written to one connection past
            which QoS 0 messages for it are dropped (a slow subscriber cannot
            grow the broker's memory; QoS 1/2 wait in its window and queue).
            Defaults to 8 MiB.
        stored_messages: accepted messages kept for the cloud API's message
            query (``DescribeMessageByTopic``, ``DescribeMessageList``,
            ``DescribeMessageDetails``); past it the oldest go. 0 keeps none.
            Defaults to 100,000.
        stored_message_age: seconds a stored message is kept. Defaults to
            72 hours (the service keeps messages for a retention time set per
            instance).
        faults: faults injected into HTTP publish requests.
        event_loss: share of client events (``$events/...``) not delivered,
            0..1, as QoS 0 messages can be lost. Defaults to 0.
        event_delay: each client event is delivered after a random delay of
            up to this many seconds, so that events arrive late and out of
            order. Defaults to 0 (at once, in order).
        event_seed: seed of the loss and delay draws, so a run can be repeated.
        tls_cert, tls_key: serve HTTPS with this certificate instead of HTTP,
            and MQTT over TLS and secure WebSocket where those ports are given.
        client_ca: with TLS, ask for client certificates signed by this CA
            (mTLS); a verified certificate authenticates, its Common Name is
            the client id.
        mqtts_port: MQTT over TLS (the service's 8883); None for none, 0 for a free port.
        ws_port, wss_port: MQTT over WebSocket on path ``/mqtt``, plain and
            TLS (the service's 80 and 443); None for none, 0 for a free port.
    """

    host: str = "127.0.0.1"
    http_port: int = 8080
    mqtt_port: int = 1883
    users: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS))
    allow_anonymous: bool = False
    acl: Acl = field(default_factory=Acl)
    tps: float = 0.0
    secret_id: str = DEFAULT_SECRET_ID
    secret_key: str = field(default=DEFAULT_SECRET_KEY, repr=False)
    instance_id: str = DEFAULT_INSTANCE_ID
    cloud_rate: float = 20.0
    offline_actions: frozenset[str] = frozenset()
    cloud_denied_actions: frozenset[str] = frozenset()
    max_packet_size: int = 1024 * 1024
    max_payload: int = 1024 * 1024
    max_inflight: int = 16
    max_queued: int = 100_000
    max_queued_bytes: int = 64 * 1024 * 1024
    max_connections: int = 10_000
    max_connections_per_address: int = 0
    max_session_expiry: int = 7 * 86400
    max_retained_bytes: int = 64 * 1024 * 1024
    max_write_buffer: int = 8 * 1024 * 1024
    stored_messages: int = 100_000
    stored_message_age: float = 72 * 3600.0
    retry_interval: float = 120.0
    max_subscriptions: int = 30
    topic_alias_maximum: int = 64
    max_keepalive: int = 0
    max_cloud_body: int = 10 * 1024 * 1024
    mqtts_port: int | None = None
    ws_port: int | None = None
    wss_port: int | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    event_loss: float = 0.0
    event_delay: float = 0.0
    event_seed: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None

    def __post_init__(self) -> None:
        for name in ("http_port", "mqtt_port", "mqtts_port", "ws_port", "wss_port"):
            optional(int_in_range, name, getattr(self, name), 0, 65535)
        if (self.mqtts_port is not None or self.wss_port is not None) and not self.tls_cert:
            raise ConfigurationError("mqtts_port and wss_port need tls_cert and tls_key")
        non_negative("retry_interval", self.retry_interval, unit=" seconds")
        non_negative_int("max_keepalive", self.max_keepalive)
        int_in_range("topic_alias_maximum", self.topic_alias_maximum, 0, 65535)
        int_in_range("max_inflight", self.max_inflight, 1, 65535)
        positive_int("max_subscriptions", self.max_subscriptions)
        non_negative("tps", self.tps)
        non_negative("cloud_rate", self.cloud_rate)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigurationError("tls_cert and tls_key go together")
        if self.client_ca and not self.tls_cert:
            raise ConfigurationError("client_ca needs tls_cert and tls_key")
        int_in_range("max_packet_size", self.max_packet_size, 16, 268_435_455, unit=" bytes")
        non_negative_int("max_payload", self.max_payload)
        positive_int("max_queued", self.max_queued)
        positive_int("max_queued_bytes", self.max_queued_bytes)
        positive_int("max_connections", self.max_connections)
        non_negative_int("max_connections_per_address", self.max_connections_per_address)
        int_in_range("max_session_expiry", self.max_session_expiry, 1, 0xFFFFFFFE, unit=" seconds")
        non_negative_int("max_retained_bytes", self.max_retained_bytes)
        positive_int("max_write_buffer", self.max_write_buffer)
        non_negative_int("stored_messages", self.stored_messages)
        positive("stored_message_age", self.stored_message_age, unit=" seconds")
        if non_negative("event_loss", self.event_loss) > 1:
            raise ConfigurationError(f"event_loss must be within 0..1, got {self.event_loss!r}")
        non_negative("event_delay", self.event_delay, unit=" seconds")

    def has_default_credentials(self) -> bool:
        """Whether a user's password or the cloud secret is the published default."""
        defaults = set(DEFAULT_USERS.items())
        return bool(defaults & set(self.users.items())) or self.secret_key == DEFAULT_SECRET_KEY

    def check_password(self, username: str | None, password: str | bytes | None) -> bool:
        if username is None or username not in self.users:
            return False
        if isinstance(password, bytes):
            try:
                password = password.decode("utf-8")
            except UnicodeDecodeError:
                return False
        return password == self.users[username]
