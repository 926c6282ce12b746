"""The tdmq-emulator command and its configuration parsing."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys

import pytest

from tdmq_beam.emulator.cli import parse_config
from tdmq_beam.emulator.config import Acl


def test_command_prints_urls_and_stops_on_ctrl_c(tmp_path):
    acl = tmp_path / "acl.json"
    acl.write_text(json.dumps({"rules": [{"user": "*", "action": "publish", "topic": "x/#", "permission": "deny"}]}))
    process = subprocess.Popen(
        [sys.executable, "-m", "tdmq_beam.emulator", "--http-port", "0", "--mqtt-port", "0",
         "--user", "alice:pw", "--acl", str(acl)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        match = re.fullmatch(
            r"tdmq-emulator serving http=http://127\.0\.0\.1:(\d+) mqtt=mqtt://127\.0\.0\.1:(\d+)\n", line
        )
        assert match, line
        connection = http.client.HTTPConnection("127.0.0.1", int(match[1]), timeout=10)
        connection.request("POST", "/topics/x/y", body=b"p", headers={"Authorization": "Basic YWxpY2U6cHc="})
        response = connection.getresponse()
        response.read()
        assert response.status == 401  # the ACL file applies to alice
        connection.request("POST", "/topics/z", body=b"p", headers={"Authorization": "Basic YWxpY2U6cHc="})
        assert connection.getresponse().status == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()


def test_defaults_are_the_documentation_examples():
    config, _ = parse_config([])
    assert config.users == {"user0": "secret0"}
    assert config.secret_id == "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE"
    assert config.instance_id == "mqtt-local"
    assert config.cloud_rate == 20
    assert (config.http_port, config.mqtt_port) == (8080, 1883)


def test_flags():
    config, level = parse_config(
        ["--user", "a:1", "--user", "b:2:3", "--tps", "50", "--fault-rate", "0.1", "--fault-kinds", "500,reset",
         "--fault-seed", "3", "--offline-action", "DescribeMQTTClient", "--log-level", "info"]
    )  # fmt: skip
    assert config.users == {"a": "1", "b": "2:3"}
    assert config.tps == 50
    assert config.faults.rate == 0.1 and config.faults.kinds == ("500", "reset") and config.faults.seed == 3
    assert config.offline_actions == {"DescribeMQTTClient"}
    assert level == "info"
    # One spelling with the pipelines' --max-in-flight; the old one is still taken.
    assert (
        parse_config(["--max-in-flight", "8"])[0].max_inflight
        == parse_config(["--max-inflight", "8"])[0].max_inflight
        == 8
    )
    bounds = parse_config(["--max-connections", "5", "--max-session-expiry", "60", "--max-queued-bytes", "1000",
                           "--max-retained-bytes", "0", "--max-write-buffer", "4096"])[0]  # fmt: skip
    assert (bounds.max_connections, bounds.max_session_expiry, bounds.max_queued_bytes) == (5, 60, 1000)
    assert (bounds.max_retained_bytes, bounds.max_write_buffer) == (0, 4096)


@pytest.mark.parametrize(
    "argv",
    [["--user", "nocolon"], ["--fault-rate", "2"], ["--fault-kinds", "boom"], ["--http-port", "70000"],
     ["--client-ca", "ca.pem"], ["--acl", "/nonexistent.json"]],
)  # fmt: skip
def test_bad_flags_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_config(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"rules": [{"action": "read", "permission": "allow"}]}, "action"),
        ({"rules": [{"action": "all", "permission": "maybe"}]}, "permission"),
        ({"rules": [{"action": "all", "permission": "deny", "topic": "a/#/b"}]}, "'#'"),
        ({"rules": ["nope"]}, "not an object"),
    ],
)
def test_bad_acl_documents(document, problem):
    with pytest.raises(ValueError, match=problem):
        Acl.from_json(document)


def test_acl_first_match_wins_and_no_match_allows():
    acl = Acl.from_json(
        {
            "rules": [
                {"user": "bob", "action": "publish", "topic": "a/b", "permission": "allow"},
                {"user": "*", "action": "publish", "topic": "a/#", "permission": "deny"},
            ]
        }
    )
    assert acl.allows("bob", "publish", "a/b")
    assert not acl.allows("bob", "publish", "a/c")
    assert not acl.allows("eve", "publish", "a/b")
    assert acl.allows("eve", "publish", "b")
    assert acl.allows("eve", "subscribe", "a/#")


def test_mqtt5_and_listener_flags():
    config, _ = parse_config(
        ["--retry-interval", "5", "--max-subscriptions", "7", "--topic-alias-maximum", "3", "--max-keepalive", "60",
         "--max-cloud-body", "4096", "--ws-port", "0", "--deny-action", "DescribeClientList"]
    )  # fmt: skip
    assert (config.retry_interval, config.max_subscriptions, config.topic_alias_maximum) == (5, 7, 3)
    assert (config.max_keepalive, config.max_cloud_body, config.ws_port) == (60, 4096, 0)
    assert config.cloud_denied_actions == frozenset({"DescribeClientList"})
    assert config.mqtts_port is None and config.wss_port is None
    (defaults, _) = parse_config([])
    assert (defaults.retry_interval, defaults.max_subscriptions, defaults.max_inflight) == (120, 30, 16)


def test_tls_listeners_need_a_certificate(capsys):
    with pytest.raises(SystemExit) as exited:
        parse_config(["--mqtts-port", "8883"])
    assert exited.value.code == 2
    assert "need tls_cert" in capsys.readouterr().err


def test_command_announces_the_websocket_listener():
    process = subprocess.Popen(
        [sys.executable, "-m", "tdmq_beam.emulator", "--http-port", "0", "--mqtt-port", "0", "--ws-port", "0"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        assert re.fullmatch(r"tdmq-emulator serving http=\S+ mqtt=\S+ ws=ws://127\.0\.0\.1:\d+/mqtt\n", line), line
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()


def test_a_port_in_use_is_one_line_and_exit_2():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "tdmq_beam.emulator", "--http-port", "0", "--mqtt-port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.startswith("tdmq-emulator: error: cannot listen on 127.0.0.1")
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr


def test_detach_returns_once_serving_with_its_pid_and_a_start_up_error_with_its_status():
    import os
    import re
    import signal
    import socket
    import time
    import urllib.request

    run = subprocess.run(
        [sys.executable, "-m", "tdmq_beam.emulator", "--detach", "--http-port", "0", "--mqtt-port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    match = re.fullmatch(r"tdmq-emulator serving http=(\S+) mqtt=mqtt://127.0.0.1:(\d+) pid=(\d+)\n", run.stdout)
    assert match, run.stdout
    http_url, mqtt_port, pid = match.group(1), int(match.group(2)), int(match.group(3))
    try:
        # serving already, with no wait: the command returned only once it was
        request = urllib.request.Request(http_url + "/client-id/nobody/status")
        request.add_header("Authorization", "Basic dXNlcjA6c2VjcmV0MA==")  # user0:secret0
        assert json.loads(urllib.request.urlopen(request, timeout=10).read()) == {"online": False}
        with socket.create_connection(("127.0.0.1", mqtt_port), timeout=10):
            pass
        # a second one on the same port: the start-up error, and its status, reach the shell
        again = subprocess.run(
            [sys.executable, "-m", "tdmq_beam.emulator", "--detach", "--http-port", "0", "--mqtt-port", str(mqtt_port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert again.returncode == 2 and again.stdout == ""
        assert again.stderr.startswith("tdmq-emulator: error: cannot listen on 127.0.0.1")
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while True:  # it stops on SIGTERM (it is not our child: poll for it)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the detached emulator did not stop on SIGTERM"
        time.sleep(0.05)
