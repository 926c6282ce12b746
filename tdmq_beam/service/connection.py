"""`TdmqConnection`: where the instance access point is and how to authenticate to it."""

from __future__ import annotations

import base64
import logging
import os
import ssl
from typing import Any
from urllib.parse import urlsplit

from tdmq_beam.errors import ConfigurationError, TlsError
from tdmq_beam.hosts import is_loopback
from tdmq_beam.option_checks import non_negative_int, optional, positive, positive_int
from tdmq_beam.secret import Secret, SecretLike, as_secret
from tdmq_beam.service.environment import CONNECTION_ENVIRONMENT, options_from_env
from tdmq_beam.service.retry import RetryPolicy

__all__ = ["DEFAULT_MAX_PAYLOAD_BYTES", "TdmqConnection"]

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024


def _readable_file_error(name: str, path: str) -> str | None:
    if not os.path.isfile(path):
        return f"{name} {path} does not exist or is not a file"
    if not os.access(path, os.R_OK):
        return f"{name} {path} is not readable"
    return None


def _normalised_endpoint(key: str, endpoint: object, schemes: tuple[str, str]) -> str:
    """``endpoint`` checked and normalised as ``scheme://host[:port]``, with ``key`` (the option's
    name) in every complaint; ``schemes`` are the plain and the TLS scheme allowed."""
    if not isinstance(endpoint, str):
        raise ConfigurationError(f"{key} must be a URL string, got {type(endpoint).__name__}")
    parts = urlsplit(endpoint)
    if parts.scheme not in schemes:
        plain, tls = schemes
        raise ConfigurationError(f"{key} must start with {plain}:// or {tls}://, got scheme {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(f"{key} must not carry credentials; give username= and password= instead")
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"{key} {endpoint!r} has an invalid port") from None
    if not parts.hostname:
        raise ConfigurationError(f"{key} {endpoint!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigurationError(f"{key} {endpoint!r} must be scheme://host[:port] without path or query")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


class TdmqConnection:
    """The data-plane endpoint of one TDMQ for MQTT instance, and its credentials.

    Picklable, so it can live in a pipeline. Secrets (password, key
    passphrase) may be values or `Secret` references, resolved on the worker
    when a client opens the connection; repr, str and display data never show
    them.

    Args:
        endpoint: ``http://host[:port]`` or ``https://host[:port]`` of the
            instance access point, without credentials, path or query.
        username: Basic authentication user; goes with ``password``.
        password: Basic authentication password (str or `Secret`).
        client_cert: path of the client certificate chain (PEM) for mTLS; the
            certificate's Common Name is the client id. Needs https.
        client_key: path of the client private key (PEM); goes with ``client_cert``.
        ca_cert: path of the CA bundle that signs the server certificate.
            Defaults to the system's trust store.
        key_password: passphrase of ``client_key``, if it has one.
        timeout: seconds for one request, connect included. Defaults to 10.
        max_in_flight: most requests in flight at once per client (per worker
            process in Beam). Defaults to 64.
        tps: cap on requests per second per client, or None for no cap.
        retry: the retry policy of every call. Defaults to `RetryPolicy()`.
        max_payload_bytes: largest payload to send; larger ones fail before
            any request. Defaults to 1 MiB.
        adaptive_throttling: after the service first answers 429, hold back
            requests client-side in proportion to how many it refuses (Beam's
            `AdaptiveThrottler`). Defaults to True.
        mqtt_endpoint: the instance's MQTT access point, for the read side:
            ``mqtt://host[:port]`` (port 1883 by default) or ``mqtts://host[:port]``
            (8883; TLS with ``ca_cert``, and the client certificate when given).
            Defaults to None (no read side).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        username: str | None = None,
        password: SecretLike | None = None,
        client_cert: str | os.PathLike | None = None,
        client_key: str | os.PathLike | None = None,
        ca_cert: str | os.PathLike | None = None,
        key_password: SecretLike | None = None,
        timeout: float = 10.0,
        max_in_flight: int = 64,
        tps: float | None = None,
        retry: RetryPolicy | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        adaptive_throttling: bool = True,
        mqtt_endpoint: str | None = None,
    ) -> None:
        self.endpoint = _normalised_endpoint("endpoint", endpoint, ("http", "https"))
        self.mqtt_endpoint = (
            _normalised_endpoint("mqtt_endpoint", mqtt_endpoint, ("mqtt", "mqtts"))
            if mqtt_endpoint is not None
            else None
        )
        tls_anywhere = self.endpoint.startswith("https:") or (self.mqtt_endpoint or "").startswith("mqtts:")

        if (username is None) != (password is None):
            raise ConfigurationError("username and password go together")
        if username is not None and (not isinstance(username, str) or not username or ":" in username):
            raise ConfigurationError("username must be a non-empty str without ':'")
        if (client_cert is None) != (client_key is None):
            raise ConfigurationError("client_cert and client_key go together")
        if client_cert is not None and not tls_anywhere:
            raise ConfigurationError("a client certificate (mTLS) needs an https or mqtts endpoint")
        if ca_cert is not None and not tls_anywhere:
            raise ConfigurationError("ca_cert needs an https or mqtts endpoint")
        if username is None and client_cert is None:
            raise ConfigurationError("credentials are required: username and password, or client_cert and client_key")
        if username is not None:
            _warn_if_in_clear(self.endpoint, self.mqtt_endpoint)
        timeout = positive("timeout", timeout, unit=" seconds")
        positive_int("max_in_flight", max_in_flight)
        tps = optional(positive, "tps", tps, unit=" requests per second, or None")
        non_negative_int("max_payload_bytes", max_payload_bytes)

        self.username = username
        self.password: Secret | None = as_secret(password)
        self.client_cert = os.fspath(client_cert) if client_cert is not None else None
        self.client_key = os.fspath(client_key) if client_key is not None else None
        self.ca_cert = os.fspath(ca_cert) if ca_cert is not None else None
        self.key_password: Secret | None = as_secret(key_password)
        self.timeout = float(timeout)
        self.max_in_flight = max_in_flight
        self.tps = tps
        self.retry = retry or RetryPolicy()
        self.max_payload_bytes = max_payload_bytes
        self.adaptive_throttling = bool(adaptive_throttling)

    @classmethod
    def from_env(cls, **options: Any) -> TdmqConnection:
        """The connection from environment variables; ``options`` given here win over them.

        ``TDMQ_ENDPOINT`` (required), ``TDMQ_MQTT_ENDPOINT``, ``TDMQ_USERNAME``, ``TDMQ_CA_CERT``,
        ``TDMQ_CLIENT_CERT``, ``TDMQ_CLIENT_KEY``; with a username, the password is
        ``Secret.env("TDMQ_PASSWORD")``: read on each worker where it connects, never here.

        Raises:
            ConfigurationError: ``TDMQ_ENDPOINT`` is unset, or a value is not valid.
        """
        return cls(**options_from_env(CONNECTION_ENVIRONMENT, options, what="TdmqConnection"))

    @property
    def is_tls(self) -> bool:
        return self.endpoint.startswith("https:")

    def authorization_header(self) -> str | None:
        """The Basic ``Authorization`` header, resolving the password; None under mTLS only."""
        if self.username is None:
            return None
        assert self.password is not None  # username and password go together
        credentials = f"{self.username}:{self.password.resolve()}".encode()
        return "Basic " + base64.b64encode(credentials).decode()

    def mqtt_address(self) -> tuple[str, int, bool]:
        """(host, port, whether TLS) of the MQTT access point.

        Raises:
            ConfigurationError: the connection has no ``mqtt_endpoint``.
        """
        if self.mqtt_endpoint is None:
            raise ConfigurationError("reading needs the connection's mqtt_endpoint (mqtt://host:1883 or mqtts://...)")
        parts = urlsplit(self.mqtt_endpoint)
        tls = parts.scheme == "mqtts"
        assert parts.hostname is not None  # checked in __init__
        return parts.hostname, parts.port or (8883 if tls else 1883), tls

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for https endpoints (with the client certificate for mTLS).

        Raises:
            ConfigurationError: a certificate or key file is missing, unreadable
                or not valid PEM (the message names the file, never its content).
        """
        return self._tls_context() if self.is_tls else None

    def mqtt_ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for an mqtts endpoint, as `ssl_context` builds it; None for mqtt."""
        return self._tls_context() if self.mqtt_address()[2] else None

    def _tls_context(self) -> ssl.SSLContext:
        for name, path in (
            ("ca_cert", self.ca_cert),
            ("client_cert", self.client_cert),
            ("client_key", self.client_key),
        ):
            if path is not None and (problem := _readable_file_error(name, path)):
                raise ConfigurationError(problem)
        try:
            context = ssl.create_default_context(cafile=self.ca_cert)
        except ssl.SSLError as exc:
            raise ConfigurationError(f"ca_cert {self.ca_cert} is not a valid PEM CA bundle ({exc.reason})") from None
        if self.client_cert is not None:
            password = self.key_password.resolve() if self.key_password is not None else None
            try:
                context.load_cert_chain(self.client_cert, self.client_key, password=password)
            except ssl.SSLError as exc:
                raise ConfigurationError(
                    f"client_cert {self.client_cert} and client_key {self.client_key} are not a valid PEM "
                    f"certificate chain and matching key ({exc.reason})"
                ) from None
        return context

    def display_data(self) -> dict[str, Any]:
        """What is safe to show about the connection: no secret values."""
        data: dict[str, Any] = {"endpoint": self.endpoint, "timeout": self.timeout, "max_in_flight": self.max_in_flight}
        if self.username is not None:
            data["username"] = self.username
            data["password"] = self.password.describe() if self.password is not None else None
        if self.client_cert is not None:
            data["client_cert"] = self.client_cert
            data["client_key"] = self.client_key
        if self.ca_cert is not None:
            data["ca_cert"] = self.ca_cert
        if self.tps is not None:
            data["tps"] = self.tps
        if self.mqtt_endpoint is not None:
            data["mqtt_endpoint"] = self.mqtt_endpoint
        return data

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in self.display_data().items() if key != "endpoint")
        return f"TdmqConnection({self.endpoint!r}, {fields})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TdmqConnection) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((self.endpoint, self.username, self.client_cert))


_WARNED_IN_CLEAR: set[str] = set()


def _warn_if_in_clear(*endpoints: str | None) -> None:
    """One warning per endpoint where a password would cross the network unencrypted."""
    for endpoint in endpoints:
        if endpoint is None or endpoint.startswith(("https:", "mqtts:")) or endpoint in _WARNED_IN_CLEAR:
            continue
        host = urlsplit(endpoint).hostname or ""
        if not is_loopback(host):
            _WARNED_IN_CLEAR.add(endpoint)
            logging.getLogger(__name__).warning(
                "the password for %s goes over the network in clear (%s): use %s unless the network is yours",
                host,
                endpoint.split(":", 1)[0],
                "https://" if endpoint.startswith("http:") else "mqtts://",
            )


def tls_failure(host: str, port: int, exc: ssl.SSLError, *, who: str = "") -> TlsError:
    """The `TlsError` of a failed handshake, the same over HTTPS and MQTTS: what failed and what to do.

    Args:
        who: what was connecting, to start the message with (``"MQTT reader r-0: "``).
    """
    detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
    hint = ""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if "mismatch" in detail or "hostname" in detail:
            hint = f"; the server's certificate does not name {host}"
        else:
            hint = "; the server's certificate is not signed by a CA this machine trusts: give ca_cert"
    elif exc.reason == "WRONG_VERSION_NUMBER":
        hint = "; the server does not speak TLS on this port (http:// or mqtt:// instead?)"
    return TlsError(f"{who}TLS handshake with {host}:{port} failed ({detail}){hint}")
