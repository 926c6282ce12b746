"""The process's MQTT sessions for the read side: one per client id, outliving Beam's reader objects.

Beam makes a reader per bundle or parks one between bundles, and finalizes a
bundle's checkpoint mark later, on another thread; the MQTT session must
outlive all of them, or every bundle would reconnect and the broker would
send every unacknowledged message again. So sessions live here, keyed by
client id, with the reader that currently hands out their messages (only
that reader may close one). The session itself (`MqttSubscriber`) knows
nothing of Beam.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tdmq_beam.service.subscriber import MqttSubscriber

__all__ = ["SESSIONS", "SessionPool"]

_LOGGER = logging.getLogger(__name__)


@dataclass
class _Entry:
    session: MqttSubscriber
    owner: object  # the reader handing out its messages
    end_when_finished: bool  # the end of the read ends the session on the broker too


class SessionPool:
    """Sessions by client id, each with the reader that owns it."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def acquire(
        self,
        client_id: str,
        reader: object,
        open_session: Callable[[], MqttSubscriber],
        mark: tuple[str, int] | None,
        *,
        end_when_finished: bool = False,
    ) -> tuple[MqttSubscriber, bool]:
        """The session for ``client_id``, now owned by ``reader``, positioned at ``mark``.

        Opens (and starts) the session when the process has none. When the
        live session has handed out messages after ``mark`` (generation,
        sequence), a bundle that held them failed: the session restarts, so
        the broker sends them again, flagged DUP. With ``end_when_finished``,
        `finish` ends the session on the broker as well.

        Returns:
            (session, whether it was opened now).
        """
        with self._lock:
            entry = self._entries.get(client_id)
            opened = entry is None
            if entry is None:
                session = open_session()
                try:
                    session.start()
                except Exception:
                    session.close()
                    raise
                entry = self._entries[client_id] = _Entry(session, reader, end_when_finished)
            elif not entry.session.resumes(*(mark or ("", 0))):
                _LOGGER.info("MQTT reader %s resumes from an earlier mark: reconnecting for redelivery", client_id)
                entry.session.restart()
            entry.owner = reader
            return entry.session, opened

    def session(self, client_id: str, name: str) -> MqttSubscriber | None:
        """The live session ``name`` of ``client_id`` (None if it is gone, or another took its place)."""
        with self._lock:
            entry = self._entries.get(client_id)
        return entry.session if entry is not None and entry.session.name == name else None

    def finish(self, client_id: str, name: str, generation: str, sequence: int) -> None:
        """The read is over: acknowledges through (generation, sequence), then closes the session,
        waiting (bounded) until the acknowledgements are sent and QoS 2 handshakes complete (and
        ending it on the broker, when it was acquired so)."""
        with self._lock:
            entry = self._entries.get(client_id)
            if entry is None or entry.session.name != name:
                return
            del self._entries[client_id]
        entry.session.acknowledge_through(generation, sequence)
        entry.session.close(end_session=entry.end_when_finished)

    def release(self, client_id: str, reader: object) -> None:
        """``reader`` is given up on: closes its session, unless another reader owns it now."""
        with self._lock:
            entry = self._entries.get(client_id)
            if entry is None or entry.owner is not reader:
                return
            del self._entries[client_id]
        entry.session.close()


SESSIONS = SessionPool()
"""The one pool of the process."""
