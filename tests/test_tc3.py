"""TC3-HMAC-SHA256 against test vectors produced by running the official SDK's signer with a fixed clock."""

from __future__ import annotations

import hashlib

import pytest

from tdmq_beam.rules import tc3

SECRET_KEY = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE"
SPACED = b'{"InstanceId": "mqtt-abc123", "ClientId": "test-client"}'
COMPACT = b'{"InstanceId":"mqtt-abc123","ClientId":"test-client"}'


@pytest.mark.parametrize(
    ("host", "service", "body", "signature"),
    [
        ("trocket.tencentcloudapi.com", "trocket", SPACED,
         "6cc1331101416c1e798056b12957f0e5c07cf5b6a6587d4d660c2e18c0176ed1"),
        ("mqtt.tencentcloudapi.com", "mqtt", SPACED,
         "ab8d814954f044b936a93344fc88e665be37cedfff8b9321b58d2b9527030043"),
        ("trocket.tencentcloudapi.com", "trocket", COMPACT,
         "d7fc9182170142db85e4f23e77349b0fd62a4223baeadbf9fc043be2554d3d4f"),
        ("127.0.0.1:8080", "trocket", COMPACT,
         "cd02caf65c6a16b20ac8c367d67b52f13dc8f46566224c5230565d190d6ae71f"),
    ],
)  # fmt: skip
def test_reference_vectors(host, service, body, signature):
    headers = {"Content-Type": "application/json", "Host": host}
    assert tc3.sign(secret_key=SECRET_KEY, service=service, timestamp=1700000000, headers=headers, payload=body) == (
        signature
    )


def test_reference_intermediate_hashes():
    assert hashlib.sha256(SPACED).hexdigest() == "00ff0d08fdb4545daedf2f649e7d5bf7407fc6086b3e7d3bf3902a754987b26f"
    canonical = (
        "POST\n/\n\ncontent-type:application/json\nhost:trocket.tencentcloudapi.com\n\ncontent-type;host\n"
        + hashlib.sha256(SPACED).hexdigest()
    )
    assert hashlib.sha256(canonical.encode()).hexdigest() == (
        "a57d17c85daa6c1c1b7961f2be0859c387d931c2faf9963de70c9c77a9232df6"
    )


def test_tencent_public_cvm_example():
    body = b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
    signature = tc3.sign(
        secret_key=SECRET_KEY,
        service="cvm",
        timestamp=1551113065,
        headers={"Content-Type": "application/json; charset=utf-8", "Host": "cvm.tencentcloudapi.com"},
        payload=body,
    )
    assert signature == "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"


def test_authorization_header():
    header = tc3.authorization_header(
        secret_id="AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
        service="trocket",
        timestamp=1700000000,
        signed_headers=["Host", "content-type"],
        signature="ab",
    )
    assert header == (
        "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2023-11-14/trocket/tc3_request, "
        "SignedHeaders=content-type;host, Signature=ab"
    )
