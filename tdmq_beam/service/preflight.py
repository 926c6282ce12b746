"""One check, before any input is read, that the service answers and accepts the credentials.

An online-status call authenticates as a publish does, and a DescribeClientList call checks the
cloud API credential when one is given. What it finds is one line naming the cause and the
setting to fix, spelled as the caller's user wrote it (a command's flags, a YAML file's keys),
so that a wrong password or a dead endpoint stops a job at once instead of sending every record
to the dead letters after five retries each.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from tdmq_beam.errors import (
    AuthenticationError,
    CloudApiError,
    PermissionDeniedError,
    TdmqError,
    TlsError,
    TransportError,
)
from tdmq_beam.service.client import TdmqClient
from tdmq_beam.service.cloud_api import CloudApiConfig
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.service.retry import RetryPolicy

__all__ = ["PREFLIGHT_CLIENT", "SettingNames", "preflight_problem"]

PREFLIGHT_CLIENT = "tdmq-beam-preflight"
"""The client id whose status the check asks for (any id will do: the answer is not the point)."""


@dataclass(frozen=True)
class SettingNames:
    """How the settings a problem points at are spelled where the user gave them."""

    credentials: str = "username and password_env/password_file, or client_cert/client_key"
    endpoint: str = "endpoint"
    ca_cert: str = "ca_cert"
    secret: str = "secret_id and secret_key_env/secret_key_file"
    instance: str = "instance_id"
    region: str = "tencent_region"
    cloud_endpoint: str = "cloud_endpoint"


def preflight_problem(
    connection: TdmqConnection, cloud: CloudApiConfig | None = None, *, names: SettingNames = SettingNames()
) -> str | None:
    """What stops the service from being used with these settings, in one line; None when nothing does."""
    probe = copy.copy(connection)
    probe.retry = RetryPolicy(max_attempts=2, initial_backoff=0.2, deadline=30)  # quick, not five tries
    try:
        with TdmqClient(probe, cloud) as client:
            return _data_plane_problem(client, connection, names) or (
                _cloud_problem(client, names) if cloud is not None else None
            )
    except ValueError as exc:  # ConfigurationError: a secret or certificate that cannot be read
        return str(exc)


def _data_plane_problem(client: TdmqClient, connection: TdmqConnection, names: SettingNames) -> str | None:
    endpoint = connection.endpoint
    try:
        client.is_online(PREFLIGHT_CLIENT)
    except AuthenticationError:
        return f"{endpoint} refused the credentials (401): check {names.credentials}"
    except PermissionDeniedError:
        return f"{endpoint}: the user lacks the CONNECT permission (403): check the instance's ACL"
    except TlsError:
        return f"TLS with {endpoint} failed: check http:// or https:// in {names.endpoint}, and {names.ca_cert}"
    except TransportError as exc:
        if not connection.is_tls and "connection lost" in exc.message:
            return f"{endpoint} closed the connection: is it an https endpoint? Check {names.endpoint}"
        return f"cannot reach {endpoint}: {exc.message}; check {names.endpoint}"
    except TdmqError as exc:
        return f"{endpoint} answered the pre-flight check with {exc}; check {names.endpoint}"
    return None


def _cloud_problem(client: TdmqClient, names: SettingNames) -> str | None:
    try:
        client.describe_client(PREFLIGHT_CLIENT)
    except CloudApiError as exc:
        if exc.code.startswith("AuthFailure"):
            return f"the cloud API refused the credential ({exc.code}): check {names.secret}"
        if exc.code.startswith("ResourceNotFound.Instance"):
            return f"the cloud API does not know the instance ({exc.code}): check {names.instance}"
        if exc.code == "MissingParameter":
            return f"the cloud API needs more ({exc}): check {names.region}"
    except TdmqError as exc:
        return f"the cloud API cannot be reached: {exc}; check {names.cloud_endpoint}"
    return None
