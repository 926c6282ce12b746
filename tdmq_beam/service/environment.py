"""Configurations read from environment variables: `TdmqConnection.from_env` and
`CloudApiConfig.from_env`, one table each.

A data engineer keeps where the service is and its credentials out of the code, as
Tencent's SDK does (``TENCENTCLOUD_SECRET_ID`` / ``TENCENTCLOUD_SECRET_KEY``). A secret is
never read here: it becomes `Secret.env(variable)`, a reference that each worker resolves
where it is used, so its value stays out of the pipeline graph.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tdmq_beam.errors import ConfigurationError
from tdmq_beam.secret import Secret

__all__ = ["CLOUD_API_ENVIRONMENT", "CONNECTION_ENVIRONMENT", "EnvironmentSetting", "options_from_env"]


@dataclass(frozen=True)
class EnvironmentSetting:
    """One keyword of a configuration and the variable it is read from.

    Attributes:
        variable: the environment variable.
        keyword: the constructor's keyword it fills.
        required: whether the configuration cannot do without it.
        secret: passed as `Secret.env(variable)`, never read here; with ``goes_with``,
            only when that keyword is given too.
        goes_with: the keyword a secret belongs to (a password goes with its username).
    """

    variable: str
    keyword: str
    required: bool = False
    secret: bool = False
    goes_with: str | None = None


CONNECTION_ENVIRONMENT = (
    EnvironmentSetting("TDMQ_ENDPOINT", "endpoint", required=True),
    EnvironmentSetting("TDMQ_MQTT_ENDPOINT", "mqtt_endpoint"),
    EnvironmentSetting("TDMQ_USERNAME", "username"),
    EnvironmentSetting("TDMQ_PASSWORD", "password", secret=True, goes_with="username"),
    EnvironmentSetting("TDMQ_CA_CERT", "ca_cert"),
    EnvironmentSetting("TDMQ_CLIENT_CERT", "client_cert"),
    EnvironmentSetting("TDMQ_CLIENT_KEY", "client_key"),
)
"""`TdmqConnection.from_env`: the instance's access points and its credentials."""

CLOUD_API_ENVIRONMENT = (
    EnvironmentSetting("TENCENTCLOUD_SECRET_ID", "secret_id", required=True),
    EnvironmentSetting("TENCENTCLOUD_SECRET_KEY", "secret_key", secret=True),
    EnvironmentSetting("TENCENTCLOUD_REGION", "region", required=True),
    EnvironmentSetting("TDMQ_INSTANCE_ID", "instance_id", required=True),
    EnvironmentSetting("TDMQ_CLOUD_ENDPOINT", "endpoint"),
)
"""`CloudApiConfig.from_env`: the credential (Tencent's SDK's variable names), region and instance."""


def options_from_env(
    settings: tuple[EnvironmentSetting, ...],
    overrides: Mapping[str, Any],
    *,
    what: str,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The keywords of a configuration: ``overrides`` as given, the rest from ``environ``.

    Args:
        settings: the configuration's table.
        overrides: keywords given by the caller; they win over the environment.
        what: the configuration's name, for the error.
        environ: the variables. Defaults to `os.environ`.

    Raises:
        ConfigurationError: a required variable is unset or empty (naming it).
    """
    environ = os.environ if environ is None else environ
    options = dict(overrides)
    for setting in settings:
        if setting.keyword in options:
            continue
        if setting.secret:
            if setting.goes_with is None or options.get(setting.goes_with) is not None:
                options[setting.keyword] = Secret.env(setting.variable)
        elif environ.get(setting.variable):
            options[setting.keyword] = environ[setting.variable]
        elif setting.required:
            raise ConfigurationError(f"{what}.from_env: {setting.variable} is not set (the {setting.keyword})")
    return options
