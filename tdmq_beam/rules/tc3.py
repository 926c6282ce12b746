"""TC3-HMAC-SHA256, the request signature of Tencent Cloud API 3.0.

Shared by the connector's cloud API client, which signs, and the emulator,
which verifies. The rules are Tencent Cloud API 3.0's signature v3; ``tests/test_tc3.py`` checks
them against vectors produced by the official SDK's signer.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["ALGORITHM", "UNSIGNED_PAYLOAD", "authorization_header", "sign", "utc_date"]

ALGORITHM = "TC3-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


def utc_date(timestamp: int) -> str:
    """The UTC calendar date (``YYYY-MM-DD``) of a Unix timestamp."""
    return time.strftime("%Y-%m-%d", time.gmtime(timestamp))


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def sign(
    *,
    secret_key: str,
    service: str,
    timestamp: int,
    headers: dict[str, str],
    payload: bytes,
    method: str = "POST",
    query: str = "",
    unsigned_payload: bool = False,
) -> str:
    """Computes the hex TC3-HMAC-SHA256 signature of one request.

    Args:
        secret_key: the SecretKey of the credential.
        service: the service name of the credential scope (``trocket``, ``mqtt``).
        timestamp: the request's ``X-TC-Timestamp``.
        headers: the signed headers, by name (any case) to value as sent;
            ``content-type`` and ``host`` at least.
        payload: the exact body bytes.
        method: the HTTP method. Defaults to POST.
        query: the canonical query string (GET only). Defaults to empty.
        unsigned_payload: hash ``UNSIGNED-PAYLOAD`` instead of the body, as
            requests with ``X-TC-Content-SHA256: UNSIGNED-PAYLOAD`` do.
    """
    canonical = {name.lower(): value.strip().lower() for name, value in headers.items()}
    names = sorted(canonical)
    canonical_headers = "".join(f"{name}:{canonical[name]}\n" for name in names)
    body = UNSIGNED_PAYLOAD.encode() if unsigned_payload else payload
    canonical_request = "\n".join(
        (method, "/", query, canonical_headers, ";".join(names), hashlib.sha256(body).hexdigest())
    )
    date = utc_date(timestamp)
    string_to_sign = "\n".join(
        (
            ALGORITHM,
            str(timestamp),
            f"{date}/{service}/tc3_request",
            hashlib.sha256(canonical_request.encode("utf-8")).hexdigest(),
        )
    )
    k_date = _hmac(("TC3" + secret_key).encode("utf-8"), date)
    k_signing = _hmac(_hmac(k_date, service), "tc3_request")
    return hmac.new(k_signing, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization_header(
    *, secret_id: str, service: str, timestamp: int, signed_headers: list[str], signature: str
) -> str:
    """The ``Authorization`` header value for a TC3 signature."""
    return (
        f"{ALGORITHM} Credential={secret_id}/{utc_date(timestamp)}/{service}/tc3_request, "
        f"SignedHeaders={';'.join(sorted(h.lower() for h in signed_headers))}, Signature={signature}"
    )
