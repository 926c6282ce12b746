"""Plain YAML configuration into a `TdmqConnection` and a `CloudApiConfig`.

Secrets come only as references (an environment variable or a file): a
literal password or secret key in a YAML file is refused, since the file
ends up in version control and in the pipeline's display data.
"""

from __future__ import annotations

from typing import Any

from tdmq_beam.errors import ConfigurationError
from tdmq_beam.secret import Secret, secret_reference
from tdmq_beam.service.cloud_api import CloudApiConfig
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.service.retry import RetryPolicy

__all__ = ["LITERAL_SECRET", "cloud_from_config", "connection_from_config", "reference"]

LITERAL_SECRET = (
    "{key}: a literal secret in a YAML pipeline is refused; give {key}_env (an environment variable) or {key}_file"
)


def reference(key: str, literal: Any, env: str | None, file: str | None) -> Secret | None:
    """The `Secret` that ``{key}_env`` or ``{key}_file`` names; a literal ``{key}`` is refused."""
    if literal is not None:
        raise ConfigurationError(LITERAL_SECRET.format(key=key))
    return secret_reference(f"{key} ({key}_env or {key}_file)", env, file)


def connection_from_config(
    *,
    endpoint: str | None,
    username: str | None = None,
    password: Any = None,
    password_env: str | None = None,
    password_file: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    ca_cert: str | None = None,
    key_password_env: str | None = None,
    mqtt_endpoint: str | None = None,
    tps: float | None = None,
    max_in_flight: int = 64,
    timeout: float = 10.0,
    max_attempts: int = 5,
) -> TdmqConnection:
    """The connection the keys describe.

    Raises:
        ConfigurationError: naming the key that does not fit.
    """
    if not endpoint:
        raise ConfigurationError("endpoint is required (http(s)://host[:port] of the instance)")
    return TdmqConnection(
        endpoint,
        username=username,
        password=reference("password", password, password_env, password_file),
        client_cert=client_cert,
        client_key=client_key,
        ca_cert=ca_cert,
        key_password=Secret.env(key_password_env) if key_password_env else None,
        mqtt_endpoint=mqtt_endpoint,
        tps=tps,
        max_in_flight=max_in_flight,
        timeout=timeout,
        retry=RetryPolicy(max_attempts=max_attempts),
    )


def cloud_from_config(
    *,
    secret_id: str | None,
    secret_key: Any = None,
    secret_key_env: str | None = None,
    secret_key_file: str | None = None,
    tencent_region: str | None = None,
    instance_id: str | None = None,
    cloud_endpoint: str | None = None,
    cloud_ca_cert: str | None = None,
    cloud_rate: float = 20.0,
    max_attempts: int = 5,
) -> CloudApiConfig | None:
    """The cloud API settings the keys describe, or None without ``secret_id``."""
    key = reference("secret_key", secret_key, secret_key_env, secret_key_file)
    if not secret_id:
        if key is not None or instance_id:
            raise ConfigurationError("secret_id is required with secret_key_env/secret_key_file and instance_id")
        return None
    if key is None:
        raise ConfigurationError("secret_id needs secret_key_env or secret_key_file")
    if not tencent_region or not instance_id:
        raise ConfigurationError("the cloud API needs tencent_region and instance_id")
    return CloudApiConfig(
        secret_id=secret_id,
        secret_key=key,
        region=tencent_region,
        instance_id=instance_id,
        endpoint=cloud_endpoint,
        ca_cert=cloud_ca_cert,
        rate=cloud_rate,
        retry=RetryPolicy(max_attempts=max_attempts),
    )
