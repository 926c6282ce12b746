"""MQTT protocol pieces shared by the connector and the emulator: topic rules and the packet codec.

Nothing here imports Beam or does I/O.
"""
