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

import datetime
import inspect
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Optional

import apache_beam as beam
from apache_beam.typehints.row_type import RowTypeConstraint
from apache_beam.typehints.schemas import named_fields_from_element_type

from tdmq_beam.beam_yaml.config import cloud_from_config, connection_from_config
from tdmq_beam.errors import ConfigurationError
from tdmq_beam.json_documents import load_json
from tdmq_beam.records.avro_mapping import avro_mapping, load_mapping_file, load_schema
from tdmq_beam.records.client_event import ClientEvent
from tdmq_beam.records.fields import element_to_json
from tdmq_beam.records.mapping import MessageMapping
from tdmq_beam.records.payload import FieldPayload, JsonPayload, RecordError
from tdmq_beam.records.received_message import ReceivedMessage
from tdmq_beam.records.record_check import RecordCheck
from tdmq_beam.records.sourced_record import SourcedRecord, source_of
from tdmq_beam.records.tracked_status import TrackedStatus
from tdmq_beam.rules.client_events import STATUS_EVENTS
from tdmq_beam.rules.message_properties import MESSAGE_PROPERTIES
from tdmq_beam.service.cloud_api import CloudApiConfig
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.service.preflight import preflight_problem
from tdmq_beam.transforms.client_events import ReadClientEvents
from tdmq_beam.transforms.client_rows import ClientRow
from tdmq_beam.transforms.enrich import EnrichWithClientStatus, check_source
from tdmq_beam.transforms.history import ReadTdmqMessageHistory
from tdmq_beam.transforms.keepalive import SetClientKeepAlive
from tdmq_beam.transforms.read import ReadFromTdmqMqtt
from tdmq_beam.transforms.results import FailedMessage
from tdmq_beam.transforms.track_status import DEFAULT_OFFLINE_EXPIRY, TrackClientStatus
from tdmq_beam.transforms.verify import VerifyStoredMessages
from tdmq_beam.transforms.write import WriteToTdmqMqtt

__all__ = [
    "YamlEnrichWithClientStatus",
    "YamlReadClientEvents",
    "YamlReadFromTdmqMqtt",
    "YamlReadTdmqMessageHistory",
    "YamlSetClientKeepAlive",
    "YamlTrackClientStatus",
    "YamlVerifyStoredMessages",
    "YamlWriteToTdmqMqtt",
]

# The keys every transform takes to reach the service: (name, type, default, what it is). They
# are added to each transform's signature (which Beam YAML reads as its configuration schema)
# and docstring by `_takes_connection_keys`, and become a `TdmqConnection`.
_REQUIRED = inspect.Parameter.empty
_CONNECTION_KEYS: tuple[tuple[str, Any, Any, str], ...] = (
    ("endpoint", str, _REQUIRED, "the instance's HTTP access point, ``http(s)://host[:port]``."),
    ("username", Optional[str], None, "Basic authentication user."),  # noqa: UP045 (Beam YAML reads typing.Optional)
    ("password_env", Optional[str], None, "environment variable holding the password (on the workers)."),  # noqa: UP045
    ("password_file", Optional[str], None, "file holding the password (on the workers)."),  # noqa: UP045
    ("password", Optional[str], None, "refused: a YAML file is no place for a secret."),  # noqa: UP045
    ("client_cert", Optional[str], None, "client certificate chain (PEM) for mTLS."),  # noqa: UP045
    ("client_key", Optional[str], None, "client private key (PEM) for mTLS."),  # noqa: UP045
    ("ca_cert", Optional[str], None, "CA bundle of the server certificate. Default: the system's."),  # noqa: UP045
    ("key_password_env", Optional[str], None, "environment variable holding the client key's passphrase."),  # noqa: UP045
    ("mqtt_endpoint", Optional[str], None, "the MQTT access point, ``mqtt://host:1883`` or ``mqtts://host:8883``."),  # noqa: UP045
    ("tps", Optional[float], None, "requests per second per worker process. Default: no cap."),  # noqa: UP045
    ("max_in_flight", int, 64, "requests in flight per worker process. Default: 64."),
    ("timeout", float, 10.0, "seconds per request. Default: 10."),
    ("max_attempts", int, 5, "attempts per call, the first included. Default: 5."),
    (
        "preflight",
        bool,
        False,
        "check once, when the pipeline is built, that the endpoint answers and accepts "
        "the credentials: a problem is one line then, not a dead letter per row. Default: off.",
    ),
)
_CONNECTION_KEY_NAMES = frozenset(name for name, _, _, _ in _CONNECTION_KEYS)


# The keys of the cloud API (client details, stored messages): a `CloudApiConfig`.
_CLOUD_KEYS: tuple[tuple[str, Any, Any, str], ...] = (
    ("secret_id", Optional[str], None, "cloud API SecretId."),  # noqa: UP045
    ("secret_key_env", Optional[str], None, "environment variable holding the cloud API SecretKey."),  # noqa: UP045
    ("secret_key_file", Optional[str], None, "file holding the cloud API SecretKey."),  # noqa: UP045
    ("secret_key", Optional[str], None, "refused: a YAML file is no place for a secret."),  # noqa: UP045
    ("tencent_region", Optional[str], None, "the cloud API region, e.g. ap-guangzhou."),  # noqa: UP045
    ("instance_id", Optional[str], None, "the TDMQ for MQTT instance id."),  # noqa: UP045
    ("cloud_endpoint", Optional[str], None, "cloud API endpoint. Default: Tencent's hosts."),  # noqa: UP045
    ("cloud_ca_cert", Optional[str], None, "CA bundle of the cloud endpoint's certificate. Default: the system's."),  # noqa: UP045
    ("cloud_rate", float, 20.0, "cloud API requests per second per worker process, per action. Default: 20."),
    ("max_attempts", int, 5, "attempts per call, the first included. Default: 5."),
)
_CLOUD_KEY_NAMES = frozenset(name for name, _, _, _ in _CLOUD_KEYS)


def _takes_keys(keys: tuple[tuple[str, Any, Any, str], ...]) -> Callable[[type], type]:
    """Declares ``keys`` on a YAML transform: its ``__init__(self, *, <own keys>, **keys)`` gets
    them in its signature (which Beam YAML reads as its configuration schema), after its own
    (those it declares itself are left as it declares them), and its docstring describes them."""

    def declare(cls: type) -> type:
        init = cls.__init__  # type: ignore[misc]
        own = inspect.signature(init)
        parameters = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        declared = {p.name for p in parameters}
        added = [(name, kind, default, doc) for name, kind, default, doc in keys if name not in declared]
        parameters += [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
            for name, kind, default, _ in added
        ]
        init.__signature__ = own.replace(parameters=parameters)  # without **keys: Beam YAML reads it as the schema
        docs = "".join(f"        {name}: {doc}\n" for name, _, _, doc in added)
        cls.__doc__ = (cls.__doc__ or "").replace("    Args:\n", "    Args:\n" + docs, 1)
        return cls

    return declare


_takes_connection_keys = _takes_keys(_CONNECTION_KEYS)
_takes_cloud_keys = _takes_keys(_CLOUD_KEYS)


# The message settings' keys, one per row of the message-property table: its name, or, where a
# connection key has that name (username), message_{name}.
_SETTING_KEYS: dict[str, str] = {
    (f"message_{prop.name}" if prop.name in _CONNECTION_KEY_NAMES else prop.name): prop.name
    for prop in MESSAGE_PROPERTIES
}


def _takes_message_settings(cls: type) -> type:
    """Declares a key per message setting (the property table's rows) on a YAML write transform:
    its ``__init__(self, *, <own keys>, **keys)`` gets them in its signature, and its docstring
    describes them before ``error_handling``."""
    init = cls.__init__  # type: ignore[misc]
    own = inspect.signature(init)
    parameters = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    rows = {prop.name: prop for prop in MESSAGE_PROPERTIES}
    for key, name in _SETTING_KEYS.items():
        kind = str if rows[name].kind is bytes else rows[name].kind  # YAML has no bytes: text, sent as UTF-8
        annotation = Optional[kind]  # type: ignore[valid-type]  # noqa: UP045 (Beam YAML reads typing.Optional)
        parameters.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    variadic = [p for p in own.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    init.__signature__ = own.replace(parameters=parameters + variadic)
    docs = "".join(
        f"        {key}: {name.replace('_', ' ')} ({rows[name].accepts}), where a row sets none.\n"
        for key, name in _SETTING_KEYS.items()
    )
    doc = (cls.__doc__ or "").replace("        error_handling:", docs + "        error_handling:", 1)
    names = [prop.name for prop in MESSAGE_PROPERTIES]
    cls.__doc__ = doc.replace("{roles}", ", ".join(names[:-1]) + " and " + names[-1])  # the roles are the table's
    return cls


def _message_settings(keys: dict[str, Any]) -> dict[str, Any]:
    """Takes the message settings' keys out of ``keys``: setting name -> value, for those given."""
    return {name: keys.pop(key) for key, name in _SETTING_KEYS.items() if keys.get(key) is not None}


def _connection(keys: Mapping[str, Any]) -> TdmqConnection:
    unknown = sorted(set(keys) - _CONNECTION_KEY_NAMES)
    if unknown:
        raise ConfigurationError(f"unknown key(s) {unknown}")
    settings = dict(keys)
    check = settings.pop("preflight", False)
    connection = connection_from_config(**settings)
    if check and (problem := preflight_problem(connection)) is not None:
        raise ConfigurationError(f"pre-flight check: {problem}")
    return connection


def _cloud(keys: dict[str, Any]) -> Optional[CloudApiConfig]:  # noqa: UP045
    """Takes the cloud API keys out of ``keys``: their `CloudApiConfig`, or None without ``secret_id``."""
    taken = {name: keys.pop(name) for name in _CLOUD_KEY_NAMES - {"max_attempts"} if name in keys}
    given = {name: value for name, value in taken.items() if value is not None}  # a null key is an absent one
    return cloud_from_config(secret_id=given.pop("secret_id", None), max_attempts=keys.get("max_attempts", 5), **given)


def _cloud_only(keys: dict[str, Any]) -> CloudApiConfig:
    """The `CloudApiConfig` of a transform that uses the cloud API alone: its keys required, no others taken."""
    cloud = _cloud(keys)
    if cloud is None:
        raise ConfigurationError("the cloud API keys are required: secret_id, secret_key_env or secret_key_file, "
                                 "tencent_region and instance_id")  # fmt: skip
    unknown = sorted(set(keys) - {"max_attempts"})
    if unknown:
        raise ConfigurationError(f"unknown key(s) {unknown}")
    return cloud


def _input_fields(rows: beam.PCollection, transform: str) -> list[tuple[str, Any]]:
    try:
        return list(named_fields_from_element_type(rows.element_type))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{transform} needs schema'd input (Rows); got elements of type {rows.element_type}"
        ) from None


def _fields(element: Any) -> dict[str, Any]:
    return dict(element._asdict()) if hasattr(element, "_asdict") else dict(element)


def _error_text(failure: FailedMessage) -> tuple[str, str]:
    """The ``msg`` and ``stack`` of a failure's error row."""
    details = {"error_kind": failure.error_kind, "status": failure.status, "attempts": failure.attempts}
    if failure.topic is not None:
        details["topic"] = failure.topic
    return f"{failure.error_kind}: {failure.reason}", json.dumps(details)


def _error_row(failure: FailedMessage) -> beam.Row:
    msg, stack = _error_text(failure)
    return beam.Row(element=_input_row(failure.element), msg=msg, stack=stack)


def _input_row(element: Any) -> Any:
    """The row an output's element came from: the write maps a row's record (a `SourcedRecord`
    whose source is the row), the outputs show the row."""
    return source_of(element, element)


class _CheckRows(beam.DoFn):
    """Each row's record as the Python path takes it: from JSON text (``json_field``, parsed with
    the nesting limit) or the row's fields, checked against the schema type by type, its defaults
    filled in; a row that does not fit goes to ``failed`` naming the field."""

    def __init__(self, check: RecordCheck | None, json_field: str | None) -> None:
        self._check = check
        self._json_field = json_field

    def process(self, row: Any) -> Iterator[Any]:
        try:
            if self._json_field is not None:
                text = getattr(row, self._json_field)
                try:
                    record = load_json(text)
                except (TypeError, ValueError) as exc:
                    raise RecordError(self._json_field, f"is not a JSON object ({exc})") from None
            else:
                record = _fields(row)
            if self._check is not None:
                if (problem := self._check.problem(record)) is not None:
                    raise RecordError(None, problem)
            elif not isinstance(record, dict):
                raise RecordError(self._json_field, f"holds JSON {type(record).__name__}, not an object")
        except RecordError as error:
            yield beam.pvalue.TaggedOutput("failed", FailedMessage(row, None, None, "invalid_record", str(error), 0))
            return
        yield self._check.with_defaults(record, row) if self._check is not None else SourcedRecord(row, record)


def _json_error_row(failure: FailedMessage) -> beam.Row:
    """An error row whose element is JSON text (for failures of a source, which has no input row)."""
    msg, stack = _error_text(failure)
    return beam.Row(element=element_to_json(failure.element), msg=msg, stack=stack)


_ERROR_FIELDS_JSON = [("element", str), ("msg", str), ("stack", str)]


def _fail(row: Any) -> None:
    raise RuntimeError(f"{row.msg} (add error_handling: {{output: NAME}} to route failures instead)")


def _checked_error_handling(error_handling: Any) -> Optional[Mapping[str, str]]:  # noqa: UP045
    if error_handling is not None and (
        not isinstance(error_handling, Mapping) or not isinstance(error_handling.get("output"), str)
    ):
        raise ConfigurationError("error_handling must be {output: NAME}")
    return error_handling


def _with_errors(outputs: dict[str, Any], errors: Any, error_handling: Optional[Mapping[str, str]]) -> Any:  # noqa: UP045
    """A YAML transform's result by Beam YAML's convention: with ``error_handling``, the outputs and
    the error rows on its output; without, the error rows fail the pipeline, and a lone output is
    returned as itself."""
    if error_handling:
        return {**outputs, error_handling["output"]: errors}
    _ = errors | "FailOnError" >> beam.Map(_fail)
    return next(iter(outputs.values())) if len(outputs) == 1 else outputs


def _published_row(published: Any) -> beam.Row:
    return beam.Row(
        **_fields(_input_row(published.element)), topic=published.topic, message_id=published.message_id,
        attempts=published.attempts,
    )  # fmt: skip


def _enriched_row(enriched: Any) -> beam.Row:
    return beam.Row(**_fields(enriched))  # it already holds online


def _enriched_row_with_client(enriched: Any) -> beam.Row:
    fields = _fields(enriched)
    fields["client"] = ClientRow.of(fields.get("client"))  # the details, as the declared type
    return beam.Row(**fields)


def _updated_row(done: Any) -> beam.Row:
    return beam.Row(**_fields(done.element), keepalive=done.keepalive)


def _verified_row(verified: Any) -> beam.Row:
    return beam.Row(**_fields(verified.element), store_time=verified.store_time)


def _missing_row(missing: Any) -> beam.Row:
    return beam.Row(**_fields(missing.element), reason=missing.reason)


def _instant(name: str, value: Any) -> Any:
    """A time key: ISO 8601 text with its zone (or the datetime YAML made of it)."""
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigurationError(
                f"{name} must be ISO 8601 with its zone, e.g. '2026-12-01T00:00:00Z', got {value!r}"
            ) from None
    return value  # ReadTdmqMessageHistory checks the rest


class _YamlCallTransform(beam.PTransform):
    """Base of the YAML transforms over a `CallTransform`: Rows in, the main output as Rows with
    the input's fields plus ``EXTRA`` (declared), and failures by Beam YAML's convention (see
    the module docstring)."""

    NAME: ClassVar[str]
    """The transform's name in YAML, for messages."""
    EXTRA: ClassVar[list[tuple[str, Any]]]
    """The fields the main output adds to the input's."""
    OTHER_OUTPUTS: ClassVar[dict[str, tuple[list[tuple[str, Any]], Callable[[Any], beam.Row]]]] = {}
    """The inner transform's outputs besides the main one and ``failed``: name -> (the fields
    its rows add to the input's, the function from its elements to rows)."""

    def __init__(self, inner: Any, error_handling: Optional[Mapping[str, str]]) -> None:  # noqa: UP045
        super().__init__()
        self._inner = inner
        self._error_handling = _checked_error_handling(error_handling)

    def to_row(self) -> Callable[[Any], beam.Row]:
        """A function from an element of the inner transform's main output to its output row."""
        raise NotImplementedError

    def extra_fields(self) -> list[tuple[str, Any]]:
        return self.EXTRA

    def prepared(self, rows: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection | None]:
        """What the inner transform takes, and the rows refused before it (`FailedMessage`), if any."""
        return rows, None

    def expand(self, rows: beam.PCollection) -> Any:
        fields = _input_fields(rows, self.NAME)
        main_name = self._inner.MAIN
        inputs, refused = self.prepared(rows)
        result = inputs | self._inner.LABEL >> self._inner
        main = getattr(result, main_name) | "Rows" >> beam.Map(self.to_row()).with_output_types(
            RowTypeConstraint.from_fields([*fields, *self.extra_fields()])
        )
        others = {
            name: getattr(result, name)
            | f"{name.capitalize()}Rows"
            >> beam.Map(to_row).with_output_types(RowTypeConstraint.from_fields([*fields, *extra]))
            for name, (extra, to_row) in self.OTHER_OUTPUTS.items()
        }
        failed = result.failed if refused is None else (result.failed, refused) | "AllFailed" >> beam.Flatten()
        errors = failed | "ErrorRows" >> beam.Map(_error_row).with_output_types(
            RowTypeConstraint.from_fields([("element", rows.element_type), ("msg", str), ("stack", str)])  # type: ignore[list-item]
        )
        return _with_errors({main_name: main, **others}, errors, self._error_handling)


@_takes_connection_keys
@_takes_message_settings
class YamlWriteToTdmqMqtt(_YamlCallTransform):
    """Publishes each row as an MQTT message through the HTTP publish API.

    Outputs the rows with ``topic``, ``message_id`` and ``attempts`` added;
    with ``error_handling``, the rows that failed, with the reason.

    Args:
        schema: an Avro schema (.avsc) with ``mqtt.*`` annotations: the mapping of rows onto messages.
        mapping_file: a mapping file beside ``schema``.
        topic: topic template over the row's fields, e.g. ``devices/{device_id}/commands``
            (overrides the schema's).
        payload_field: the field holding the payload (bytes or string).
        payload_fields: the fields the JSON payload holds. Default, without ``schema``: all fields.
        roles: MQTT role -> field, for {roles}.
        user_properties: user property key -> field.
        json_field: the field holding each record as JSON text (a line of ``ReadFromText``),
            parsed as the Python backfill parses its input. Default: the row's fields are the record.
        error_handling: ``{output: NAME}``: failed rows go to output NAME.

    With ``schema``, each record is checked against it type by type, as the Python backfill
    checks its input (a map must arrive as a map, a long as a long: Beam's ``ReadFromJson``
    hands over a map as text and a ``*_at`` field as a timestamp), and a record that does not fit
    goes to the error output naming the field, never to the service.
    """

    NAME = "WriteToTdmqMqtt"
    EXTRA = [("topic", str), ("message_id", Optional[str]), ("attempts", int)]  # noqa: UP045

    def __init__(
        self,
        *,
        schema: Optional[str] = None,  # noqa: UP045 (Beam YAML reads typing.Optional)
        mapping_file: Optional[str] = None,  # noqa: UP045
        topic: Optional[str] = None,  # noqa: UP045
        payload_field: Optional[str] = None,  # noqa: UP045
        payload_fields: Optional[list[str]] = None,  # noqa: UP045
        roles: Optional[dict[str, str]] = None,  # noqa: UP045
        user_properties: Optional[dict[str, str]] = None,  # noqa: UP045
        json_field: Optional[str] = None,  # noqa: UP045
        error_handling: Optional[dict[str, str]] = None,  # noqa: UP045
        **keys: Any,
    ) -> None:
        # Built now, so that a key that cannot work is reported when the pipeline is built.
        loaded = load_schema(schema) if schema is not None else None  # read once, for the check and the mapping
        self._record_check = RecordCheck(loaded) if loaded is not None else None
        self._json_field = json_field
        settings = _message_settings(keys)
        write = WriteToTdmqMqtt(
            _connection(keys),
            mapping=_mapping(loaded, mapping_file, topic, payload_field, payload_fields, roles, user_properties),
            **settings,
        )
        super().__init__(write, error_handling)

    def prepared(self, rows: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection | None]:
        if self._record_check is None and self._json_field is None:
            return rows, None
        checked = rows | "CheckRecords" >> beam.ParDo(_CheckRows(self._record_check, self._json_field)).with_outputs(
            "failed", main="records"
        )
        return checked.records, checked.failed

    def to_row(self) -> Callable[[Any], beam.Row]:
        return _published_row


def _mapping(
    schema: Optional[Mapping[str, Any]],  # noqa: UP045 (the schema, loaded)
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


@_takes_cloud_keys
@_takes_connection_keys
class YamlEnrichWithClientStatus(_YamlCallTransform):
    """Adds to each row whether its MQTT client is online (and, with cloud API keys, its details).

    Outputs the rows with ``online`` (false for a client the service does not
    know: the status API does not tell them apart) and, with ``secret_id``,
    ``client`` (the client's details, null for a client the service does not
    know); with ``error_handling``, the rows whose lookup failed.

    With ``source: events`` or ``events+query``, the status comes from client
    events (``ReadClientEvents``): give two inputs, ``input: {rows: ..., events:
    ...}``, the rows to enrich and the events.

    Args:
        client_id_field: the field holding the client id. Default: client_id.
        status_ttl: seconds an online status stays cached. Default: 5.
        details_ttl: seconds client details stay cached. Default: 60.
        negative_ttl: seconds an unknown client stays cached. Default: 30.
        source: query, events or events+query (docs/client-events.md). Default: query.
        staleness: events+query: seconds after which a client's events are asked. Default: 600.
        offline_expiry: events: seconds an offline client is remembered. Default: 86400.
        error_handling: ``{output: NAME}``: rows whose lookup failed go to output NAME.
    """

    NAME = "EnrichWithClientStatus"
    EXTRA = [("online", Optional[bool])]  # noqa: UP045 (None: the lookup failed, or unknown to the events)

    def __init__(
        self,
        *,
        client_id_field: str = "client_id",
        status_ttl: float = 5.0,
        details_ttl: float = 60.0,
        negative_ttl: float = 30.0,
        source: str = "query",
        staleness: float = 600.0,
        offline_expiry: float = DEFAULT_OFFLINE_EXPIRY,
        error_handling: Optional[dict[str, str]] = None,  # noqa: UP045
        **keys: Any,
    ) -> None:
        cloud = _cloud(keys)
        self._with_details = cloud is not None
        self._source = source
        self._options: dict[str, Any] = dict(
            client_id=client_id_field, status_ttl=status_ttl, details_ttl=details_ttl, negative_ttl=negative_ttl
        )
        self._events_options: dict[str, Any] = dict(source=source, staleness=staleness, offline_expiry=offline_expiry)
        connection = _connection(keys)
        # Built now for the query source (and to check every option); again in expand with the events.
        enrich = EnrichWithClientStatus(connection, cloud, **self._options)
        check_source(source, with_cloud=cloud is not None)
        self._connection_value = connection
        super().__init__(enrich, error_handling)

    def expand(self, inputs: Any) -> Any:
        if self._source == "query":
            if isinstance(inputs, Mapping):
                raise ConfigurationError("EnrichWithClientStatus takes one input with source query")
            return super().expand(inputs)
        if not isinstance(inputs, Mapping) or set(inputs) != {"rows", "events"}:
            raise ConfigurationError(
                f"EnrichWithClientStatus with source {self._source!r} takes two inputs: "
                "input: {rows: <the rows to enrich>, events: <ReadClientEvents>}"
            )
        events = inputs["events"] | "AsClientEvents" >> beam.Map(_as_client_event).with_output_types(ClientEvent)
        self._inner = EnrichWithClientStatus(
            self._connection_value, **self._options, **self._events_options, events=events
        )
        return super().expand(inputs["rows"])

    def extra_fields(self) -> list[tuple[str, Any]]:
        return self.EXTRA + ([("client", Optional[ClientRow])] if self._with_details else [])  # noqa: UP045

    def to_row(self) -> Callable[[Any], beam.Row]:
        return _enriched_row_with_client if self._with_details else _enriched_row


@_takes_connection_keys
class YamlSetClientKeepAlive(_YamlCallTransform):
    """Sets each row's client's keep-alive through the keep-alive API.

    Outputs the rows with ``keepalive`` (the seconds now set) added; with
    ``error_handling``, the rows that failed.

    Args:
        client_id_field: the field holding the client id. Default: client_id.
        interval_field: the field holding the keep-alive seconds (30..1200). Default: interval.
        interval: one keep-alive for every row, instead of ``interval_field``.
        error_handling: ``{output: NAME}``: failed rows go to output NAME.
    """

    NAME = "SetClientKeepAlive"
    EXTRA = [("keepalive", int)]

    def __init__(
        self,
        *,
        client_id_field: str = "client_id",
        interval_field: str = "interval",
        interval: Optional[int] = None,  # noqa: UP045
        error_handling: Optional[dict[str, str]] = None,  # noqa: UP045
        **connection: Any,
    ) -> None:
        keepalive = SetClientKeepAlive(
            _connection(connection),
            client_id=client_id_field,
            interval=interval if interval is not None else interval_field,
        )
        super().__init__(keepalive, error_handling)

    def to_row(self) -> Callable[[Any], beam.Row]:
        return _updated_row


@_takes_cloud_keys
@_takes_connection_keys
class YamlReadFromTdmqMqtt(beam.PTransform):
    """Reads MQTT messages at least once (acknowledged after Beam commits them), as rows.

    Outputs ``ReceivedMessage`` rows: topic, payload, qos, retained, dup,
    user_properties, content_type, payload_format_indicator, response_topic,
    correlation_data, message_expiry_interval, receive_time.

    Args:
        mqtt_endpoint: the MQTT access point, ``mqtt://host:1883`` or ``mqtts://host:8883``.
        topics: topic filters to read.
        client_id_prefix: readers are PREFIX-0, PREFIX-1, ...; keep it stable to resume sessions.
        share_group: shared subscription group splitting messages among readers. Default: none.
        num_readers: parallel readers (needs share_group). Default: 1.
        qos: subscription QoS. Default: 1.
        mqtt_version: 5, or 4 for MQTT 3.1.1. Default: 5.
        session_expiry_interval: seconds the broker keeps a reader's session. Default: 86400.
        max_records: stop after this many messages. Default: unbounded.
        max_read_time: stop after this many seconds. Default: unbounded.
        deduplicate_window: drop repeated idempotency-key user properties within this many seconds.
        backlog_interval: seconds between polls of the shared subscription's backlog, with the cloud
            API keys (which report it as the gauge backlog_messages and size the read by it). Default: 30.
    """

    def __init__(
        self,
        *,
        mqtt_endpoint: str,
        topics: list[str],
        client_id_prefix: str,
        share_group: Optional[str] = None,  # noqa: UP045
        num_readers: int = 1,
        qos: int = 1,
        mqtt_version: int = 5,
        session_expiry_interval: int = 86400,
        max_records: Optional[int] = None,  # noqa: UP045
        max_read_time: Optional[float] = None,  # noqa: UP045
        deduplicate_window: Optional[float] = None,  # noqa: UP045
        backlog_interval: float = 30.0,
        **connection: Any,
    ) -> None:
        super().__init__()
        cloud = _cloud(connection)
        self._read = ReadFromTdmqMqtt(
            _connection({**connection, "mqtt_endpoint": mqtt_endpoint}), list(topics), cloud=cloud,
            backlog_interval=backlog_interval,
            client_id_prefix=client_id_prefix, share_group=share_group, num_readers=num_readers, qos=qos,
            mqtt_version=mqtt_version, session_expiry_interval=session_expiry_interval, max_records=max_records,
            max_read_time=max_read_time, deduplicate_window=deduplicate_window,
        )  # fmt: skip

    def expand(self, pbegin: Any) -> beam.PCollection[ReceivedMessage]:
        return pbegin | "Read" >> self._read


def _as_client_event(row: Any) -> ClientEvent:
    """A `ClientEvent` from a row with its fields (YAML may hand the events over as plain Rows)."""
    if isinstance(row, ClientEvent):
        return row
    return ClientEvent(**{name: getattr(row, name) for name in ClientEvent._fields})


@_takes_connection_keys
class YamlReadClientEvents(beam.PTransform):
    """Reads the client events the service publishes ($events/...), as ``ClientEvent`` rows.

    Outputs rows: client_id, event, timestamp (the event's own time, also the
    element's event time), username, reason, fields (the whole event as JSON
    text), receive_time; with ``error_handling``, the messages that are not
    valid events (not JSON, no client id, no time), as error rows whose
    ``element`` is JSON text.

    Args:
        mqtt_endpoint: the MQTT access point, ``mqtt://host:1883`` or ``mqtts://host:8883``.
        events: the events to read. Default: [client_connected, client_disconnected].
        client_id_prefix: the readers are PREFIX-0, ...; one per pipeline. Default: tdmq-beam-events.
        share_group: shared subscription group splitting the events among readers. Default: none.
        num_readers: parallel readers (needs share_group). Default: 1.
        event_time_delay: seconds an event may come late and still be on time. Default: 5.
        max_records: stop after this many events. Default: unbounded.
        max_read_time: stop after this many seconds. Default: unbounded.
        error_handling: ``{output: NAME}``: messages that are not events go to output NAME.
    """

    def __init__(
        self,
        *,
        mqtt_endpoint: str,
        events: Optional[list[str]] = None,  # noqa: UP045
        client_id_prefix: str = "tdmq-beam-events",
        share_group: Optional[str] = None,  # noqa: UP045
        num_readers: int = 1,
        event_time_delay: float = 5.0,
        max_records: Optional[int] = None,  # noqa: UP045
        max_read_time: Optional[float] = None,  # noqa: UP045
        error_handling: Optional[dict[str, str]] = None,  # noqa: UP045
        **connection: Any,
    ) -> None:
        super().__init__()
        self._error_handling = _checked_error_handling(error_handling)
        self._read = ReadClientEvents(
            _connection({**connection, "mqtt_endpoint": mqtt_endpoint}),
            events=tuple(events) if events is not None else STATUS_EVENTS,
            client_id_prefix=client_id_prefix, share_group=share_group, num_readers=num_readers,
            event_time_delay=event_time_delay, max_records=max_records, max_read_time=max_read_time,
        )  # fmt: skip

    def expand(self, pbegin: Any) -> Any:
        read = pbegin | "ReadClientEvents" >> self._read
        errors = read.failed | "ErrorRows" >> beam.Map(_json_error_row).with_output_types(
            RowTypeConstraint.from_fields(_ERROR_FIELDS_JSON)
        )
        return _with_errors({"events": read.events}, errors, self._error_handling)


class YamlTrackClientStatus(beam.PTransform):
    """Each client's status from its events (the output of ``ReadClientEvents``), kept in Beam state.

    Outputs a ``TrackedStatus`` row (client_id, online, since, reason, username)
    when a client is first seen and each time it flips; events are ordered by
    their own time, so a late, older event changes nothing.

    Args:
        offline_expiry: seconds of event time after which an offline client is forgotten. Default: 86400.
    """

    def __init__(self, *, offline_expiry: float = DEFAULT_OFFLINE_EXPIRY) -> None:
        super().__init__()
        self._track = TrackClientStatus(offline_expiry=offline_expiry)

    def expand(self, events: beam.PCollection) -> beam.PCollection[TrackedStatus]:
        return (
            events
            | "AsClientEvents" >> beam.Map(_as_client_event).with_output_types(ClientEvent)
            | "Track" >> self._track
        )


@_takes_cloud_keys
class YamlReadTdmqMessageHistory(beam.PTransform):
    """Reads the messages the service stored on a topic filter over a time range, as rows (a bounded source).

    Outputs ``ReceivedMessage`` rows (those of ``ReadFromTdmqMqtt``, with
    ``message_id``, and the store time as ``receive_time``), or with
    ``with_details: false`` ``StoredMessageInfo`` rows (message_id, topic,
    client_id, qos, store_time); with ``error_handling``, what could not be read,
    as error rows whose ``element`` is JSON text (the time range, or the message).

    Args:
        topic_filter: a topic or a topic filter.
        start: the range's start, included: ISO 8601 with its zone, e.g. '2026-12-01T00:00:00Z'.
        end: the range's end, excluded, alike; not in the future.
        with_details: each message whole (one call a message), or only listed. Default: true.
        slice_duration: seconds of the range each parallel slice covers. Default: 3600.
        page_size: messages per listing call, 1..1024. Default: 1024.
        error_handling: ``{output: NAME}``: what could not be read goes to output NAME.
    """

    def __init__(
        self,
        *,
        topic_filter: str,
        start: str,
        end: str,
        with_details: bool = True,
        slice_duration: float = 3600.0,
        page_size: int = 1024,
        error_handling: Optional[dict[str, str]] = None,  # noqa: UP045
        **keys: Any,
    ) -> None:
        super().__init__()
        cloud = _cloud_only(keys)
        self._error_handling = _checked_error_handling(error_handling)
        self._read = ReadTdmqMessageHistory(
            cloud, topic_filter, start=_instant("start", start), end=_instant("end", end),
            with_details=with_details, slice_duration=slice_duration, page_size=page_size,
        )  # fmt: skip

    def expand(self, pbegin: Any) -> Any:
        messages, failed = pbegin | "ReadHistory" >> self._read
        errors = failed | "ErrorRows" >> beam.Map(_json_error_row).with_output_types(
            RowTypeConstraint.from_fields(_ERROR_FIELDS_JSON)
        )
        return _with_errors({"messages": messages}, errors, self._error_handling)


@_takes_cloud_keys
class YamlVerifyStoredMessages(_YamlCallTransform):
    """Checks that the service stored each row's message (the output of ``WriteToTdmqMqtt``), by its id.

    Outputs ``verified``: the rows the service stored, with ``store_time`` (Unix
    ms) added; ``missing``: the rows it does not hold (or holds under another
    topic), with ``reason``; with ``error_handling``, the rows that could not
    be checked. One call per row, within ``cloud_rate``.

    Args:
        message_id_field: the field holding the message id. Default: message_id.
        topic_field: the field holding the topic it was published to. Default: topic.
        check_topic: a message stored under another topic is missing. Default: true.
        error_handling: ``{output: NAME}``: rows that could not be checked go to output NAME.
    """

    NAME = "VerifyStoredMessages"
    EXTRA = [("store_time", int)]
    OTHER_OUTPUTS = {"missing": ([("reason", str)], _missing_row)}

    def __init__(
        self,
        *,
        message_id_field: str = "message_id",
        topic_field: Optional[str] = "topic",  # noqa: UP045
        check_topic: bool = True,
        error_handling: Optional[dict[str, str]] = None,  # noqa: UP045
        **keys: Any,
    ) -> None:
        cloud = _cloud_only(keys)
        verify = VerifyStoredMessages(
            cloud,
            message_id=message_id_field,
            topic=topic_field,
            check_topic=check_topic,
        )
        super().__init__(verify, error_handling)

    def to_row(self) -> Callable[[Any], beam.Row]:
        return _verified_row
