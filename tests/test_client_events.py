"""Client events: `ClientEvent` from the service's messages, the rule that orders them, `ReadClientEvents`
on the emulator (paho clients connecting, disconnecting, taken over, timing out) and on mosquitto,
`TrackClientStatus` with late and reordered events, and `EnrichWithClientStatus`'s events sources."""

from __future__ import annotations

import json
import os
import threading
import time

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.transforms.window import FixedWindows, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from beam_helpers import read_json_lines
from mqtt_peers import PahoClient, RawClient, connect5_packet
from polling import eventually

from tdmq_beam import ConfigurationError, EnrichWithClientStatus, ReadClientEvents, TdmqClient, TrackClientStatus
from tdmq_beam.records.client_event import ClientEvent, event_time
from tdmq_beam.records.payload import RecordError
from tdmq_beam.records.received_message import ReceivedMessage
from tdmq_beam.records.tracked_status import TrackedStatus, next_status

# -- the events, and the rule that orders them (no I/O) ------------------------------------


def _message(topic: str, payload, receive: float = 1_700_000_100.0) -> ReceivedMessage:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return ReceivedMessage(topic, body, 0, False, False, (), None, None, None, None, None, Timestamp.of(receive))


def _event(client_id: str, name: str, ms: int, reason: str | None = None) -> ClientEvent:
    at = Timestamp(micros=ms * 1000)
    return ClientEvent(client_id, name, at, "user0", reason, json.dumps({"clientid": client_id}), at)


CONNECTED = {
    "clientid": "dev-1", "username": "user0", "clean_start": False, "connected_at": 1_700_000_000_123,
    "event": "client.connected", "keepalive": 60, "node": "10.0.0.1:1883", "proto_ver": 5,
    "timestamp": 1_700_000_000_124, "zone": "a field the connector does not know",
}  # fmt: skip


def test_a_connected_event_is_typed_timed_by_its_own_clock_and_keeps_unknown_fields():
    event = ClientEvent.from_message(_message("$events/client_connected", CONNECTED))
    assert (event.client_id, event.event, event.username, event.reason) == ("dev-1", "client_connected", "user0", None)
    assert event.timestamp == Timestamp(micros=1_700_000_000_123_000)  # connected_at, not timestamp
    assert event.online is True
    assert (event.field("keepalive"), event.field("zone"), event.field("absent")) == (60, CONNECTED["zone"], None)
    assert event.receive_time == Timestamp.of(1_700_000_100.0)
    gone = {"clientid": "dev-1", "event": "client.disconnected", "reason": "keepalive_timeout",
            "disconnected_at": 1_700_000_050_000}  # fmt: skip
    event = ClientEvent.from_message(_message("$events/client_disconnected", gone))
    assert (event.online, event.reason, event.timestamp) == (False, "keepalive_timeout", Timestamp.of(1_700_000_050))
    subscribed = {"clientid": "dev-1", "topic": "a/b", "timestamp": 1_700_000_060_000}
    assert ClientEvent.from_message(_message("$events/session_subscribed", subscribed)).online is None


@pytest.mark.parametrize(
    ("topic", "payload", "field"),
    [
        ("$events/client_connected", b"not json", None),
        ("$events/client_connected", b"\xff\xfe", None),
        ("$events/client_connected", [1, 2], None),
        ("$events/client_connected", b"[" * 100_000, None),
        ("$events/client_connected", {"connected_at": 1}, "clientid"),
        ("$events/client_connected", {"clientid": "", "connected_at": 1}, "clientid"),
        ("$events/client_connected", {"clientid": 7, "connected_at": 1}, "clientid"),
        ("$events/client_connected", {"clientid": "d"}, "timestamp"),
        ("$events/client_connected", {"clientid": "d", "connected_at": True}, "connected_at"),
        ("$events/client_connected", {"clientid": "d", "connected_at": "1700000000"}, "connected_at"),
        ("$events/client_disconnected", {"clientid": "d", "disconnected_at": -5}, "disconnected_at"),
        ("$events/client_disconnected", {"clientid": "d", "timestamp": 1, "reason": 3}, "reason"),
        ("$events/client_exploded", {"clientid": "d", "timestamp": 1}, None),
        ("devices/d/events", {"clientid": "d", "timestamp": 1}, None),
    ],
)
def test_a_malformed_event_names_what_is_wrong(topic, payload, field):
    with pytest.raises(RecordError) as raised:
        ClientEvent.from_message(_message(topic, payload))
    assert raised.value.field == field
    assert str(raised.value)
    assert event_time(_message(topic, payload)) == Timestamp.of(1_700_000_100.0)  # the receive time then


def test_events_are_ordered_by_their_own_time_never_by_arrival():
    connected, disconnected = _event("d", "client_connected", 200), _event("d", "client_disconnected", 100, "normal")
    online = next_status(None, connected)
    assert online == TrackedStatus("d", True, Timestamp(micros=200_000), None, "user0")
    assert next_status(online, disconnected) is None  # a late disconnect does not override a newer connect
    offline = next_status(None, _event("d", "client_disconnected", 300, "normal"))
    assert next_status(offline, connected) is None  # nor a late connect a newer disconnect
    assert next_status(online, _event("d", "session_subscribed", 500)) is None  # not a status event
    # A takeover: the new connection's connect and the old one's disconnect share a millisecond.
    takeover = _event("d", "client_disconnected", 200, "takeovered")
    assert next_status(online, takeover) is None
    after_takeover = next_status(next_status(None, takeover), connected)
    assert after_takeover is not None and after_takeover.online
    # Otherwise, at the same millisecond the later arrival wins.
    assert next_status(online, _event("d", "client_disconnected", 200, "kicked")).online is False  # type: ignore[union-attr]
    newer = next_status(online, _event("d", "client_connected", 250))
    assert newer is not None and newer.since == Timestamp(micros=250_000)


# -- reading them from a broker ---------------------------------------------------------------


def _events_json(event: ClientEvent) -> str:
    fields = event._asdict()
    for name in ("timestamp", "receive_time"):
        fields[name] = fields[name].micros
    return json.dumps(fields)


def _read_events(connection, prefix: str, tmp_path, seconds: float, **options) -> tuple[list, list, list]:
    """Runs ReadClientEvents (and TrackClientStatus on its output) for ``seconds``: (events, statuses, failed)."""
    paths = {name: os.path.join(tmp_path, f"{prefix}-{name}.jsonl") for name in ("events", "status", "failed")}
    with beam.Pipeline() as pipeline:
        read = pipeline | ReadClientEvents(connection, client_id_prefix=prefix, max_read_time=seconds, **options)
        _ = read.events | "Json" >> beam.Map(_events_json) | "Events" >> beam.io.WriteToText(paths["events"])
        _ = (
            read.events
            | TrackClientStatus()
            | "StatusJson" >> beam.Map(lambda s: json.dumps({**s._asdict(), "since": s.since.micros}))
            | "Status" >> beam.io.WriteToText(paths["status"])
        )
        _ = (
            read.failed
            | "FailedJson" >> beam.Map(lambda f: json.dumps(f.as_dict()))
            | "Failed" >> beam.io.WriteToText(paths["failed"])
        )
    return tuple(read_json_lines(path) for path in paths.values())  # type: ignore[return-value]


def _in_background(target) -> tuple[threading.Thread, dict]:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", target()))
    thread.start()
    return thread, result


def _wait_subscribed(emulator, client_id: str) -> None:
    """Until the reader's SUBSCRIBE is in, as the service's DescribeMQTTClient shows it (asked
    every 0.1 s: the cloud API allows 20 requests a second)."""
    with TdmqClient(emulator.connection(), emulator.cloud_config()) as client:
        details = eventually(
            lambda: client.describe_client(client_id), until=lambda found: bool(found and found.subscriptions),
            timeout=60, every=0.1,
        )  # fmt: skip
    assert details and details.subscriptions, f"{client_id} did not subscribe"


def test_client_events_from_paho_clients_connecting_leaving_taken_over_and_timing_out(emulator, unique, tmp_path):
    prefix = unique("events")
    a, b, c, d = (unique(name) for name in ("normal", "takeover", "timeout", "v311"))
    thread, result = _in_background(lambda: _read_events(emulator.connection(), prefix, tmp_path, 12))
    _wait_subscribed(emulator, f"{prefix}-0")
    started = time.time()

    first = PahoClient(emulator.mqtt_port, a)
    first.connect()
    first.disconnect()  # normal
    old = PahoClient(emulator.mqtt_port, b)
    old.connect()
    new = PahoClient(emulator.mqtt_port, b)
    new.connect()  # takes the client id over
    old.client.reconnect_delay_set(60, 60)  # the old one stays away
    raw = RawClient(emulator.mqtt_port)
    raw.send(connect5_packet(c, keepalive=1))  # and never pings
    assert raw.read() is not None  # CONNACK
    v311 = PahoClient(emulator.mqtt_port, d, protocol=4)
    v311.connect()
    assert raw.closed_by_server(timeout=5)
    thread.join()
    new.disconnect()
    v311.disconnect()
    old.disconnect()
    events, statuses, failed = result["value"]

    assert failed == []
    seen = [(e["client_id"], e["event"], e["reason"]) for e in events if e["client_id"] in (a, b, c, d)]
    assert (a, "client_connected", None) in seen and (a, "client_disconnected", "normal") in seen
    assert (b, "client_disconnected", "takeovered") in seen and seen.count((b, "client_connected", None)) >= 2
    assert (c, "client_connected", None) in seen and (c, "client_disconnected", "keepalive_timeout") in seen
    assert (d, "client_connected", None) in seen
    for event in events:
        assert started - 1 <= event["timestamp"] / 1e6 <= event["receive_time"] / 1e6 + 0.001
        fields = json.loads(event["fields"])
        assert fields["clientid"] == event["client_id"] and "node" in fields
    assert {json.loads(e["fields"])["proto_ver"] for e in events if e["client_id"] == d and e["reason"] is None} == {4}
    # TrackClientStatus on the same events: the newest status of each client by event time.
    final = {}
    for status in sorted(statuses, key=lambda s: s["since"]):
        final[status["client_id"]] = (status["online"], status["reason"])
    assert final[a] == (False, "normal")
    assert final[b] == (True, None)  # the takeover's disconnect does not end the new connection
    assert final[c] == (False, "keepalive_timeout")
    assert final[d] == (True, None)


def test_delayed_and_reordered_events_still_give_each_client_its_newest_status(unique, tmp_path):
    from tdmq_beam.testing import TdmqEmulator

    prefix = unique("late")
    clients = [unique(f"flip{i}") for i in range(6)]
    # Each event comes up to 1.5 s late, so a client's connect and disconnect (a few ms apart)
    # often arrive the wrong way round.
    with TdmqEmulator(event_delay=1.5, event_seed=11) as emulator:
        thread, result = _in_background(lambda: _read_events(emulator.connection(), prefix, tmp_path, 8))
        _wait_subscribed(emulator, f"{prefix}-0")
        # A few ms apart: events of one millisecond have no order but their arrival (next_status).
        for client_id in clients:
            client = PahoClient(emulator.mqtt_port, client_id)
            client.connect()
            time.sleep(0.005)
            client.disconnect()
            time.sleep(0.005)
        stayed = PahoClient(emulator.mqtt_port, clients[0])
        stayed.connect()  # the first comes back and stays
        thread.join()
        stayed.disconnect()
    events, statuses, failed = result["value"]
    assert failed == []
    arrival = [e for e in sorted(events, key=lambda e: e["receive_time"]) if e["client_id"] in clients]
    assert len(arrival) == 2 * len(clients) + 1  # delayed, none lost
    assert arrival != sorted(arrival, key=lambda e: e["timestamp"]), "no event arrived out of order"
    final = {}
    for status in sorted(statuses, key=lambda s: s["since"]):
        final[status["client_id"]] = status["online"]
    assert final[clients[0]] is True
    assert all(final[client_id] is False for client_id in clients[1:])


def test_the_emulator_loses_events_when_asked_and_counts_them(unique):
    from tdmq_beam.testing import TdmqEmulator

    with TdmqEmulator(event_loss=0.5, event_seed=5) as emulator:
        watcher = PahoClient(emulator.mqtt_port, unique("watcher"))
        watcher.connect()
        watcher.subscribe("$events/#")
        for i in range(20):
            client = PahoClient(emulator.mqtt_port, unique(f"lossy{i}"))
            client.connect()
            client.disconnect()
        deadline = time.monotonic() + 10
        while True:  # until what was published has all arrived (QoS 0, so no other sign of it)
            counters = emulator.stats()["messages"]
            received = watcher.messages.qsize()
            if received >= counters["events_published"] - 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        watcher.disconnect()
    assert 0 < counters["events_lost"] < 60
    assert received == counters["events_published"] - 1  # the watcher's own connect came before it subscribed
    with pytest.raises(ConfigurationError, match="event_loss"):
        TdmqEmulator(event_loss=1.5)
    with pytest.raises(ConfigurationError, match="event_delay"):
        TdmqEmulator(event_delay=-1)


def test_client_events_on_mosquitto_with_malformed_ones_failed(mosquitto_broker, unique, tmp_path):
    """mosquitto publishes no client events; a paho client publishes the service's, and some that are not."""
    prefix = unique("events")
    connection = mosquitto_broker.connection()
    thread, result = _in_background(
        lambda: _read_events(connection, prefix, tmp_path, 6, events=("client_connected", "session_subscribed"))
    )
    deadline = time.monotonic() + 60
    while not mosquitto_broker.has_connected(f"{prefix}-0"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    publisher = PahoClient(mosquitto_broker.port, "", username="user0", password="secret0")
    publisher.connect()
    publisher.publish("$events/client_connected", json.dumps(CONNECTED).encode())
    publisher.publish("$events/client_connected", b'{"clientid": "dev-2"}')  # no time
    publisher.publish("$events/client_connected", b"<html>")
    publisher.publish("$events/session_subscribed", b'{"clientid": "dev-3", "topic": "a", "timestamp": 5}')
    publisher.publish("$events/client_disconnected", json.dumps(CONNECTED).encode())  # not subscribed
    publisher.disconnect()
    thread.join()
    events, statuses, failed = result["value"]
    assert sorted((e["client_id"], e["event"]) for e in events) == [
        ("dev-1", "client_connected"),
        ("dev-3", "session_subscribed"),
    ]
    assert [(s["client_id"], s["online"]) for s in statuses] == [("dev-1", True)]
    assert sorted(f["error_kind"] for f in failed) == ["invalid_event", "invalid_event"]
    reasons = sorted(f["reason"] for f in failed)
    assert "timestamp" in reasons[0] + reasons[1] and "not JSON" in reasons[0] + reasons[1]
    assert all(json.loads(f["element_json"])["topic"] == "$events/client_connected" for f in failed)


def test_read_client_events_refuses_what_cannot_work(emulator):
    connection = emulator.connection()
    with pytest.raises(ConfigurationError, match="unknown"):
        ReadClientEvents(connection, events=("client_exploded",))
    with pytest.raises(ConfigurationError, match="at least one"):
        ReadClientEvents(connection, events=())
    with pytest.raises(ConfigurationError, match="topics is set by ReadClientEvents"):
        ReadClientEvents(connection, topics="a/b")
    with pytest.raises(ConfigurationError, match="event_time_delay"):
        ReadClientEvents(connection, event_time_delay=-1)
    with pytest.raises(ConfigurationError, match="num_readers"):
        ReadClientEvents(connection, num_readers=True)


# -- TrackClientStatus with late and reordered events ----------------------------------------


def _streaming() -> PipelineOptions:
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return options


def _counters(result, namespace: str) -> dict[str, int]:
    counters: dict[str, int] = {}
    for metric in result.metrics().query(MetricsFilter())["counters"]:
        if metric.key.metric.namespace == namespace:
            counters[metric.key.metric.name] = counters.get(metric.key.metric.name, 0) + metric.committed
    return counters


class _AppendJson(beam.DoFn):
    """Appends each element to a JSON Lines file: streaming pipelines cannot use WriteToText unwindowed."""

    def __init__(self, path: str) -> None:
        self._path = path

    @beam.typehints.no_annotations  # emits nothing: Beam 2.78 reads '-> None' as a non-iterable output
    def process(self, element) -> None:
        with open(self._path, "a") as handle:
            handle.write(json.dumps(element) + "\n")


def _stamped(event: ClientEvent) -> TimestampedValue:
    return TimestampedValue(event, event.timestamp)


def test_track_client_status_orders_late_and_reordered_events_and_forgets_clients_long_offline(tmp_path):
    coder = beam.coders.registry.get_coder(ClientEvent)
    stream = (
        EventStream(coder=coder)
        .add_elements([_stamped(_event("a", "client_connected", 200_000))])
        .add_elements([_stamped(_event("a", "client_disconnected", 100_000, "normal"))])  # late: ignored
        .add_elements([_stamped(_event("b", "client_disconnected", 150_000, "keepalive_timeout"))])
        .add_elements([_stamped(_event("c", "client_connected", 150_000))])
        .advance_watermark_to(Timestamp.of(300))
        .add_elements([_stamped(_event("a", "client_disconnected", 250_000, "normal"))])
        .add_elements([_stamped(_event("a", "client_connected", 240_000))])  # reordered: ignored
        # b has been offline past the expiry (150 + 100 s) by now: forgotten, so this older
        # event is taken as news.
        .advance_watermark_to(Timestamp.of(400))
        .add_elements([_stamped(_event("b", "client_connected", 140_000))])
        .advance_watermark_to_infinity()
    )
    path = os.path.join(tmp_path, "status")
    pipeline = beam.Pipeline(options=_streaming())
    _ = (
        pipeline
        | stream
        | TrackClientStatus(offline_expiry=100)
        | beam.Map(lambda s: [s.client_id, s.online, s.since.micros // 1_000_000, s.reason])
        | beam.ParDo(_AppendJson(path))
    )
    result = pipeline.run()
    result.wait_until_finish()
    changes = sorted(tuple(change) for change in read_json_lines(path))
    assert changes == [
        ("a", False, 250, "normal"),
        ("a", True, 200, None),
        ("b", False, 150, "keepalive_timeout"),
        ("b", True, 140, None),
        ("c", True, 150, None),
    ]
    # (No counters here: Beam 2.77's streaming DirectRunner reports a counter from its first
    # bundle only, so they are checked in a batch run below.)


def test_track_client_status_counts_changes_and_forgets_offline_clients_in_a_batch_run():
    events = [
        _event("on", "client_connected", 100_000),
        _event("off", "client_disconnected", 100_000, "normal"),
        _event("gone", "client_disconnected", 120_000, "keepalive_timeout"),
        _event("sub", "session_subscribed", 130_000),
    ]
    pipeline = beam.Pipeline()
    _ = (
        pipeline
        | beam.Create(events)
        | beam.Map(_stamped).with_output_types(ClientEvent)
        | TrackClientStatus(offline_expiry=100)
    )
    result = pipeline.run()
    result.wait_until_finish()
    counters = _counters(result, "tdmq_beam.TrackClientStatus")
    assert counters["status_changes"] == 3  # each client first seen; the subscription is no status
    assert counters["expired_clients"] == 2  # the two offline ones, when the watermark reaches the end
    assert counters.get("stale_events", 0) == 0


def test_track_client_status_refuses_a_bad_expiry():
    for bad in (0, -1, True, "1"):
        with pytest.raises(ConfigurationError, match="offline_expiry"):
            TrackClientStatus(offline_expiry=bad)


# -- EnrichWithClientStatus from events, and from events with the query behind -----------------


def _enrich_with_events(emulator, events: list, elements: list, tmp_path, **options) -> tuple[list, list]:
    """The events first, then the elements, through EnrichWithClientStatus: (enriched, failed).

    One EventStream (Beam's TestStream) carries both, so that the elements come after the events have been taken in
    (its steps are processed in order)."""
    now = Timestamp(micros=int(time.time() * 1000) * 1000)  # TestStream takes whole milliseconds
    stream = (
        EventStream()
        .add_elements([TimestampedValue(("event", e), e.timestamp) for e in events])
        .advance_watermark_to(now)
        .add_elements([TimestampedValue(("element", e), now) for e in elements])
        .advance_watermark_to_infinity()
    )
    path = os.path.join(tmp_path, f"enriched-{options['source']}")
    failed_path = os.path.join(tmp_path, f"failed-{options['source']}")
    pipeline = beam.Pipeline(options=_streaming())
    both = pipeline | stream
    client_events = both | "Events" >> beam.FlatMap(lambda t: [t[1]] if t[0] == "event" else []).with_output_types(
        ClientEvent
    )
    records = (
        both
        | "Elements" >> beam.FlatMap(lambda t: [t[1]] if t[0] == "element" else [])
        | beam.WindowInto(FixedWindows(60))
    )
    result = records | EnrichWithClientStatus(emulator.connection(), events=client_events, **options)
    assert result.enriched.windowing.windowfn == FixedWindows(60)  # the elements' windowing, restored
    _ = result.enriched | beam.Map(json.dumps) | beam.io.WriteToText(path)
    _ = (
        result.failed
        | "FailedJson" >> beam.Map(lambda f: json.dumps(f.as_dict()))
        | "Failed" >> beam.io.WriteToText(failed_path)
    )
    pipeline.run().wait_until_finish()
    return read_json_lines(path), read_json_lines(failed_path)


def _status_calls(emulator) -> int:
    return sum(emulator.stats()["requests"].get("status", {}).values())


@pytest.mark.parametrize("source", ["events", "events+query"])
def test_enrich_from_events_answers_from_state_and_asks_the_service_only_where_events_do_not_settle(
    source, emulator, unique, tmp_path
):
    on, off, never, stale = (unique(name) for name in ("on", "off", "never", "stale"))
    now_ms = int(time.time() * 1000)
    events = [
        _event(on, "client_connected", now_ms - 10_000),
        _event(on, "client_disconnected", now_ms - 20_000, "normal"),  # late and older: ignored
        _event(off, "client_connected", now_ms - 30_000),
        _event(off, "client_disconnected", now_ms - 5_000, "keepalive_timeout"),
        _event(stale, "client_connected", now_ms - 7_200_000),  # two hours ago
    ]
    elements = [{"client_id": client, "n": n} for n, client in enumerate([on, off, never, stale, on, never])]
    elements.append({"n": 99})  # no client id
    with emulator.simulated_clients() as devices:
        devices.online(never)  # what the service knows; `stale` it knows as gone
        before = _status_calls(emulator)
        enriched, failed = _enrich_with_events(emulator, events, elements, tmp_path, source=source)
        calls = _status_calls(emulator) - before
    answers = {(e["client_id"], e["n"]): e["online"] for e in enriched}
    assert answers[(on, 0)] is True and answers[(on, 4)] is True
    assert answers[(off, 1)] is False
    assert [f["error_kind"] for f in failed] == ["invalid_record"]
    assert "field 'client_id'" in failed[0]["reason"]
    if source == "events":
        assert answers[(never, 2)] is None and answers[(never, 5)] is None  # unknown to the events
        assert answers[(stale, 3)] is True  # what the events last said, however old
        assert calls == 0
    else:
        assert answers[(never, 2)] is True and answers[(never, 5)] is True  # from the service
        assert answers[(stale, 3)] is False  # too old to trust: the service says it is gone
        assert calls == 2  # one per client the events did not settle; the cache has the second
    assert len(enriched) == 6


def test_enrich_from_events_refuses_what_cannot_work(emulator):
    connection = emulator.connection()
    pipeline = beam.Pipeline()
    events = pipeline | beam.Create([_event("d", "client_connected", 1)])
    with pytest.raises(ConfigurationError, match="needs events"):
        EnrichWithClientStatus(connection, source="events")
    with pytest.raises(ConfigurationError, match="events is for source"):
        EnrichWithClientStatus(connection, events=events)
    with pytest.raises(ConfigurationError, match="source"):
        EnrichWithClientStatus(connection, source="guess", events=events)
    with pytest.raises(ConfigurationError, match="no client details"):
        EnrichWithClientStatus(connection, emulator.cloud_config(), source="events+query", events=events)
    with pytest.raises(ConfigurationError, match="events"):
        EnrichWithClientStatus(connection, source="events", events=[_event("d", "client_connected", 1)])
    with pytest.raises(ConfigurationError, match="staleness"):
        EnrichWithClientStatus(connection, source="events+query", events=events, staleness=0)
