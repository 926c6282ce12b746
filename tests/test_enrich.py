"""EnrichWithClientStatus, the Enrichment handler and SetClientKeepAlive, on the emulator."""

from __future__ import annotations

import json
import time

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.transforms.enrichment import Enrichment
from beam_helpers import MULTI_PROCESS, read_json_lines

from tdmq_beam import (
    Batching,
    ClientStatus,
    EnrichWithClientStatus,
    RetryPolicy,
    SetClientKeepAlive,
    TdmqClient,
    TdmqClientStatusHandler,
)
from tdmq_beam.service.status_lookup import LookupSettings, StatusLookup
from tdmq_beam.testing import TdmqEmulator

FAST_RETRY = RetryPolicy(max_attempts=20, initial_backoff=0.05, max_backoff=0.3)


@pytest.fixture(scope="module")
def fleet():
    """An emulator with 6 online clients (one with subscriptions) and 4 offline persistent sessions."""
    with TdmqEmulator(cloud_rate=1000) as emu, emu.simulated_clients() as devices:
        devices.online("on-0", subscriptions=["devices/on-0/commands", "broadcast/#"], keepalive=90)
        for index in range(1, 6):
            devices.online(f"on-{index}")
        for index in range(4):
            devices.offline(f"off-{index}", subscriptions=[f"devices/off-{index}/commands"])
        yield emu


def events(ids, repeat=1):
    return [{"client_id": client_id, "seq": n} for n in range(repeat) for client_id in ids]


def run_enrich(build, tmp_path, *args):
    out = str(tmp_path / "enriched.jsonl")
    failed = str(tmp_path / "failed.jsonl")
    with beam.Pipeline(options=PipelineOptions(list(args))) as pipeline:
        result = build(pipeline)
        (
            result.enriched
            | "E" >> beam.Map(json.dumps, default=str)
            | "WE" >> beam.io.WriteToText(out, shard_name_template="")
        )
        (
            result.failed
            | "F" >> beam.Map(lambda f: json.dumps(f.as_dict()))
            | "WF" >> beam.io.WriteToText(failed, shard_name_template="")
        )
    return read_json_lines(out), read_json_lines(failed)


def test_status_and_details_for_online_offline_and_unknown(fleet, tmp_path):
    ids = ["on-0", "on-3", "off-1", "ghost-1"]
    enrich = EnrichWithClientStatus(fleet.connection(), fleet.cloud_config())
    enriched, failed = run_enrich(lambda p: p | beam.Create(events(ids)) | enrich, tmp_path)
    assert failed == []
    by_id = {record["client_id"]: record for record in enriched}
    assert {k: v["online"] for k, v in by_id.items()} == {"on-0": True, "on-3": True, "off-1": False, "ghost-1": False}
    online = by_id["on-0"]["client"]
    assert online["connection_status"] == "CONNECTED" and online["keepalive"] == 90
    assert online["protocol_version"] == 4 and online["clean_session"] is True
    assert [s["topic_filter"] for s in online["subscriptions"]] == ["devices/on-0/commands", "broadcast/#"]
    assert online["connect_time"] > 0 and online["disconnect_time"] == 0
    offline = by_id["off-1"]["client"]
    assert offline["connection_status"] == "DISCONNECTED" and offline["clean_session"] is False
    assert offline["disconnect_time"] >= offline["connect_time"] > 0
    assert offline["subscriptions"] == [{"topic_filter": "devices/off-1/commands", "qos": 1}]
    assert by_id["ghost-1"]["client"] is None
    assert by_id["on-0"]["seq"] == 0  # the element's own fields stay


def test_rows_pairs_and_custom_join(fleet):
    with beam.Pipeline(options=PipelineOptions([])) as pipeline:
        rows = pipeline | "Rows" >> beam.Create([beam.Row(client_id="on-1", n=1), beam.Row(client_id="off-2", n=2)])
        enriched_rows = (
            rows | "EnrichRows" >> EnrichWithClientStatus(fleet.connection(), fleet.cloud_config())
        ).enriched
        assert_that(
            enriched_rows | beam.Map(lambda r: (r.client_id, r.n, r.online, r.client.connection_status)),
            equal_to([("on-1", 1, True, "CONNECTED"), ("off-2", 2, False, "DISCONNECTED")]),
            label="Rows",
        )
        ids = pipeline | "Ids" >> beam.Create(["on-2", "ghost"])
        pairs = (ids | "Pairs" >> EnrichWithClientStatus(fleet.connection(), client_id=lambda s: s)).enriched
        assert_that(
            pairs | beam.MapTuple(lambda element, status: (element, status.online, status.details)),
            equal_to([("on-2", True, None), ("ghost", False, None)]),
            label="Pairs",
        )
        joined = (
            pipeline
            | "Dicts" >> beam.Create([{"device": "on-4"}])
            | "Joined"
            >> EnrichWithClientStatus(
                fleet.connection(), client_id="device", join=lambda e, s: f"{e['device']}:{s.online}"
            )
        ).enriched
        assert_that(joined, equal_to(["on-4:True"]), label="Joined")


def test_n_elements_over_k_clients_make_at_most_k_calls(fleet, tmp_path):
    ids = [f"on-{i}" for i in range(6)] + [f"off-{i}" for i in range(4)] + [f"ghost-{i}" for i in range(5)]
    before = fleet.stats()["requests"]
    enrich = EnrichWithClientStatus(fleet.connection(), fleet.cloud_config(), batching=Batching(batch_size=64))
    enriched, failed = run_enrich(lambda p: p | beam.Create(events(ids, repeat=40)) | enrich, tmp_path)
    assert len(enriched) == 600 and failed == []
    after = fleet.stats()["requests"]

    def delta(api: str) -> int:
        return sum(after.get(api, {}).values()) - sum(before.get(api, {}).values())

    assert delta("status") <= len(ids)
    assert 0 < delta("cloud:DescribeClientList") <= len(ids)


def test_ttl_expiry_negative_cache_and_lru(fleet):
    settings = LookupSettings(status_ttl=0.4, details_ttl=60, negative_ttl=0.4, max_cached=3)
    with fleet.simulated_clients() as devices:
        devices.online("ttl-dev")
        lookup = StatusLookup(TdmqClient(fleet.connection(), fleet.cloud_config()), settings)
        first = lookup.client.run(lookup.lookup_batch(["ttl-dev", "ttl-ghost"]))
        assert [(s.online, s.known) for s in first] == [(True, True), (False, False)]
        assert first.stats["status_calls"] == 2 and first.stats["details_calls"] == 2
        devices.disconnect("ttl-dev")
        cached = lookup.client.run(lookup.lookup_batch(["ttl-dev", "ttl-ghost"]))
        assert cached[0].online is True  # still within the status TTL
        assert cached.stats["hits"] == 4 and cached.stats["status_calls"] == 0
        time.sleep(0.5)
        expired = lookup.client.run(lookup.lookup_batch(["ttl-dev", "ttl-ghost"]))
        assert expired[0].online is False and expired.stats["status_calls"] == 2
        assert expired.stats["details_calls"] == 1  # the unknown client's negative entry expired; the other did not
        lookup.client.run(lookup.lookup_batch(["a", "b", "c", "d"]))  # LRU: only 3 entries fit
        assert lookup.client.run(lookup.lookup_batch(["ttl-dev"])).stats["details_calls"] == 1
        lookup.client.close()


def test_in_flight_deduplication():
    with TdmqEmulator() as emu:
        lookup = StatusLookup(TdmqClient(emu.connection()), LookupSettings())
        results = lookup.client.run(lookup.lookup_batch(["same"] * 100))
        assert results.stats["status_calls"] == 1 and results.stats["hits"] == 99
        assert emu.stats()["requests"]["status"] == {"200": 1}
        lookup.client.close()


def test_cloud_request_limit_and_status_429_are_retried(tmp_path):
    # Our own cloud rate limit off, so the emulator's 5/s refuses; the retries must carry every lookup.
    patient = RetryPolicy(max_attempts=40, initial_backoff=0.1, max_backoff=1.0, deadline=60)
    with TdmqEmulator(cloud_rate=5, tps=5) as emu:
        ids = [f"ghost-{i}" for i in range(20)]
        enrich = EnrichWithClientStatus(
            emu.connection(retry=patient), emu.cloud_config(rate=None, retry=patient), batching=Batching(batch_size=64)
        )
        enriched, failed = run_enrich(lambda p: p | beam.Create(events(ids)) | enrich, tmp_path)
        assert failed == [] and len(enriched) == 20
        requests = emu.stats()["requests"]
        assert requests["cloud:DescribeClientList"]["RequestLimitExceeded"] > 0
        assert requests["status"]["429"] > 0


def test_client_side_cloud_rate_limit_avoids_refusals(tmp_path):
    with TdmqEmulator(cloud_rate=10) as emu:
        ids = [f"ghost-{i}" for i in range(25)]
        enrich = EnrichWithClientStatus(emu.connection(), emu.cloud_config(rate=8), batching=Batching(batch_size=64))
        started = time.monotonic()
        enriched, failed = run_enrich(lambda p: p | beam.Create(events(ids)) | enrich, tmp_path)
        assert failed == [] and len(enriched) == 25
        assert time.monotonic() - started >= 1.5  # 25 calls at 8/s after a burst of 8
        assert "RequestLimitExceeded" not in emu.stats()["requests"]["cloud:DescribeClientList"]


def test_failed_lookups_go_to_failed_or_pass_through_unknown(fleet, tmp_path):
    bad = fleet.connection(password="wrong", retry=RetryPolicy.none())
    records = [{"client_id": "on-1"}, {"no_id": 1}]
    enriched, failed = run_enrich(lambda p: p | beam.Create(records) | EnrichWithClientStatus(bad), tmp_path)
    assert enriched == []
    reasons = sorted((f["error_kind"], f["reason"]) for f in failed)
    assert reasons[0][0] == "authentication" and "looking up client 'on-1'" in reasons[0][1]
    assert reasons[1][0] == "invalid_record" and "field 'client_id'" in reasons[1][1]
    passing = EnrichWithClientStatus(bad, on_failure="unknown")
    enriched, failed = run_enrich(lambda p: p | beam.Create(records[:1]) | passing, tmp_path / "pass")
    assert enriched == [{"client_id": "on-1", "online": None}] and failed == []


def test_streaming_test_stream(fleet, tmp_path):
    out_path = str(tmp_path / "stream.jsonl")

    class Record(beam.DoFn):
        def process(self, element, timestamp=beam.DoFn.TimestampParam):
            with open(out_path, "a") as handle:
                handle.write(json.dumps([element["client_id"], element["online"], float(timestamp)]) + "\n")

    stream = (
        BeamTestStream()
        .advance_watermark_to(0)
        .add_elements(
            [window.TimestampedValue({"client_id": "on-1"}, 1), window.TimestampedValue({"client_id": "off-1"}, 2)]
        )
        .advance_processing_time(2)
        .add_elements([window.TimestampedValue({"client_id": "ghost"}, 12)])
        .advance_processing_time(2)
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as pipeline:
        result = (
            pipeline
            | stream
            | beam.WindowInto(window.FixedWindows(10))
            | EnrichWithClientStatus(fleet.connection(), batching=Batching(max_buffering_duration_secs=0.3))
        )
        result.enriched | beam.ParDo(Record())
    assert sorted(tuple(json.loads(line)) for line in open(out_path)) == [
        ("ghost", False, 12.0),
        ("off-1", False, 2.0),
        ("on-1", True, 1.0),
    ]


def test_multi_process_runner_and_metrics(fleet, tmp_path):
    ids = [f"on-{i}" for i in range(6)] + ["ghost"]
    enrich = EnrichWithClientStatus(fleet.connection())
    enriched, failed = run_enrich(lambda p: p | beam.Create(events(ids, repeat=20)) | enrich, tmp_path, *MULTI_PROCESS)
    assert len(enriched) == 140 and failed == []
    pipeline = beam.Pipeline(options=PipelineOptions([]))
    _ = pipeline | beam.Create(events(ids, repeat=10)) | EnrichWithClientStatus(fleet.connection())
    outcome = pipeline.run()
    outcome.wait_until_finish()
    counters = {
        m.key.metric.name: m.committed
        for m in outcome.metrics().query(MetricsFilter().with_namespace("tdmq_beam.EnrichWithClientStatus"))["counters"]
    }
    assert counters["status_calls"] == 7 and counters["misses"] == 7 and counters["hits"] == 63


def test_enrichment_handler_inside_beams_enrichment(fleet):
    handler = TdmqClientStatusHandler(fleet.connection(), fleet.cloud_config())
    assert handler.get_cache_key(beam.Row(client_id="on-1")) == "tdmq-client-status:on-1"
    with beam.Pipeline(options=PipelineOptions([])) as pipeline:
        rows = pipeline | beam.Create([beam.Row(client_id="on-1", n=1), beam.Row(client_id="off-3", n=2),
                                       beam.Row(client_id="nobody", n=3)])  # fmt: skip
        enriched = rows | Enrichment(handler)
        assert_that(
            enriched
            | beam.Map(lambda r: (r.client_id, r.n, r.online, r.client.connection_status if r.client else None)),
            equal_to([("on-1", 1, True, "CONNECTED"), ("off-3", 2, False, "DISCONNECTED"), ("nobody", 3, False, None)]),
        )


def test_keepalive_transform(fleet, tmp_path):
    with fleet.simulated_clients() as devices:
        devices.online("ka-1", keepalive=60)
        devices.online("ka-zero", keepalive=0)
        before = fleet.stats()["requests"].get("keep_alive", {})
        records = [
            {"client_id": "ka-1", "interval": 300},
            {"client_id": "ka-1", "interval": 29},
            {"client_id": "ka-1", "interval": 1201},
            {"client_id": "ka-1", "interval": 0},
            {"client_id": "ka-1", "interval": "60"},
            {"client_id": "ka-zero", "interval": 60},
            {"client_id": "off-0", "interval": 60},
        ]
        published_path = str(tmp_path / "set.jsonl")
        failed_path = str(tmp_path / "failed.jsonl")
        with beam.Pipeline(options=PipelineOptions([])) as pipeline:
            result = pipeline | beam.Create(records) | SetClientKeepAlive(fleet.connection(retry=RetryPolicy.none()))
            (
                result.updated
                | "P" >> beam.Map(lambda r: json.dumps(r.as_dict()))
                | "WP" >> beam.io.WriteToText(published_path, shard_name_template="")
            )
            (
                result.failed
                | "F" >> beam.Map(lambda r: json.dumps(r.as_dict()))
                | "WF" >> beam.io.WriteToText(failed_path, shard_name_template="")
            )
        done = read_json_lines(published_path)
        failed = {}
        for record in read_json_lines(failed_path):
            element = json.loads(record["element_json"])
            failed[element["interval"] if element["client_id"] == "ka-1" else element["client_id"]] = record
        assert [(r["client_id"], r["keepalive"]) for r in done] == [("ka-1", 300)]
        for bad in (29, 1201, 0, "60"):
            assert "30..1200" in failed[bad]["reason"] and failed[bad]["attempts"] == 0
        assert "keep-alive 0" in failed["ka-zero"]["reason"] and failed["ka-zero"]["status"] == 400
        assert "not online" in failed["off-0"]["reason"] and failed["off-0"]["attempts"] == 1
        after = fleet.stats()["requests"]["keep_alive"]
        assert sum(after.values()) - sum(before.values()) == 3  # bad intervals never reached the service
        with TdmqClient(fleet.connection(), fleet.cloud_config()) as client:
            assert client.describe_client("ka-1").keepalive == 300


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"client_id": ""}, "client_id"),
        ({"on_failure": "ignore"}, "on_failure"),
        ({"status_ttl": -1}, "status_ttl"),
        ({"max_cached": 0}, "max_cached"),
        ({"status_qps": 0}, "status_qps"),
        ({"cloud": "config"}, "CloudApiConfig"),
    ],
)
def test_enrich_configuration_errors(fleet, kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        EnrichWithClientStatus(fleet.connection(), **kwargs)


@pytest.mark.parametrize("interval", [0, 29, 1201])
def test_keepalive_fixed_interval_checked_at_construction(fleet, interval):
    with pytest.raises(ValueError, match=r"30\.\.1200"):
        SetClientKeepAlive(fleet.connection(), interval=interval)


def test_client_status_as_dict():
    assert ClientStatus("c", None).as_dict() == {"client_id": "c", "online": None, "known": None, "client": None}
