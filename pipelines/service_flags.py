"""Command-line flags for the service, shared by the pipelines: access point, credentials, cloud API."""

from __future__ import annotations

import argparse

from tdmq_beam import CloudApiConfig, RetryPolicy, Secret, TdmqConnection

__all__ = ["add_cloud_flags", "add_connection_flags", "cloud_from_flags", "connection_from_flags"]


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("service (without --endpoint: the embedded emulator)")
    group.add_argument("--endpoint", help="instance access point, http(s)://host[:port]")
    group.add_argument("--username", help="Basic authentication user")
    group.add_argument("--password-env", metavar="NAME", help="environment variable holding the password")
    group.add_argument("--password-file", metavar="PATH", help="file holding the password")
    group.add_argument("--client-cert", help="client certificate chain (PEM) for mTLS")
    group.add_argument("--client-key", help="client private key (PEM) for mTLS")
    group.add_argument("--key-password-env", metavar="NAME", help="environment variable holding the key passphrase")
    group.add_argument("--ca-cert", help="CA bundle of the server certificate")
    group.add_argument("--tps", type=float, help="requests/s per worker process (instance quota / workers)")
    group.add_argument("--max-in-flight", type=int, default=64, help="requests in flight per worker process")
    group.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    group.add_argument("--max-attempts", type=int, default=5, help="attempts per call, the first included")


def add_cloud_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cloud API (client details; optional)")
    group.add_argument("--secret-id", help="SecretId of the cloud API credential")
    group.add_argument("--secret-key-env", metavar="NAME", help="environment variable holding the SecretKey")
    group.add_argument("--secret-key-file", metavar="PATH", help="file holding the SecretKey")
    group.add_argument(
        "--tencent-region", help="Tencent Cloud region of the instance, e.g. ap-guangzhou (--region is Beam's)"
    )
    group.add_argument("--instance-id", help="TDMQ for MQTT instance id")
    group.add_argument("--cloud-endpoint", help="cloud API endpoint (default: Tencent's hosts)")
    group.add_argument("--cloud-api", choices=("auto", "DescribeMQTTClient", "DescribeClientList"), default="auto")
    group.add_argument("--cloud-rate", type=float, default=20.0, help="cloud API requests/s per worker process")


def _secret(env: str | None, file: str | None, what: str) -> Secret | None:
    if env and file:
        raise ValueError(f"give the {what} by environment variable or by file, not both")
    if env:
        return Secret.env(env)
    if file:
        return Secret.file(file)
    return None


def connection_from_flags(args: argparse.Namespace) -> TdmqConnection:
    """The connection the flags describe; `ValueError` naming what does not fit."""
    return TdmqConnection(
        args.endpoint,
        username=args.username,
        password=_secret(args.password_env, args.password_file, "password"),
        client_cert=args.client_cert,
        client_key=args.client_key,
        ca_cert=args.ca_cert,
        key_password=Secret.env(args.key_password_env) if args.key_password_env else None,
        timeout=args.timeout,
        max_in_flight=args.max_in_flight,
        tps=args.tps,
        retry=RetryPolicy(max_attempts=args.max_attempts),
    )


def cloud_from_flags(args: argparse.Namespace) -> CloudApiConfig | None:
    """The cloud API config the flags describe, or None when no --secret-id is given."""
    if not args.secret_id:
        return None
    return CloudApiConfig(
        secret_id=args.secret_id,
        secret_key=_secret(args.secret_key_env, args.secret_key_file, "SecretKey"),
        region=args.tencent_region,
        instance_id=args.instance_id,
        endpoint=args.cloud_endpoint,
        api=args.cloud_api,
        rate=args.cloud_rate,
        retry=RetryPolicy(max_attempts=args.max_attempts),
    )
