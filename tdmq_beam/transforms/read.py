"""`ReadFromTdmqMqtt`: an unbounded source of MQTT messages, acknowledged only after Beam commits them.

The public transform: its options, checked here, and its expansion. The layers
under it: `mqtt_source` (Beam's `UnboundedSource`, reader and checkpoint mark),
`session_pool` (the process's sessions), `tdmq_beam.service.subscriber` (the
MQTT session, no Beam) and `tdmq_beam.mqtt.ack_ledger` (the acknowledgement
rules, no I/O). De-duplication is `DeduplicateMessages`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.transforms.display import DisplayDataItem

from tdmq_beam.errors import ConfigurationError
from tdmq_beam.mqtt.topics import topic_filter_error
from tdmq_beam.option_checks import (
    flag,
    instance_of,
    int_in_range,
    non_empty_text,
    non_negative,
    one_of,
    optional,
    positive,
    positive_int,
)
from tdmq_beam.records.received_message import ReceivedMessage
from tdmq_beam.rules.limits import MAX_PACKET_SIZE, MAX_UINT32
from tdmq_beam.service.backlog_watch import BacklogSettings
from tdmq_beam.service.cloud_api import CloudApiConfig
from tdmq_beam.service.connection import TdmqConnection
from tdmq_beam.service.subscriber import DEFAULT_MAX_PACKET_SIZE
from tdmq_beam.transforms.deduplicate import DeduplicateMessages
from tdmq_beam.transforms.mqtt_source import IDLE_WAIT, MqttSource, ReadSpec
from tdmq_beam.transforms.sized_read import ReadSizedUnboundedSource

__all__ = ["ReadFromTdmqMqtt"]


class ReadFromTdmqMqtt(beam.PTransform):
    """Reads MQTT messages from a TDMQ for MQTT instance, at least once.

    A message is acknowledged to the broker only after the runner has committed
    the bundle that holds it (Beam's bundle finalization), in the order
    received. Sessions are persistent (clean start off, ``session_expiry_interval``)
    and reader *i* always has client id ``{client_id_prefix}-{i}``: a restarted
    pipeline, or a reader rescheduled to another worker, resumes its session
    and the broker sends again everything not acknowledged, flagged ``dup``.

    The output is a PCollection of `ReceivedMessage` (a schema'd NamedTuple:
    Beam SQL and YAML see Rows), timestamped by ``timestamp_fn`` or the receive
    time. The watermark follows the clock while topics are quiet, so windows close.

    Args:
        connection: the instance; needs ``mqtt_endpoint`` (``mqtts://`` for TLS
            with the connection's CA and client certificate). Username and
            password go in CONNECT.
        topics: a topic filter or a list of them (wildcards allowed; at most 30
            per client on the service).
        client_id_prefix: the readers' client ids are ``{prefix}-0`` ... Keep it
            stable across runs: that is how a run resumes the last one's sessions.
            Two pipelines must not share it.
        share_group: subscribe through ``$share/{share_group}/{filter}`` so that the
            broker splits the messages among the readers (and other members of the
            group). Defaults to None: every reader would get every message, so
            only one reader is allowed.
        num_readers: parallel readers, with ``share_group``. Defaults to 1.
        qos: the subscriptions' QoS: 0 (no acknowledgement: at most once), 1 or 2.
            Defaults to 1.
        mqtt_version: 5 (default) or 4 (MQTT 3.1.1: no properties, and the service
            holds at most 16 unacknowledged messages per reader).
        session_expiry_interval: seconds the broker keeps a reader's session (and
            its messages) after it disconnects (MQTT 5). Defaults to 86400.
        max_records: stop after this many messages in total (each reader reads its
            share: ``max_records`` split evenly). Defaults to None (unbounded).
        max_read_time: stop after this many seconds. Defaults to None (unbounded).
        timestamp_fn: the event time of a message (a `Timestamp`, or Unix seconds);
            defaults to the receive time.
        event_time_delay: seconds by which event times (from ``timestamp_fn``) may
            trail the receive time; the watermark is held back that much. Defaults to 0.
        deduplicate_window: drop a message whose ``idempotency-key`` user property
            (what `WriteToTdmqMqtt` adds with ``idempotency_key``) was seen within this
            many seconds of event time (state per key, forgotten once the watermark
            passes). Messages without the property pass. Defaults to None (no
            de-duplication).
        idempotency_property: the user property ``deduplicate_window`` reads.
            Defaults to ``idempotency-key``.
        keepalive: MQTT keep-alive seconds. Defaults to 60.
        receive_maximum: unacknowledged messages the broker may send each reader
            (MQTT 5). Defaults to 65535, so bundles, not the window, pace the read.
        max_packet_size: the largest MQTT packet (a message with its topic and
            properties) a reader takes, in bytes, sent to the broker as Maximum Packet
            Size (MQTT 5): a broker then discards a larger message for the reader, as
            the standard says, rather than send it; a broker that sends one anyway
            (MQTT 3.1.1 has no such limit to send) breaks the read with an error that
            names this option. Defaults to 16 MiB. A reader's queue is bounded in bytes
            too (64 MiB), beside its bundles.
        max_records_per_bundle: a bundle ends after this many messages. Defaults to 10000.
        max_bundle_time: a bundle ends after this many seconds. Defaults to 1.
        end_sessions: when a bounded read (``max_records``, ``max_read_time``) ends,
            each reader's last DISCONNECT sets its session expiry to 0, so the broker
            ends the session at once, with its subscriptions and whatever it still
            holds for it beyond what was read. For readers that stop for good, such
            as those a smaller ``num_readers`` leaves behind: a broker may otherwise
            keep them in a shared group's rotation (mosquitto does) until they
            expire. MQTT 5 only. Defaults to False.
        cloud: cloud API credentials, with ``share_group``: each worker process polls the
            shared subscription's backlog (``DescribeSharedSubscriptionLag``) every
            ``backlog_interval`` seconds, reports it as the gauges ``backlog_messages`` (the
            subscription's) and ``split_backlog_bytes`` (a reader's share, at the mean
            payload size read), and sizes the read's restrictions with the latter, which is
            what runners that scale streaming jobs on backlog (Dataflow) read. Defaults to
            None (no backlog: Beam sizes each restriction 1).
        backlog_interval: seconds between backlog polls per worker process, with ``cloud``
            (each poll is one call per topic filter, within the cloud API's rate).
            Defaults to 30.

    Raises:
        ConfigurationError: a setting that cannot work, naming it.
    """

    def __init__(
        self,
        connection: TdmqConnection,
        topics: str | Sequence[str],
        *,
        client_id_prefix: str,
        share_group: str | None = None,
        num_readers: int = 1,
        qos: int = 1,
        mqtt_version: int = 5,
        session_expiry_interval: int = 86400,
        max_records: int | None = None,
        max_read_time: float | None = None,
        timestamp_fn: Callable[[ReceivedMessage], Any] | None = None,
        event_time_delay: float = 0.0,
        deduplicate_window: float | None = None,
        idempotency_property: str = "idempotency-key",
        keepalive: int = 60,
        receive_maximum: int = 65535,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        max_records_per_bundle: int = 10000,
        max_bundle_time: float = 1.0,
        end_sessions: bool = False,
        cloud: CloudApiConfig | None = None,
        backlog_interval: float = 30.0,
    ) -> None:
        super().__init__()
        instance_of("connection", connection, TdmqConnection)
        connection.mqtt_address()  # raises when there is no mqtt_endpoint
        filters = (topics,) if isinstance(topics, str) else tuple(topics)
        if not filters:
            raise ConfigurationError("topics must name at least one topic filter")
        for topic_filter in filters:
            if not isinstance(topic_filter, str) or (problem := topic_filter_error(topic_filter)):
                raise ConfigurationError(f"topics: {topic_filter!r} is not a valid topic filter ({problem})")
            if topic_filter.startswith("$share/"):
                raise ConfigurationError(f"topics: give the group as share_group=, not in {topic_filter!r}")
        if len(filters) > 30:
            raise ConfigurationError(f"topics: the service allows 30 topic filters per client, got {len(filters)}")
        non_empty_text("client_id_prefix", client_id_prefix, max_length=100)
        if share_group is not None and set("/+#") & set(non_empty_text("share_group", share_group)):
            raise ConfigurationError(f"share_group must be a name without '/', '+' or '#', got {share_group!r}")
        positive_int("num_readers", num_readers)
        if num_readers > 1 and share_group is None:
            raise ConfigurationError(
                "num_readers > 1 needs share_group: without a shared subscription every reader gets every message"
            )
        one_of("qos", qos, (0, 1, 2))
        one_of("mqtt_version", mqtt_version, (5, 4))
        int_in_range("session_expiry_interval", session_expiry_interval, 1, MAX_UINT32, unit=" seconds")
        if max_records is not None and positive_int("max_records", max_records) < num_readers:
            raise ConfigurationError(f"max_records must be at least num_readers ({num_readers}), got {max_records}")
        optional(positive, "max_read_time", max_read_time, unit=" seconds")
        if timestamp_fn is not None and not callable(timestamp_fn):
            raise ConfigurationError("timestamp_fn must be callable")
        non_negative("event_time_delay", event_time_delay, unit=" seconds")
        optional(positive, "deduplicate_window", deduplicate_window, unit=" seconds")
        non_empty_text("idempotency_property", idempotency_property)
        int_in_range("keepalive", keepalive, 1, 65535, unit=" seconds")
        int_in_range("receive_maximum", receive_maximum, 1, 65535)
        int_in_range("max_packet_size", max_packet_size, 1024, MAX_PACKET_SIZE, unit=" bytes")
        positive_int("max_records_per_bundle", max_records_per_bundle)
        positive("max_bundle_time", max_bundle_time, unit=" seconds")
        flag("end_sessions", end_sessions)
        if end_sessions and (max_records is None and max_read_time is None):
            raise ConfigurationError("end_sessions applies when a read ends: give max_records or max_read_time")
        if end_sessions and mqtt_version != 5:
            raise ConfigurationError("end_sessions needs mqtt_version 5 (MQTT 3.1.1 cannot end sessions so)")
        optional(instance_of, "cloud", cloud, CloudApiConfig)
        positive("backlog_interval", backlog_interval, unit=" seconds")
        if cloud is not None and share_group is None:
            raise ConfigurationError("cloud (for the backlog) needs share_group: the service reports the backlog "
                                     "of shared subscriptions only")  # fmt: skip
        if share_group is not None:
            filters = tuple(f"$share/{share_group}/{topic_filter}" for topic_filter in filters)
        self._spec = ReadSpec(
            connection=connection,
            filters=filters,
            client_id_prefix=client_id_prefix,
            num_readers=num_readers,
            qos=qos,
            protocol_level=mqtt_version,
            session_expiry_interval=session_expiry_interval,
            keepalive=keepalive,
            receive_maximum=receive_maximum,
            max_packet_size=max_packet_size,
            max_records=max_records,
            max_read_time=max_read_time,
            timestamp_fn=timestamp_fn,
            event_time_delay=float(event_time_delay),
            end_sessions=end_sessions,
            backlog=BacklogSettings(cloud, filters, float(backlog_interval)) if cloud is not None else None,
        )
        self._deduplicate_window = deduplicate_window
        self._idempotency_property = idempotency_property
        self._max_records_per_bundle = max_records_per_bundle
        self._max_bundle_time = float(max_bundle_time)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[ReceivedMessage]:
        messages = pbegin | "Read" >> ReadSizedUnboundedSource(
            MqttSource(self._spec),
            poll_interval=IDLE_WAIT,
            max_records_per_bundle=self._max_records_per_bundle,
            max_read_time_seconds=self._max_bundle_time,
        )
        messages.element_type = ReceivedMessage
        # A read with max_records or max_read_time ends: downstream may treat it as bounded (file
        # sinks, global-window aggregations), as Java's BoundedReadFromUnboundedSource does.
        messages.is_bounded = self._spec.max_records is not None or self._spec.max_read_time is not None
        if self._deduplicate_window is None:
            return messages
        return messages | DeduplicateMessages(self._deduplicate_window, idempotency_property=self._idempotency_property)

    def display_data(self) -> dict[str, Any]:
        spec = self._spec
        items: dict[str, Any] = dict(spec.connection.display_data())
        items.update(
            topic_filters=", ".join(spec.filters),
            client_id_prefix=spec.client_id_prefix,
            num_readers=spec.num_readers,
            qos=spec.qos,
            mqtt_version=spec.protocol_level,
            session_expiry_interval=spec.session_expiry_interval,
        )
        if spec.end_sessions:
            items["end_sessions"] = True
        if spec.backlog is not None:
            items.update(backlog_from=spec.backlog.cloud.instance_id, backlog_interval=spec.backlog.interval)
        for key in ("max_records", "max_read_time"):
            if getattr(spec, key) is not None:
                items[key] = getattr(spec, key)
        if self._deduplicate_window is not None:
            items["deduplicate_window"] = self._deduplicate_window
        return {
            key: DisplayDataItem(
                value if isinstance(value, (str, int, float, bool)) else repr(value),
                label=key.replace("_", " ").capitalize(),
            )
            for key, value in items.items()
        }
