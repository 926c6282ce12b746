"""The streaming enrichment pipeline for real: Google's Pub/Sub emulator in and out, the TDMQ emulator beside it.

Needs the Pub/Sub emulator (Debian: ``google-cloud-cli-pubsub-emulator``, with Java) and the
``gcp`` extra (``pip install -e '.[gcp]'``); skipped, saying so, where either is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

pubsub_v1 = pytest.importorskip("google.cloud.pubsub_v1", reason="needs the gcp extra: pip install -e '.[gcp]'")

PROJECT = "tdmq-beam-test"
HOW_TO_INSTALL = "needs Google's Pub/Sub emulator: apt-get install google-cloud-cli-pubsub-emulator (and Java 17)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def pubsub_emulator():
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.skip(HOW_TO_INSTALL)
    port = _free_port()
    process = subprocess.Popen(
        [gcloud, "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}", f"--project={PROJECT}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    host = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 15)
                pytest.skip(f"the Pub/Sub emulator did not start; {HOW_TO_INSTALL}")
            time.sleep(0.2)
    previous = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = host
    try:
        yield host
    finally:
        if previous is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = previous
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        process.wait(timeout=30)


def test_streaming_enrichment_through_pubsub(pubsub_emulator, emulator, tmp_path):
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    names = {kind: f"enrich-{kind}-{os.getpid()}" for kind in ("in", "out")}
    in_topic, out_topic = (publisher.topic_path(PROJECT, names[k]) for k in ("in", "out"))
    in_subscription = subscriber.subscription_path(PROJECT, names["in"])
    out_subscription = subscriber.subscription_path(PROJECT, names["out"])
    publisher.create_topic(name=in_topic)
    publisher.create_topic(name=out_topic)
    subscriber.create_subscription(name=in_subscription, topic=in_topic)
    subscriber.create_subscription(name=out_subscription, topic=out_topic)

    with emulator.simulated_clients() as devices:
        devices.online("stream-on")
        devices.offline("stream-off")
        events = [{"client_id": cid, "seq": index} for index, cid in enumerate(["stream-on", "stream-off"] * 10)]
        env = {**os.environ, "PUBSUB_EMULATOR_HOST": pubsub_emulator, "STREAM_TEST_PASSWORD": emulator.password}
        job = subprocess.Popen(
            [sys.executable, "-m", "tdmq_beam_pipelines.enrich_client_status", "--streaming",
             "--input_subscription", in_subscription, "--output_topic", out_topic,
             "--endpoint", emulator.http_url, "--username", emulator.username,
             "--password-env", "STREAM_TEST_PASSWORD", f"--project={PROJECT}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            time.sleep(3)  # let the pipeline subscribe before the events are published
            for event in events:
                publisher.publish(in_topic, json.dumps(event).encode()).result(timeout=30)
            received: dict[int, dict] = {}
            deadline = time.monotonic() + 120
            while len(received) < len(events) and time.monotonic() < deadline and job.poll() is None:
                response = subscriber.pull(subscription=out_subscription, max_messages=50, timeout=10)
                if response.received_messages:
                    subscriber.acknowledge(
                        subscription=out_subscription, ack_ids=[m.ack_id for m in response.received_messages]
                    )
                for message in response.received_messages:
                    enriched = json.loads(message.message.data)
                    received[enriched["seq"]] = enriched
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid, 15)
            output = job.communicate(timeout=60)[0]
    assert len(received) == len(events), output[-3000:]
    for seq, enriched in received.items():
        assert enriched["client_id"] == events[seq]["client_id"]
        assert enriched["online"] is (enriched["client_id"] == "stream-on")


def test_telemetry_ingest_to_pubsub(pubsub_emulator, tmp_path):
    """The ingest pipeline's Pub/Sub output: telemetry read from MQTT arrives enriched on a real topic."""
    from tdmq_beam.testing import TdmqEmulator

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    name = f"ingest-out-{os.getpid()}"
    topic = publisher.topic_path(PROJECT, name)
    subscription = subscriber.subscription_path(PROJECT, name)
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)
    with TdmqEmulator() as emulator, emulator.simulated_clients() as devices:
        devices.online("sensor-p")
        env = {**os.environ, "PUBSUB_EMULATOR_HOST": pubsub_emulator, "INGEST_PASSWORD": emulator.password}
        job = subprocess.Popen(
            [sys.executable, "-m", "tdmq_beam_pipelines.ingest_device_telemetry", "--quiet",
             "--endpoint", emulator.http_url, "--mqtt-endpoint", f"mqtt://127.0.0.1:{emulator.mqtt_port}",
             "--username", emulator.username, "--password-env", "INGEST_PASSWORD",
             "--client-id-prefix", "ingest-pubsub", "--max-records", "20", "--max-read-time", "90",
             "--output_topic", topic, f"--project={PROJECT}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 90
            readers = ("ingest-pubsub-0", "ingest-pubsub-1")
            while not all((emulator.session_state(r) or {}).get("connected") for r in readers):
                if time.monotonic() > deadline or job.poll() is not None:
                    raise AssertionError(f"the readers did not connect: {job.communicate(timeout=60)[0][-3000:]}")
                time.sleep(0.1)
            readings = [
                ("devices/sensor-p/telemetry",
                 json.dumps({"seq": i, "sent_at": int(time.time() * 1000), "temperature": 20.0 + i}).encode())
                for i in range(20)
            ]  # fmt: skip
            assert devices.publish("sensor-p", readings) == 20
            output = job.communicate(timeout=120)[0]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid, 15)
    assert job.returncode == 0, output[-3000:]
    received: dict[int, dict] = {}
    deadline = time.monotonic() + 60
    while len(received) < 20 and time.monotonic() < deadline:
        response = subscriber.pull(subscription=subscription, max_messages=50, timeout=10)
        if response.received_messages:
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
        for message in response.received_messages:
            record = json.loads(message.message.data)
            received[record["seq"]] = record
    assert sorted(received) == list(range(20)), output[-3000:]
    assert all(record["device_id"] == "sensor-p" and record["online"] is True for record in received.values())
