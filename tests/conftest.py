from __future__ import annotations

import itertools
import os
import time

import pytest
import trustme
from mqtt_peers import PahoClient

from tdmq_beam.testing import TdmqEmulator


@pytest.fixture(scope="session")
def emulator():
    """One emulator shared by the tests that need no special configuration."""
    with TdmqEmulator() as running:
        yield running


_ids = itertools.count(1)


@pytest.fixture
def unique():
    """A name unique within the test run, for topics and client ids."""
    return lambda prefix="t": f"{prefix}-{os.getpid()}-{next(_ids)}"


@pytest.fixture
def paho(emulator):
    """Factory of connected paho clients on the shared emulator, disconnected after the test."""
    clients: list[PahoClient] = []

    def make(client_id: str = "", *, port: int | None = None, connect: bool = True, **options) -> PahoClient:
        client = PahoClient(port or emulator.mqtt_port, client_id, **options)
        clients.append(client)
        if connect:
            _flags, rc, _props = client.connect()
            assert not rc.is_failure, rc
        return client

    yield make
    for client in clients:
        try:
            client.disconnect()
        except Exception:
            pass


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate with Common Name device-7."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    device = ca.issue_cert("device-7", common_name="device-7")
    paths = {name: str(directory / f"{name}.pem") for name in ("ca", "server", "server_key", "device", "device_key")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.private_key_pem.write_to_path(paths["server_key"])
    for index, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(paths["server"], append=index > 0)
    device.private_key_pem.write_to_path(paths["device_key"])
    for index, blob in enumerate(device.cert_chain_pems):
        blob.write_to_path(paths["device"], append=index > 0)
    return paths


class BrokerUnderTest:
    """What the read tests need of a broker: its port, connections, publishers, whether a client
    is connected and, where the broker can say, the state of a session (the emulator can;
    mosquitto cannot: None)."""

    def __init__(self, name: str, port: int, connection, connected, session_state=lambda client_id: None) -> None:
        self.name = name
        self.port = port
        self.connection = connection
        self.connected = connected
        self.session_state = session_state

    def wait_connected(self, client_id: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.connected(client_id):
            assert time.monotonic() < deadline, f"{client_id} did not connect in {timeout} s"
            time.sleep(0.05)

    def publisher(self, **options) -> PahoClient:
        client = PahoClient(self.port, "", **options)
        _flags, rc, _props = client.connect()
        assert not rc.is_failure, rc
        return client


@pytest.fixture(scope="session")
def mosquitto_broker(tmp_path_factory):
    """One mosquitto (Debian's) for the tests that read from a broker we did not write."""
    from brokers import Mosquitto

    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as running:
        yield running


@pytest.fixture(params=["emulator", "mosquitto"])
def broker(request) -> BrokerUnderTest:
    """The read tests that hold on any MQTT 5 broker run on the emulator and on mosquitto."""
    if request.param == "emulator":
        emulator = request.getfixturevalue("emulator")

        def connected(client_id: str) -> bool:
            return bool((emulator.session_state(client_id) or {}).get("connected"))

        return BrokerUnderTest("emulator", emulator.mqtt_port, emulator.connection, connected, emulator.session_state)
    mosquitto = request.getfixturevalue("mosquitto_broker")
    return BrokerUnderTest("mosquitto", mosquitto.port, mosquitto.connection, mosquitto.has_connected)
