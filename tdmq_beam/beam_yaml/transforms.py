"""The connector's transforms for Beam YAML: plain keyword configuration, Rows in and Rows out.

Each class here wraps one Python transform. It takes only what a YAML file can
hold (strings, numbers, lists, maps), builds the connection from it (secrets by
reference only: ``password_env`` / ``password_file``), and turns the Python
transform's results into Rows with declared schemas, so that ``MapToFields``,
``Filter`` and ``Sql`` can use them. Failures follow Beam YAML's convention:
with ``error_handling: {output: NAME}`` they come out on ``NAME`` as the
standard error rows (``element``, ``msg``, ``stack``); without it, the first
failure fails the pipeline with its reason.

No ``from __future__ import annotations`` here: Beam YAML reads the
configuration schema from the evaluated signatures.
"""

import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Optional

import apache_beam as beam
from apache_beam.typehints.row_type import RowTypeConstraint
from apache_beam.typehints.schemas import named_fields_from_element_type

from tdmq_beam.beam_yaml.config import cloud_from_config, connection_from_config
from tdmq_beam.errors import ConfigurationError
from tdmq_beam.records.avro_mapping import avro_mapping, load_mapping_file
from tdmq_beam.records.mapping import MessageMapping
from tdmq_beam.records.payload import FieldPayload, JsonPayload
from tdmq_beam.records.received_message import ReceivedMessage
from tdmq_beam.transforms.enrich import EnrichWithClientStatus
from tdmq_beam.transforms.keepalive import SetClientKeepAlive
from tdmq_beam.transforms.read import ReadFromTdmqMqtt
from tdmq_beam.transforms.results import FailedMessage
from tdmq_beam.transforms.write import WriteToTdmqMqtt

__all__ = [
    "ClientRow",
    "YamlEnrichWithClientStatus",
    "YamlReadFromTdmqMqtt",
    "YamlSetClientKeepAlive",
    "YamlWriteToTdmqMqtt",
]

# The keys every transform takes to reach the service, and what they become.
_CONNECTION_KEYS = (
    "endpoint", "username", "password", "password_env", "password_file", "client_cert", "client_key",
    "ca_cert", "key_password_env", "mqtt_endpoint", "tps", "max_in_flight", "timeout", "max_attempts",
)  # fmt: skip
_CLOUD_KEYS = (
    "secret_id", "secret_key", "secret_key_env", "secret_key_file", "tencent_region", "instance_id",
    "cloud_endpoint", "cloud_rate",
)  # fmt: skip


def _pick(values: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {key: values[key] for key in keys if key in values}


def _input_fields(rows: beam.PCollection, transform: str) -> list[tuple[str, Any]]:
    try:
        return list(named_fields_from_element_type(rows.element_type))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{transform} needs schema'd input (Rows); got elements of type {rows.element_type}"
        ) from None


def _fields(element: Any) -> dict[str, Any]:
    return dict(element._asdict()) if hasattr(element, "_asdict") else dict(element)


def _error_row(failure: FailedMessage) -> beam.Row:
    details = {"error_kind": failure.error_kind, "status": failure.status, "attempts": failure.attempts}
    if failure.topic is not None:
        details["topic"] = failure.topic
    return beam.Row(element=failure.element, msg=f"{failure.error_kind}: {failure.reason}", stack=json.dumps(details))


def _fail(row: Any) -> None:
    raise RuntimeError(f"{row.msg} (add error_handling: {{output: NAME}} to route failures instead)")


def _with_errors(
    main: beam.PCollection, main_name: str, failed: beam.PCollection, input_type: Any, error_handling: Any
) -> Any:
    """Beam YAML's convention for a transform that can fail (see the module docstring)."""
    errors = failed | "ErrorRows" >> beam.Map(_error_row).with_output_types(
        RowTypeConstraint.from_fields([("element", input_type), ("msg", str), ("stack", str)])
    )
    if error_handling:
        if not isinstance(error_handling, Mapping) or not isinstance(error_handling.get("output"), str):
            raise ConfigurationError("error_handling must be {output: NAME}")
        return {main_name: main, error_handling["output"]: errors}
    _ = errors | "FailOnError" >> beam.Map(_fail)
    return main


def _published_row(published: Any) -> beam.Row:
    return beam.Row(
        **_fields(published.element), topic=published.topic, message_id=published.message_id,
        attempts=published.attempts,
    )  # fmt: skip


class YamlWriteToTdmqMqtt(beam.PTransform):
    """Publishes each row as an MQTT message through the HTTP publish API.

    Outputs the rows with ``topic``, ``message_id`` and ``attempts`` added;
    with ``error_handling``, the rows that failed, with the reason.

    Args:
        endpoint: the instance's HTTP access point, ``http(s)://host[:port]``.
        username: Basic authentication user.
        password_env: environment variable holding the password (on the workers).
        password_file: file holding the password (on the workers).
        password: refused: a YAML file is no place for a secret.
        client_cert: client certificate chain (PEM) for mTLS.
        client_key: client private key (PEM) for mTLS.
        ca_cert: CA bundle of the server certificate. Defaults to the system's.
        key_password_env: environment variable holding the client key's passphrase.
        schema: an Avro schema (.avsc) with ``mqtt.*`` annotations: the mapping of rows onto messages.
        mapping_file: a mapping file beside ``schema``.
        topic: topic template over the row's fields, e.g. ``devices/{device_id}/commands``
            (overrides the schema's).
        payload_field: the field holding the payload (bytes or string).
        payload_fields: the fields the JSON payload holds. Default, without ``schema``: all fields.
        roles: MQTT role -> field, for qos, retained, client_id, username,
            message_expiry_interval, content_type, payload_format_indicator,
            response_topic and correlation_data.
        user_properties: user property key -> field.
        qos: QoS where a row sets none. Default: the service's (1).
        retained: retained flag where a row sets none. Default: false.
        message_expiry_interval: seconds, where a row sets none.
        content_type: MQTT 5 content type, where a row sets none.
        payload_format_indicator: 0 or 1, where a row sets none.
        response_topic: MQTT 5 response topic, where a row sets none.
        tps: requests per second per worker process. Default: no cap.
        max_in_flight: requests in flight per worker process. Default: 64.
        timeout: seconds per request. Default: 10.
        max_attempts: attempts per message, the first included. Default: 5.
        error_handling: ``{output: NAME}``: failed rows go to output NAME.
    """

    def __init__(
        self,
        endpoint: str,
        username: Optional[str] = None,  # noqa: UP045 (Beam YAML reads typing.Optional)
        password_env: Optional[str] = None,  # noqa: UP045
        password_file: Optional[str] = None,  # noqa: UP045
        password: Optional[str] = None,  # noqa: UP045
        client_cert: Optional[str] = None,  # noqa: UP045
        client_key: Optional[str] = None,  # noqa: UP045
        ca_cert: Optional[str] = None,  # noqa: UP045
        key_password_env: Optional[str] = None,  # noqa: UP045
        schema: Optional[str] = None,  # noqa: UP045
        mapping_file: Optional[str] = None,  # noqa: UP045
        topic: Optional[str] = None,  # noqa: UP045
        payload_field: Optional[str] = None,  # noqa: UP045
        payload_fields: Optional[list[str]] = None,  # noqa: UP045
        roles: Optional[dict[str, str]] = None,  # noqa: UP045
        user_properties: Optional[dict[str, str]] = None,  # noqa: UP045
        qos: Optional[int] = None,  # noqa: UP045
        retained: Optional[bool] = None,  # noqa: UP045
        message_expiry_interval: Optional[int] = None,  # noqa: UP045
        content_type: Optional[str] = None,  # noqa: UP045
        payload_format_indicator: Optional[int] = None,  # noqa: UP045
        response_topic: Optional[str] = None,  # noqa: UP045
        tps: Optional[float] = None,  # noqa: UP045
        max_in_flight: int = 64,
        timeout: float = 10.0,
        max_attempts: int = 5,
        error_handling: Optional[dict[str, str]] = None,  # noqa: UP045
    ) -> None:
        super().__init__()
        settings = dict(locals())
        self._connection = connection_from_config(**_pick(settings, _CONNECTION_KEYS))
        self._mapping = _mapping(schema, mapping_file, topic, payload_field, payload_fields, roles, user_properties)
        self._defaults: dict[str, Any] = {
            "qos": qos, "retained": retained, "message_expiry_interval": message_expiry_interval,
            "content_type": content_type, "payload_format_indicator": payload_format_indicator,
            "response_topic": response_topic,
        }  # fmt: skip
        # Built now, so that a default that cannot work is reported when the pipeline is built.
        self._write = WriteToTdmqMqtt(self._connection, mapping=self._mapping, **self._defaults)
        self._error_handling = error_handling

    def expand(self, rows: beam.PCollection) -> Any:
        fields = _input_fields(rows, "WriteToTdmqMqtt")
        result = rows | "Publish" >> self._write
        published = result.published | "PublishedRows" >> beam.Map(_published_row).with_output_types(
            RowTypeConstraint.from_fields(
                [*fields, ("topic", str), ("message_id", Optional[str]), ("attempts", int)]  # type: ignore[list-item]  # noqa: UP045
            )
        )
        return _with_errors(published, "published", result.failed, rows.element_type, self._error_handling)


def _mapping(
    schema: Optional[str],  # noqa: UP045
    mapping_file: Optional[str],  # noqa: UP045
    topic: Optional[str],  # noqa: UP045
    payload_field: Optional[str],  # noqa: UP045
    payload_fields: Optional[list[str]],  # noqa: UP045
    roles: Optional[Mapping[str, str]],  # noqa: UP045
    user_properties: Optional[Mapping[str, str]],  # noqa: UP045
) -> MessageMapping:
    """The mapping the keys describe: a schema's (and mapping file's), with the keys given here on top."""
    if payload_field and payload_fields:
        raise ConfigurationError("payload_field and payload_fields: give one")
    if schema is not None:
        spec: dict[str, Any] = load_mapping_file(mapping_file) if mapping_file else {}
        if topic:
            spec["topic"] = topic
        if payload_field:
            spec["payload"] = {"encoding": "field", "field": payload_field}
        elif payload_fields:
            spec["payload"] = {"encoding": "json", "fields": list(payload_fields)}
        if roles:
            spec["roles"] = {**spec.get("roles", {}), **roles}
        if user_properties:
            spec["user_properties"] = dict(user_properties)
        return avro_mapping(schema, spec)
    if mapping_file:
        raise ConfigurationError("mapping_file goes with schema")
    if not topic:
        raise ConfigurationError("topic is required without schema (a template such as devices/{device_id}/commands)")
    payload = FieldPayload(payload_field) if payload_field else JsonPayload(payload_fields)
    try:
        return MessageMapping(topic=topic, payload=payload, user_properties=user_properties, **dict(roles or {}))
    except TypeError:
        unknown = sorted(set(roles or {}) - set(MessageMapping.__dataclass_fields__))
        raise ConfigurationError(f"roles: unknown role(s) {unknown}") from None


class _ClientSubscriptionRow(NamedTuple):
    topic_filter: str
    qos: int


class ClientRow(NamedTuple):
    """A client's details as ``EnrichWithClientStatus`` adds them in Beam YAML (Unix milliseconds)."""

    client_id: str
    client_address: str
    protocol_version: int
    keepalive: int
    connection_status: str
    clean_session: bool
    subscriptions: list[_ClientSubscriptionRow]
    create_time: int
    connect_time: int
    disconnect_time: int
    session_expiry_interval: Optional[int]  # noqa: UP045


def _client_row(details: Any) -> Optional[ClientRow]:  # noqa: UP045
    if details is None:
        return None
    fields: dict[str, Any] = _fields(details)
    fields["subscriptions"] = [_ClientSubscriptionRow(sub.topic_filter, sub.qos) for sub in fields["subscriptions"]]
    return ClientRow(*[fields.get(name) for name in ClientRow._fields])  # type: ignore[arg-type]


class YamlEnrichWithClientStatus(beam.PTransform):
    """Adds to each row whether its MQTT client is online (and, with cloud API keys, its details).

    Outputs the rows with ``online`` (false for a client the service does not
    know: the status API does not tell them apart) and, with ``secret_id``,
    ``client`` (the client's details, null for a client the service does not
    know); with ``error_handling``, the rows whose lookup failed.

    Args:
        endpoint: the instance's HTTP access point, ``http(s)://host[:port]``.
        username: Basic authentication user.
        password_env: environment variable holding the password (on the workers).
        password_file: file holding the password (on the workers).
        password: refused: a YAML file is no place for a secret.
        client_cert: client certificate chain (PEM) for mTLS.
        client_key: client private key (PEM) for mTLS.
        ca_cert: CA bundle of the server certificate. Defaults to the system's.
        key_password_env: environment variable holding the client key's passphrase.
        client_id_field: the field holding the client id. Default: client_id.
        status_ttl: seconds an online status stays cached. Default: 5.
        details_ttl: seconds client details stay cached. Default: 60.
        negative_ttl: seconds an unknown client stays cached. Default: 30.
        secret_id: cloud API SecretId (for client details).
        secret_key_env: environment variable holding the cloud API SecretKey.
        secret_key_file: file holding the cloud API SecretKey.
        secret_key: refused: a YAML file is no place for a secret.
        tencent_region: the cloud API region, e.g. ap-guangzhou.
        instance_id: the TDMQ for MQTT instance id.
        cloud_endpoint: cloud API endpoint. Default: Tencent's hosts.
        cloud_rate: cloud API requests per second per worker process. Default: 20.
        tps: status requests per second per worker process. Default: no cap.
        max_in_flight: requests in flight per worker process. Default: 64.
        timeout: seconds per request. Default: 10.
        max_attempts: attempts per call, the first included. Default: 5.
        error_handling: ``{output: NAME}``: rows whose lookup failed go to output NAME.
    """

    def __init__(
        self,
        endpoint: str,
        username: Optional[str] = None,  # noqa: UP045
        password_env: Optional[str] = None,  # noqa: UP045
        password_file: Optional[str] = None,  # noqa: UP045
        password: Optional[str] = None,  # noqa: UP045
        client_cert: Optional[str] = None,  # noqa: UP045
        client_key: Optional[str] = None,  # noqa: UP045
        ca_cert: Optional[str] = None,  # noqa: UP045
        key_password_env: Optional[str] = None,  # noqa: UP045
        client_id_field: str = "client_id",
        status_ttl: float = 5.0,
        details_ttl: float = 60.0,
        negative_ttl: float = 30.0,
        secret_id: Optional[str] = None,  # noqa: UP045
        secret_key_env: Optional[str] = None,  # noqa: UP045
        secret_key_file: Optional[str] = None,  # noqa: UP045
        secret_key: Optional[str] = None,  # noqa: UP045
        tencent_region: Optional[str] = None,  # noqa: UP045
        instance_id: Optional[str] = None,  # noqa: UP045
        cloud_endpoint: Optional[str] = None,  # noqa: UP045
        cloud_rate: float = 20.0,
        tps: Optional[float] = None,  # noqa: UP045
        max_in_flight: int = 64,
        timeout: float = 10.0,
        max_attempts: int = 5,
        error_handling: Optional[dict[str, str]] = None,  # noqa: UP045
    ) -> None:
        super().__init__()
        settings = dict(locals())
        connection = connection_from_config(**_pick(settings, _CONNECTION_KEYS))
        cloud = cloud_from_config(max_attempts=max_attempts, **_pick(settings, _CLOUD_KEYS))
        self._with_details = cloud is not None
        self._enrich = EnrichWithClientStatus(
            connection, cloud, client_id=client_id_field, status_ttl=status_ttl, details_ttl=details_ttl,
            negative_ttl=negative_ttl,
        )  # fmt: skip
        self._error_handling = error_handling

    def expand(self, rows: beam.PCollection) -> Any:
        fields = _input_fields(rows, "EnrichWithClientStatus")
        extra: list[tuple[str, Any]] = [("online", Optional[bool])]  # noqa: UP045 (None: lookup failed)
        if self._with_details:
            extra.append(("client", Optional[ClientRow]))  # noqa: UP045
        with_details = self._with_details

        def enriched_row(element: Any) -> beam.Row:
            values = _fields(element)
            if with_details:
                values["client"] = _client_row(values.get("client"))
            return beam.Row(**values)

        result = rows | "Enrich" >> self._enrich
        enriched = result.enriched | "EnrichedRows" >> beam.Map(enriched_row).with_output_types(
            RowTypeConstraint.from_fields([*fields, *extra])
        )
        return _with_errors(enriched, "enriched", result.failed, rows.element_type, self._error_handling)


class YamlSetClientKeepAlive(beam.PTransform):
    """Sets each row's client's keep-alive through the keep-alive API.

    Outputs the rows with ``keepalive`` (the seconds now set) added; with
    ``error_handling``, the rows that failed.

    Args:
        endpoint: the instance's HTTP access point, ``http(s)://host[:port]``.
        username: Basic authentication user.
        password_env: environment variable holding the password (on the workers).
        password_file: file holding the password (on the workers).
        password: refused: a YAML file is no place for a secret.
        client_cert: client certificate chain (PEM) for mTLS.
        client_key: client private key (PEM) for mTLS.
        ca_cert: CA bundle of the server certificate. Defaults to the system's.
        key_password_env: environment variable holding the client key's passphrase.
        client_id_field: the field holding the client id. Default: client_id.
        interval_field: the field holding the keep-alive seconds (30..1200). Default: interval.
        interval: one keep-alive for every row, instead of ``interval_field``.
        tps: requests per second per worker process. Default: no cap.
        max_in_flight: requests in flight per worker process. Default: 64.
        timeout: seconds per request. Default: 10.
        max_attempts: attempts per call, the first included. Default: 5.
        error_handling: ``{output: NAME}``: failed rows go to output NAME.
    """

    def __init__(
        self,
        endpoint: str,
        username: Optional[str] = None,  # noqa: UP045
        password_env: Optional[str] = None,  # noqa: UP045
        password_file: Optional[str] = None,  # noqa: UP045
        password: Optional[str] = None,  # noqa: UP045
        client_cert: Optional[str] = None,  # noqa: UP045
        client_key: Optional[str] = None,  # noqa: UP045
        ca_cert: Optional[str] = None,  # noqa: UP045
        key_password_env: Optional[str] = None,  # noqa: UP045
        client_id_field: str = "client_id",
        interval_field: str = "interval",
        interval: Optional[int] = None,  # noqa: UP045
        tps: Optional[float] = None,  # noqa: UP045
        max_in_flight: int = 64,
        timeout: float = 10.0,
        max_attempts: int = 5,
        error_handling: Optional[dict[str, str]] = None,  # noqa: UP045
    ) -> None:
        super().__init__()
        settings = dict(locals())
        connection = connection_from_config(**_pick(settings, _CONNECTION_KEYS))
        self._keepalive = SetClientKeepAlive(
            connection, client_id=client_id_field, interval=interval if interval is not None else interval_field
        )
        self._error_handling = error_handling

    def expand(self, rows: beam.PCollection) -> Any:
        fields = _input_fields(rows, "SetClientKeepAlive")
        result = rows | "SetKeepAlive" >> self._keepalive
        updated = result.updated | "UpdatedRows" >> beam.Map(
            lambda done: beam.Row(**_fields(done.element), keepalive=done.keepalive)
        ).with_output_types(RowTypeConstraint.from_fields([*fields, ("keepalive", int)]))
        return _with_errors(updated, "updated", result.failed, rows.element_type, self._error_handling)


class YamlReadFromTdmqMqtt(beam.PTransform):
    """Reads MQTT messages at least once (acknowledged after Beam commits them), as rows.

    Outputs ``ReceivedMessage`` rows: topic, payload, qos, retained, dup,
    user_properties, content_type, payload_format_indicator, response_topic,
    correlation_data, message_expiry_interval, receive_time.

    Args:
        endpoint: the instance's HTTP access point, ``http(s)://host[:port]``.
        mqtt_endpoint: the MQTT access point, ``mqtt://host:1883`` or ``mqtts://host:8883``.
        topics: topic filters to read.
        client_id_prefix: readers are PREFIX-0, PREFIX-1, ...; keep it stable to resume sessions.
        username: Basic authentication user.
        password_env: environment variable holding the password (on the workers).
        password_file: file holding the password (on the workers).
        password: refused: a YAML file is no place for a secret.
        client_cert: client certificate chain (PEM) for mTLS.
        client_key: client private key (PEM) for mTLS.
        ca_cert: CA bundle of the server certificate. Defaults to the system's.
        key_password_env: environment variable holding the client key's passphrase.
        share_group: shared subscription group splitting messages among readers. Default: none.
        num_readers: parallel readers (needs share_group). Default: 1.
        qos: subscription QoS. Default: 1.
        mqtt_version: 5, or 4 for MQTT 3.1.1. Default: 5.
        session_expiry_interval: seconds the broker keeps a reader's session. Default: 86400.
        max_records: stop after this many messages. Default: unbounded.
        max_read_time: stop after this many seconds. Default: unbounded.
        deduplicate_window: drop repeated idempotency-key user properties within this many seconds.
    """

    def __init__(
        self,
        endpoint: str,
        mqtt_endpoint: str,
        topics: list[str],
        client_id_prefix: str,
        username: Optional[str] = None,  # noqa: UP045
        password_env: Optional[str] = None,  # noqa: UP045
        password_file: Optional[str] = None,  # noqa: UP045
        password: Optional[str] = None,  # noqa: UP045
        client_cert: Optional[str] = None,  # noqa: UP045
        client_key: Optional[str] = None,  # noqa: UP045
        ca_cert: Optional[str] = None,  # noqa: UP045
        key_password_env: Optional[str] = None,  # noqa: UP045
        share_group: Optional[str] = None,  # noqa: UP045
        num_readers: int = 1,
        qos: int = 1,
        mqtt_version: int = 5,
        session_expiry_interval: int = 86400,
        max_records: Optional[int] = None,  # noqa: UP045
        max_read_time: Optional[float] = None,  # noqa: UP045
        deduplicate_window: Optional[float] = None,  # noqa: UP045
    ) -> None:
        super().__init__()
        settings = dict(locals())
        connection = connection_from_config(**_pick(settings, _CONNECTION_KEYS))
        self._read = ReadFromTdmqMqtt(
            connection, list(topics), client_id_prefix=client_id_prefix, share_group=share_group,
            num_readers=num_readers, qos=qos, mqtt_version=mqtt_version,
            session_expiry_interval=session_expiry_interval, max_records=max_records,
            max_read_time=max_read_time, deduplicate_window=deduplicate_window,
        )  # fmt: skip

    def expand(self, pbegin: Any) -> beam.PCollection[ReceivedMessage]:
        return pbegin | "Read" >> self._read
