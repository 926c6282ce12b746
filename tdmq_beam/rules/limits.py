"""Limits the service documents, shared by the client (which checks them before calling) and the
emulator (which enforces them)."""

from __future__ import annotations

__all__ = ["KEEPALIVE_RANGE", "MAX_PACKET_SIZE", "MAX_UINT32"]

KEEPALIVE_RANGE = (30, 1200)
"""Keep-alive seconds the keep-alive API accepts."""

MAX_UINT32 = 0xFFFFFFFF
"""The largest MQTT Four Byte Integer: message expiry, session expiry."""

MAX_PACKET_SIZE = 268_435_460
"""The largest MQTT packet the remaining-length encoding allows (256 MiB of body plus its header)."""
