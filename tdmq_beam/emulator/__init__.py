"""A local TDMQ for MQTT: MQTT 3.1.1/5 broker, HTTP data-plane API and cloud API.

Run it with ``tdmq-emulator`` (see `tdmq_beam.emulator.cli`), in-process with
`Emulator`, or from tests with `tdmq_beam.testing.TdmqEmulator`.
"""

from tdmq_beam.emulator.config import Acl, AclRule, EmulatorConfig, FaultConfig
from tdmq_beam.emulator.server import Emulator

__all__ = ["Acl", "AclRule", "Emulator", "EmulatorConfig", "FaultConfig"]
