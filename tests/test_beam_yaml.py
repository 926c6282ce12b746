"""The connector in Beam YAML: the two example pipelines run through apache_beam.yaml.main against the
emulator, checked by an MQTT 5 subscriber; error handling, secrets and the provider listing."""

from __future__ import annotations

import datetime
import glob
import json
from pathlib import Path

import pytest
import yaml
from apache_beam.yaml import main as yaml_main

from tdmq_beam.beam_yaml import PROVIDERS_FILE
from tdmq_beam_pipelines import run_yaml as run_yaml_command

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "tdmq_beam_pipelines" / "yaml"


def run_yaml(pipeline_file: str | Path, variables: dict, monkeypatch, password: str = "secret0") -> None:
    monkeypatch.setenv("TDMQ_PASSWORD", password)
    monkeypatch.chdir(ROOT)
    yaml_main.run(argv=[f"--yaml_pipeline_file={pipeline_file}", f"--jinja_variables={json.dumps(variables)}"])


def read_json_files(prefix: str) -> list[dict]:
    return [json.loads(line) for name in sorted(glob.glob(prefix + "*")) for line in open(name) if line.strip()]


def write_pipeline(path: Path, transforms: list[dict]) -> Path:
    """A YAML pipeline of ``transforms`` with the connector's providers, written to ``path``."""
    path.write_text(
        yaml.safe_dump({"pipeline": {"transforms": transforms}, "providers": [{"include": PROVIDERS_FILE}]})
    )
    return path


def test_the_backfill_example_publishes_with_properties_and_routes_failures(emulator, paho, tmp_path, monkeypatch):
    subscriber = paho("yaml-watch")
    subscriber.subscribe("devices/#", qos=1)
    commands = [
        {"device_id": f"yaml-dev-{i}", "command_id": f"c-{i}", "command": "reboot", "params": {"delay": "5"},
         "issued_at": 1_700_000_000_000, "qos": 1, "retained": False, "expiry_seconds": 600,
         "reply_topic": f"replies/yaml-dev-{i}", "trace_id": f"t-{i}"}
        for i in range(4)
    ]  # fmt: skip
    bad = [
        {**commands[0], "device_id": "yaml-dev-#", "command_id": "c-bad-topic"},
        {**commands[0], "device_id": "yaml-dev-9", "command_id": "c-bad-qos", "qos": 7},
    ]
    source = tmp_path / "commands.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in commands + bad))
    output = str(tmp_path / "out")

    run_yaml(EXAMPLES / "backfill_device_commands.yaml",
             {"endpoint": emulator.http_url, "input": str(source), "output": output}, monkeypatch)  # fmt: skip

    received = {message.topic: message for message in subscriber.receive(4)}
    assert sorted(received) == [f"devices/yaml-dev-{i}/commands" for i in range(4)]
    message = received["devices/yaml-dev-2/commands"]
    assert json.loads(message.payload)["command"] == "reboot"
    assert message.properties.CorrelationData == b"c-2"
    assert message.properties.ResponseTopic == "replies/yaml-dev-2"
    assert ("trace-id", "t-2") in message.properties.UserProperty
    assert 590 <= message.properties.MessageExpiryInterval <= 600
    published = read_json_files(output + "-published")
    assert sorted(json.loads(row["line"])["command_id"] for row in published) == ["c-0", "c-1", "c-2", "c-3"]
    assert all(len(row["message_id"]) == 32 and row["attempts"] == 1 and row["topic"] for row in published)
    failed = {json.loads(row["line"])["command_id"]: row for row in read_json_files(output + "-failed")}
    assert set(failed) == {"c-bad-topic", "c-bad-qos"}
    assert "wildcard" in failed["c-bad-topic"]["reason"]
    assert "qos" in failed["c-bad-qos"]["reason"]
    assert json.loads(failed["c-bad-qos"]["details"])["error_kind"] == "invalid_record"


def _received_bytes(subscriber, count: int) -> list[tuple]:
    """What an MQTT 5 subscriber got, property by property (the expiry rounded: it counts down)."""
    got = []
    for message in subscriber.receive(count):
        assert message.topic.startswith("devices/parity-"), message.topic
        properties = message.properties.json()
        expiry = properties.pop("MessageExpiryInterval", None)
        got.append((message.topic, message.payload, message.qos, message.retain, json.dumps(properties),
                    None if expiry is None else round(expiry, -1)))  # fmt: skip
    assert subscriber.nothing_more()
    return sorted(got)


def test_the_yaml_backfill_publishes_what_the_python_backfill_publishes(emulator, paho, tmp_path, monkeypatch):
    from tdmq_beam_pipelines import backfill_device_commands as backfill

    commands = [
        {"device_id": f"parity-{i}", "command_id": f"p-{i}", "command": "set", "params": {"delay": "5", "mode": "eco"},
         "issued_at": 1_700_000_000_000 + i, "qos": 1, "retained": False, "expiry_seconds": 600,
         "reply_topic": f"replies/parity-{i}", "trace_id": f"t-{i}"}
        for i in range(5)
    ]  # fmt: skip
    commands.append({"device_id": "parity-min", "command_id": "p-min", "command": "ping", "issued_at": 1})  # defaults
    source = tmp_path / "commands.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in commands))
    monkeypatch.setenv("TDMQ_PASSWORD", emulator.password)
    python_side = paho("parity-python")
    python_side.subscribe("devices/+/commands", qos=1)
    service = ["--endpoint", emulator.http_url, "--username", emulator.username, "--password-env", "TDMQ_PASSWORD"]
    assert backfill.main(["--input", str(source), "--output", str(tmp_path / "py"), *service, "--quiet"]) == 0
    by_python = _received_bytes(python_side, len(commands))
    python_side.disconnect()

    yaml_side = paho("parity-yaml")
    yaml_side.subscribe("devices/+/commands", qos=1)
    variables = {"endpoint": emulator.http_url, "input": str(source), "output": str(tmp_path / "yaml")}
    run_yaml(EXAMPLES / "backfill_device_commands.yaml", variables, monkeypatch)
    by_yaml = _received_bytes(yaml_side, len(commands))
    assert by_yaml == by_python
    payload = json.loads(next(item[1] for item in by_yaml if item[0] == "devices/parity-0/commands"))
    assert payload["params"] == {"delay": "5", "mode": "eco"} and payload["issued_at"] == 1_700_000_000_000


def test_a_yaml_row_that_does_not_fit_the_schema_is_an_error_naming_the_field(emulator, tmp_path, monkeypatch):
    # Beam's ReadFromJson hands a map over as text and an *_at field as a timestamp: with the schema,
    # such rows are refused, not published with the wrong types.
    source = tmp_path / "commands.jsonl"
    source.write_text(json.dumps({"device_id": "d", "command_id": "c", "command": "x", "params": {"a": "1"},
                                  "issued_at": 1_700_000_000_000}) + "\n")  # fmt: skip
    output = tmp_path / "out"
    write_pipeline(tmp_path / "p.yaml", [
        {"type": "ReadFromJson", "name": "Read", "config": {"path": str(source)}},
        {"type": "WriteToTdmqMqtt", "name": "Publish", "input": "Read",
         "config": {"endpoint": emulator.http_url, "username": "user0", "password_env": "TDMQ_PASSWORD",
                    "schema": str(ROOT / "schemas" / "device_command.avsc"), "error_handling": {"output": "failed"}}},
        {"type": "MapToFields", "name": "Reasons", "input": "Publish.failed",
         "config": {"language": "python", "fields": {"reason": "msg"}}},
        {"type": "WriteToJson", "input": "Reasons", "config": {"path": str(output)}},
    ])  # fmt: skip
    run_yaml(tmp_path / "p.yaml", {}, monkeypatch)
    (row,) = read_json_files(str(output))
    assert row["reason"].startswith("invalid_record: does not match the schema") and "params" in row["reason"]


def test_yaml_preflight_stops_the_pipeline_with_one_line(emulator, tmp_path, monkeypatch):
    source = tmp_path / "commands.jsonl"
    source.write_text("{}\n")
    with pytest.raises(Exception, match=r"pre-flight check: .* refused the credentials \(401\): check username"):
        run_yaml(EXAMPLES / "backfill_device_commands.yaml",
                 {"endpoint": emulator.http_url, "input": str(source), "output": str(tmp_path / "o")}, monkeypatch,
                 password="wrong")  # fmt: skip


def test_the_enrichment_example_adds_online_and_filters(emulator, tmp_path, monkeypatch):
    events = [{"client_id": cid, "seq": i} for i, cid in enumerate(["yaml-on", "yaml-off", "yaml-nobody"] * 2)]
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(event) + "\n" for event in events))
    output = str(tmp_path / "enriched")
    with emulator.simulated_clients() as devices:
        devices.online("yaml-on")
        devices.offline("yaml-off")
        run_yaml(EXAMPLES / "enrich_client_status.yaml",
                 {"endpoint": emulator.http_url, "input": str(source), "output": output}, monkeypatch)  # fmt: skip
    everything = {row["seq"]: row for row in read_json_files(output + "-all")}
    assert {seq: row["online"] for seq, row in everything.items()} == {
        0: True,
        1: False,
        2: False,
        3: True,
        4: False,
        5: False,
    }  # fmt: skip  (the status API says false for a client it does not know)
    assert sorted(row["seq"] for row in read_json_files(output + "-online")) == [0, 3]


def _pipeline(tmp_path, transform: dict, source_records: list[dict]) -> Path:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in source_records))
    document = {
        "pipeline": {"transforms": [
            {"type": "ReadFromJson", "name": "Read", "config": {"path": str(source)}},
            {**transform, "input": "Read"},
            {"type": "WriteToJson", "input": transform["name"], "config": {"path": str(tmp_path / "out")}},
        ]},
        "providers": [{"include": PROVIDERS_FILE}],
    }  # fmt: skip
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_a_literal_password_is_refused_when_the_pipeline_is_built(emulator, tmp_path, monkeypatch):
    transform = {"type": "WriteToTdmqMqtt", "name": "Publish",
                 "config": {"endpoint": emulator.http_url, "username": "user0", "password": "secret0",
                            "topic": "t/{id}"}}  # fmt: skip
    with pytest.raises(Exception, match="password: a literal secret in a YAML pipeline is refused") as caught:
        run_yaml(_pipeline(tmp_path, transform, [{"id": "a"}]), {}, monkeypatch)
    assert "secret0" not in str(caught.value)


def test_a_key_that_cannot_work_is_named_when_the_pipeline_is_built(emulator, tmp_path, monkeypatch):
    transform = {"type": "WriteToTdmqMqtt", "name": "Publish",
                 "config": {"endpoint": emulator.http_url, "username": "user0", "password_env": "TDMQ_PASSWORD",
                            "topic": "t/{id}", "roles": {"priority": "id"}}}  # fmt: skip
    with pytest.raises(Exception, match=r"roles: unknown role\(s\) \['priority'\]"):
        run_yaml(_pipeline(tmp_path, transform, [{"id": "a"}]), {}, monkeypatch)


def test_without_error_handling_a_failure_fails_the_pipeline_with_its_reason(emulator, tmp_path, monkeypatch):
    transform = {"type": "WriteToTdmqMqtt", "name": "Publish",
                 "config": {"endpoint": emulator.http_url, "username": "user0", "password_env": "TDMQ_PASSWORD",
                            "topic": "t/{id}"}}  # fmt: skip
    with pytest.raises(Exception, match="contains a wildcard"):
        run_yaml(_pipeline(tmp_path, transform, [{"id": "ok"}, {"id": "bad+"}]), {}, monkeypatch)


def test_keepalive_rows_and_the_read_side_in_yaml(emulator, paho, tmp_path, monkeypatch):
    with emulator.simulated_clients() as devices:
        devices.online("yaml-keep", keepalive=60)
        transform = {"type": "SetClientKeepAlive", "name": "Keep",
                     "config": {"endpoint": emulator.http_url, "username": "user0", "password_env": "TDMQ_PASSWORD",
                                "interval": 300}}  # fmt: skip
        run_yaml(_pipeline(tmp_path, transform, [{"client_id": "yaml-keep"}]), {}, monkeypatch)
    assert read_json_files(str(tmp_path / "out")) == [{"client_id": "yaml-keep", "keepalive": 300}]

    read = {
        "pipeline": {"transforms": [
            {"type": "ReadFromTdmqMqtt", "name": "Read",
             "config": {"endpoint": emulator.http_url, "mqtt_endpoint": f"mqtt://127.0.0.1:{emulator.mqtt_port}",
                        "username": "user0", "password_env": "TDMQ_PASSWORD", "topics": ["yaml-read/#"],
                        "client_id_prefix": "yaml-reader", "max_records": 3}},
            {"type": "MapToFields", "name": "Topics", "input": "Read",
             "config": {"language": "python", "fields": {"topic": "topic", "text": "payload.decode()", "dup": "dup"}}},
            {"type": "WriteToJson", "input": "Topics", "config": {"path": str(tmp_path / "rows-read")}},
        ]},
        "providers": [{"include": PROVIDERS_FILE}],
    }  # fmt: skip
    path = tmp_path / "read.yaml"
    path.write_text(yaml.safe_dump(read))
    opener = dict(read)
    opener["pipeline"] = {"transforms": [dict(read["pipeline"]["transforms"][0])]}
    opener["pipeline"]["transforms"][0]["config"] = {**read["pipeline"]["transforms"][0]["config"],
                                                     "max_records": None, "max_read_time": 0.5}  # fmt: skip
    (tmp_path / "open.yaml").write_text(yaml.safe_dump(opener))
    run_yaml(tmp_path / "open.yaml", {}, monkeypatch)  # opens the reader's session
    publisher = paho()
    for i in range(3):
        publisher.publish(f"yaml-read/{i}", f"hello {i}".encode(), qos=1)
    run_yaml(path, {}, monkeypatch)
    rows = sorted(read_json_files(str(tmp_path / "rows-read")), key=lambda row: row["topic"])
    assert rows == [{"topic": f"yaml-read/{i}", "text": f"hello {i}", "dup": False} for i in range(3)]


def test_the_provider_listing_is_what_the_examples_and_the_docs_name():
    listing = yaml.safe_load(Path(PROVIDERS_FILE).read_text())
    for example in EXAMPLES.glob("*.yaml"):
        assert yaml.safe_load(example.read_text())["providers"] == listing, example
    page = (ROOT / "docs" / "beam-yaml.md").read_text()
    for name, target in listing[0]["transforms"].items():
        assert f"{name}: {target}" in page


def test_enrichment_with_client_details_in_yaml(emulator, tmp_path, monkeypatch):
    monkeypatch.setenv("TDMQ_SECRET_KEY", emulator.secret_key)
    source = tmp_path / "in.jsonl"
    source.write_text('{"client_id": "yaml-detailed"}\n{"client_id": "yaml-nobody"}\n')
    document = {
        "pipeline": {"transforms": [
            {"type": "ReadFromJson", "name": "Read", "config": {"path": str(source)}},
            {"type": "EnrichWithClientStatus", "name": "Enrich", "input": "Read",
             "config": {"endpoint": emulator.http_url, "username": "user0", "password_env": "TDMQ_PASSWORD",
                        "secret_id": emulator.secret_id, "secret_key_env": "TDMQ_SECRET_KEY",
                        "tencent_region": "ap-guangzhou", "instance_id": emulator.instance_id,
                        "cloud_endpoint": emulator.http_url}},
            # Downstream YAML reads the nested client row by its schema's field names.
            {"type": "MapToFields", "name": "Flatten", "input": "Enrich",
             "config": {"language": "python", "fields": {
                 "client_id": "client_id", "online": "online",
                 "status": "client.connection_status if client else None",
                 "topics": "[sub.topic_filter for sub in client.subscriptions] if client else []"}}},
            {"type": "WriteToJson", "input": "Flatten", "config": {"path": str(tmp_path / "out")}},
        ]},
        "providers": [{"include": PROVIDERS_FILE}],
    }  # fmt: skip
    path = tmp_path / "details.yaml"
    path.write_text(yaml.safe_dump(document))
    with emulator.simulated_clients() as devices:
        devices.online("yaml-detailed", subscriptions=["devices/yaml-detailed/commands"])
        run_yaml(path, {}, monkeypatch)
    rows = {row["client_id"]: row for row in read_json_files(str(tmp_path / "out"))}
    assert rows["yaml-detailed"] == {"client_id": "yaml-detailed", "online": True, "status": "CONNECTED",
                                     "topics": ["devices/yaml-detailed/commands"]}  # fmt: skip
    assert rows["yaml-nobody"] == {"client_id": "yaml-nobody", "online": False, "status": None, "topics": []}


def test_an_unknown_key_is_named_when_the_pipeline_is_built(emulator, tmp_path, monkeypatch):
    transform = {"type": "WriteToTdmqMqtt", "name": "Publish",
                 "config": {"endpoint": emulator.http_url, "username": "user0", "password_env": "TDMQ_PASSWORD",
                            "topic": "t/{id}", "retain": True}}  # fmt: skip
    with pytest.raises(Exception, match="retain"):
        run_yaml(_pipeline(tmp_path, transform, [{"id": "a"}]), {}, monkeypatch)


CLOUD_ONLY = {"ReadTdmqMessageHistory", "VerifyStoredMessages"}
NO_SERVICE = {"TrackClientStatus"}  # Beam state over events: no call to the service


def test_every_transform_declares_the_connection_or_cloud_keys_to_beam_yaml():
    from apache_beam.yaml.yaml_provider import InlineProvider

    listing = yaml.safe_load(Path(PROVIDERS_FILE).read_text())[0]["transforms"]
    assert CLOUD_ONLY < set(listing)
    for name, target in listing.items():
        if name in NO_SERVICE:
            continue
        module, _, attribute = target.rpartition(".")
        factory = getattr(__import__(module, fromlist=[attribute]), attribute)
        fields = {field.name: field for field in InlineProvider.config_schema_from_callable(factory).fields}
        if name in CLOUD_ONLY or name == "EnrichWithClientStatus":
            assert {"secret_id", "secret_key_env", "secret_key_file", "tencent_region", "instance_id",
                    "cloud_endpoint", "cloud_rate", "max_attempts"} <= set(fields), name  # fmt: skip
            assert fields["secret_key_env"].description.startswith("environment variable"), name
        if name not in CLOUD_ONLY:
            assert {"endpoint", "username", "password_env", "password_file", "ca_cert", "max_attempts"} <= set(fields)
            assert fields["password_env"].description.startswith("environment variable"), name


def _cloud_keys(emulator) -> dict:
    return {"secret_id": emulator.secret_id, "secret_key_env": "TDMQ_SECRET_KEY", "tencent_region": "ap-guangzhou",
            "instance_id": emulator.instance_id, "cloud_endpoint": emulator.http_url}  # fmt: skip


def test_a_yaml_backfill_verified_and_replayed(emulator, paho, tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("TDMQ_SECRET_KEY", emulator.secret_key)
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(milliseconds=5)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"y{i}", "body": f"cmd {i}"}) + "\n" for i in range(3)))
    connection = {"endpoint": emulator.http_url, "username": "user0", "password_env": "TDMQ_PASSWORD"}
    audit = write_pipeline(tmp_path / "audit.yaml", [
            {"type": "ReadFromJson", "name": "Read", "config": {"path": str(source)}},
            {"type": "WriteToTdmqMqtt", "name": "Publish", "input": "Read",
             "config": {**connection, "topic": "yaml-audit/{id}", "payload_field": "body"}},
            # One forged id beside what was published: the audit must say it is missing.
            {"type": "MapToFields", "name": "Forge", "input": "Publish",
             "config": {"language": "python", "fields": {
                 "id": "id", "body": "body", "topic": "topic", "attempts": "attempts",
                 "message_id": "message_id if id != 'y2' else 'F' * 32"}}},
            {"type": "VerifyStoredMessages", "name": "Verify", "input": "Forge", "config": _cloud_keys(emulator)},
            {"type": "WriteToJson", "input": "Verify.verified", "config": {"path": str(tmp_path / "verified")}},
            {"type": "WriteToJson", "input": "Verify.missing", "config": {"path": str(tmp_path / "missing")}},
    ])  # fmt: skip
    run_yaml(audit, {}, monkeypatch)
    verified = sorted(read_json_files(str(tmp_path / "verified")), key=lambda row: row["id"])
    assert [row["id"] for row in verified] == ["y0", "y1"]
    assert all(row["store_time"] >= start.timestamp() * 1000 - 1 for row in verified)
    [missing] = read_json_files(str(tmp_path / "missing"))
    assert missing["id"] == "y2" and "holds no message with this id" in missing["reason"]

    time.sleep(0.005)
    end = datetime.datetime.now(datetime.timezone.utc)
    replay = write_pipeline(tmp_path / "replay.yaml", [
            {"type": "ReadTdmqMessageHistory", "name": "Replay",
             "config": {**_cloud_keys(emulator), "topic_filter": "yaml-audit/#", "start": start.isoformat(),
                        "end": end.isoformat(), "error_handling": {"output": "unread"}}},
            {"type": "MapToFields", "name": "Rows", "input": "Replay.messages",
             "config": {"language": "python", "fields": {
                 "topic": "topic", "text": "payload.decode()", "message_id": "message_id"}}},
            {"type": "WriteToJson", "input": "Rows", "config": {"path": str(tmp_path / "replayed")}},
            {"type": "WriteToJson", "input": "Replay.unread", "config": {"path": str(tmp_path / "unread")}},
    ])  # fmt: skip
    run_yaml(replay, {}, monkeypatch)
    rows = sorted(read_json_files(str(tmp_path / "replayed")), key=lambda row: row["topic"])
    assert [(row["topic"], row["text"]) for row in rows] == [(f"yaml-audit/y{i}", f"cmd {i}") for i in range(3)]
    assert {row["message_id"] for row in rows[:2]} == {row["message_id"] for row in verified}
    assert read_json_files(str(tmp_path / "unread")) == []


def test_a_history_read_without_cloud_keys_or_with_a_bad_time_is_named(emulator, tmp_path, monkeypatch):
    monkeypatch.setenv("TDMQ_SECRET_KEY", emulator.secret_key)
    for config, message in [
        ({"topic_filter": "a/#", "start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"},
         "the cloud API keys are required"),
        ({**_cloud_keys(emulator), "topic_filter": "a/#", "start": "yesterday", "end": "2026-01-02T00:00:00Z"},
         "start must be ISO 8601 with its zone"),
        ({**_cloud_keys(emulator), "topic_filter": "a/#", "start": "2026-01-01T00:00:00",
          "end": "2026-01-02T00:00:00Z"}, "start must be a timezone-aware datetime"),
    ]:  # fmt: skip
        bad = write_pipeline(tmp_path / "bad.yaml", [
            {"type": "ReadTdmqMessageHistory", "name": "Replay", "config": config},
            {"type": "WriteToJson", "input": "Replay", "config": {"path": str(tmp_path / "out")}},
        ])  # fmt: skip
        with pytest.raises(Exception, match=message):
            run_yaml(bad, {}, monkeypatch)


def test_yaml_error_handling_and_null_cloud_keys_are_checked_plainly(emulator, monkeypatch):
    from tdmq_beam.beam_yaml.transforms import YamlEnrichWithClientStatus, YamlReadTdmqMessageHistory
    from tdmq_beam.errors import ConfigurationError

    monkeypatch.setenv("TDMQ_SECRET_KEY", emulator.secret_key)
    window = {"topic_filter": "a/#", "start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}
    with pytest.raises(ConfigurationError, match=r"error_handling must be \{output: NAME\}"):
        YamlReadTdmqMessageHistory(**_cloud_keys(emulator), **window, error_handling="unread")
    # A key given as null is an absent key, for the cloud keys as for the others.
    enrich = YamlEnrichWithClientStatus(endpoint=emulator.http_url, username="user0", password_env="TDMQ_PASSWORD",
                                        secret_id=None, cloud_endpoint=None)  # fmt: skip
    assert enrich.extra_fields() == [("online", enrich.EXTRA[0][1])]


def test_client_events_tracked_and_behind_the_query_in_yaml(emulator, unique, tmp_path, monkeypatch):
    import threading
    import time

    from mqtt_peers import PahoClient

    online, offline, flipping = unique("yaml-on"), unique("yaml-off"), unique("yaml-flip")
    keys = {"endpoint": emulator.http_url, "username": "user0", "password_env": "TDMQ_PASSWORD"}
    prefix = unique("yaml-events")
    path = write_pipeline(tmp_path / "events.yaml", [
            {"type": "ReadClientEvents", "name": "Events",
             "config": {**keys, "mqtt_endpoint": f"mqtt://127.0.0.1:{emulator.mqtt_port}",
                        "client_id_prefix": prefix, "max_read_time": 6}},
            {"type": "TrackClientStatus", "name": "Track", "input": "Events"},
            {"type": "MapToFields", "name": "Changes", "input": "Track",
             "config": {"language": "python", "fields": {"client_id": "client_id", "online": "online",
                                                        "reason": "reason"}}},
            {"type": "WriteToJson", "input": "Changes", "config": {"path": str(tmp_path / "changes")}},
            {"type": "Create", "name": "Rows",
             "config": {"elements": [{"client_id": online, "n": 1}, {"client_id": offline, "n": 2}]}},
            {"type": "EnrichWithClientStatus", "name": "Enrich", "input": {"rows": "Rows", "events": "Events"},
             "config": {**keys, "source": "events+query"}},
            {"type": "WriteToJson", "input": "Enrich", "config": {"path": str(tmp_path / "enriched")}},
    ])  # fmt: skip
    with emulator.simulated_clients() as devices:
        devices.online(online)  # before the reader: the events never tell of it, the query does
        runner = threading.Thread(target=run_yaml, args=(path, {}, monkeypatch))
        runner.start()
        deadline = time.monotonic() + 60
        while not (emulator.session_state(f"{prefix}-0") or {}).get("connected"):
            assert time.monotonic() < deadline, "the events reader did not connect"
            time.sleep(0.05)
        time.sleep(0.5)
        flip = PahoClient(emulator.mqtt_port, flipping)
        flip.connect()
        flip.disconnect()
        runner.join(timeout=120)
    enriched = {row["client_id"]: row["online"] for row in read_json_files(str(tmp_path / "enriched"))}
    assert enriched == {online: True, offline: False}
    changes = [row for row in read_json_files(str(tmp_path / "changes")) if row["client_id"] == flipping]
    assert sorted((row["online"], row["reason"]) for row in changes) == [(False, "normal"), (True, None)]


def test_a_yaml_events_source_needs_both_inputs_and_no_cloud_keys(emulator, tmp_path, monkeypatch):
    from tdmq_beam.beam_yaml.transforms import YamlEnrichWithClientStatus
    from tdmq_beam.errors import ConfigurationError

    keys = {"endpoint": emulator.http_url, "username": "user0", "password_env": "TDMQ_PASSWORD"}
    monkeypatch.setenv("TDMQ_PASSWORD", "secret0")
    with pytest.raises(ConfigurationError, match="source must be 'query', 'events' or 'events\\+query'"):
        YamlEnrichWithClientStatus(**keys, source="guess")
    with pytest.raises(ConfigurationError, match="adds no client details"):
        YamlEnrichWithClientStatus(**keys, **_cloud_keys(emulator), source="events")
    transform = {"type": "EnrichWithClientStatus", "name": "Enrich", "config": {**keys, "source": "events"}}
    with pytest.raises(Exception, match="takes two inputs"):
        run_yaml(_pipeline(tmp_path, transform, [{"client_id": "c"}]), {}, monkeypatch)


# -- python -m tdmq_beam_pipelines.run_yaml --------------------------------------------------------


def test_run_yaml_runs_an_example_by_name_from_anywhere(emulator, paho, tmp_path, monkeypatch):
    subscriber = paho("run-yaml-watch")
    subscriber.subscribe("devices/run-yaml-dev/commands", qos=1)
    (tmp_path / "commands.jsonl").write_text(
        json.dumps({"device_id": "run-yaml-dev", "command_id": "c-1", "command": "reboot", "issued_at": 0}) + "\n"
    )
    monkeypatch.chdir(tmp_path)  # no schemas/ here: the package's are used
    monkeypatch.setenv("TDMQ_PASSWORD", emulator.password)
    variables = {"endpoint": emulator.http_url, "input": "commands.jsonl", "output": "out/yaml"}
    assert run_yaml_command.main(["backfill_device_commands", f"--jinja_variables={json.dumps(variables)}"]) == 0
    (message,) = subscriber.receive(1)
    assert message.properties.CorrelationData == b"c-1"
    (published,) = read_json_files(str(tmp_path / "out" / "yaml-published"))
    assert published["topic"] == "devices/run-yaml-dev/commands"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["backfill_device_command"], "no pipeline 'backfill_device_command': give an example (backfill_device_comm"),
        (["backfill_device_commands", "--direct_num_worker", "2"], "unknown flag --direct_num_worker; did you mean"),
        (["backfill_device_commands", "--jinja_variables", "[1]"], "--jinja_variables must be a JSON object, got list"),
        (["backfill_device_commands", "--jinja_variables", "{"], "--jinja_variables is not JSON"),
        (["backfill_device_commands", "--jinja_variables", '{"input": "x", "output": "y"}'],
         "the pipeline needs a Jinja variable ('endpoint' is undefined): give it in --jinja_variables"),
    ],
)  # fmt: skip
def test_run_yaml_mistakes_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        run_yaml_command.main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"run_yaml: error: {message}") and err.count("\n") == 1, err


def test_run_yaml_says_a_refused_preflight_in_one_line_naming_the_transform(emulator, tmp_path, monkeypatch, capsys):
    (tmp_path / "commands.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TDMQ_PASSWORD", "not-the-password")
    variables = {"endpoint": emulator.http_url, "input": "commands.jsonl", "output": "out/yaml"}
    with pytest.raises(SystemExit) as stopped:
        run_yaml_command.main(["backfill_device_commands", f"--jinja_variables={json.dumps(variables)}"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('run_yaml: error: Invalid transform specification at "Publish"') and err.count("\n") == 1
    assert "refused the credentials (401)" in err and "not-the-password" not in err
