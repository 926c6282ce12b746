"""The errors of tdmq-beam: every one derives from `TdmqError`.

Each error carries what a caller needs to decide what to do next: the HTTP
status (or None for transport failures and validation), the server's message,
whether trying again may succeed, and the server's Retry-After when it sent one.
No error text ever contains a password, secret key or private key: errors are
built from status codes, server messages and names, never from credentials.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CloudApiError",
    "ConfigurationError",
    "InvalidMessageError",
    "InvalidRequestError",
    "PermissionDeniedError",
    "ProtocolViolationError",
    "RateLimitedError",
    "RequestTimeoutError",
    "ServerError",
    "TdmqError",
    "TlsError",
    "TransportError",
    "error_for_status",
]


class TdmqError(Exception):
    """Base of every tdmq-beam error.

    Attributes:
        status: HTTP status, or None (transport failure, validation, configuration).
        message: what went wrong, as the server or the check said it.
        retryable: whether the same call may succeed later.
        retry_after: seconds the server asked to wait (Retry-After), or None.
        attempts: requests made before this error stood: 1 for a single call,
            the count at which retries stopped, 0 when none was sent.
        kind: a short stable name for dead-letter records and metrics.
    """

    kind = "error"
    retryable = False

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None, attempts: int = 1
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.attempts = attempts

    def __str__(self) -> str:
        prefix = f"HTTP {self.status}: " if self.status is not None else ""
        return f"{prefix}{self.message}"

    def __reduce__(self):
        return _rebuild, (type(self), self.message, self.status, self.retry_after, self.__dict__)


def _rebuild(cls, message, status, retry_after, state):
    error = cls.__new__(cls)
    TdmqError.__init__(error, message, status=status, retry_after=retry_after)
    error.__dict__.update(state)  # attempts, and a subclass's own fields
    return error


class ConfigurationError(TdmqError, ValueError):
    """The configuration cannot work (bad endpoint, missing credentials, unreadable file)."""

    kind = "configuration"


class InvalidMessageError(TdmqError, ValueError):
    """A message breaks a rule of MQTT or of the API; no request was sent."""

    kind = "invalid_message"


class InvalidRequestError(TdmqError):
    """400 or 405: the service refused the request as malformed."""

    kind = "invalid_request"


class AuthenticationError(TdmqError):
    """401: bad credentials, or (for publish) the ACL denied the topic."""

    kind = "authentication"


class PermissionDeniedError(TdmqError):
    """403: the user lacks the CONNECT permission."""

    kind = "permission_denied"


class RateLimitedError(TdmqError):
    """429: over the instance's TPS quota (or the cloud API's request limit)."""

    kind = "rate_limited"
    retryable = True


class ServerError(TdmqError):
    """5xx: the service failed."""

    kind = "server_error"
    retryable = True


class TransportError(TdmqError):
    """No answer: connection refused or reset, or the request timed out."""

    kind = "transport"
    retryable = True


class RequestTimeoutError(TransportError):
    """No answer in time: connecting or the whole request took longer than the connection's timeout.
    Its ``kind`` stays ``transport``, as dead-letter records have always said."""


class ProtocolViolationError(TransportError):
    """The peer broke the MQTT protocol (a malformed or forbidden packet) on connection after
    connection: reconnecting does not cure it. Its ``kind`` stays ``transport``."""

    retryable = False


class TlsError(TransportError):
    """The TLS handshake failed: an untrusted or mismatched certificate, or TLS against a plain
    HTTP server. Its ``kind`` stays ``transport``."""


class CloudApiError(TdmqError):
    """The cloud API answered ``Response.Error``.

    Attributes:
        code: Tencent's error code, such as ``AuthFailure.SignatureFailure``.
        request_id: the RequestId to quote to Tencent support.
    """

    kind = "cloud_api"

    def __init__(self, code: str, message: str, *, request_id: str | None = None, attempts: int = 1) -> None:
        super().__init__(f"{code}: {message}", attempts=attempts)
        self.code = code
        self.request_id = request_id

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.code.startswith(("RequestLimitExceeded", "InternalError"))


def error_for_status(status: int, message: str, retry_after: float | None = None) -> TdmqError:
    """The error for a non-200 answer of the data-plane API."""
    if status == 401:
        return AuthenticationError(message, status=status)
    if status == 403:
        return PermissionDeniedError(message, status=status)
    if status == 429:
        return RateLimitedError(message, status=status, retry_after=retry_after)
    if status >= 500:
        return ServerError(message, status=status, retry_after=retry_after)
    return InvalidRequestError(message, status=status)
