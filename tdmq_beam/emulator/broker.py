"""The broker: session lifecycle, subscriptions, retained messages, delivery and events.

Everything here runs on the emulator's one event loop; nothing is locked. MQTT
connections and the HTTP APIs both publish through `Broker.publish`; a
connection hands its CONNECT to `Broker.open_session` and its end to
`Broker.close_session`, and the broker decides what happens to the session
(takeover, clean start, resumption, expiry, wills).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import uuid

from tdmq_beam.emulator.config import EmulatorConfig
from tdmq_beam.emulator.message import Message
from tdmq_beam.emulator.message_queue import MessageQueue
from tdmq_beam.emulator.message_store import MessageStore
from tdmq_beam.emulator.session import (
    NEVER_EXPIRES,
    ClientConnection,
    Delivery,
    Inflight,
    Session,
    now_ms,
)
from tdmq_beam.emulator.subscription_tree import Match, SharedGroup, Subscription, SubscriptionTree
from tdmq_beam.mqtt.codec import PacketType, Prop, ReasonCode, Will, encode_ack, encode_publish
from tdmq_beam.mqtt.topics import topic_matches
from tdmq_beam.rules.client_events import CLIENT_EVENTS, event_topic

__all__ = ["NEVER_EXPIRES", "Broker", "Message", "Session"]

_LOGGER = logging.getLogger(__name__)

_ALIAS_ONLY = b"\x00\x00"  # an empty topic name: the topic alias says which


class Broker:
    """Routes messages between sessions and keeps what outlives connections."""

    def __init__(self, config: EmulatorConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.sessions: dict[str, Session] = {}
        self.retained: dict[str, Message] = {}
        self.retained_bytes = 0  # payload bytes of the retained messages
        self.store = MessageStore(config.stored_messages, config.stored_message_age)
        self.tree = SubscriptionTree()
        self.node = ""  # "ip:port" of the MQTT listener, set when it is bound
        self._event_random = random.Random(config.event_seed)
        self.counters: dict[str, int] = {
            "messages_received": 0,
            "events_published": 0,
            "events_lost": 0,
            "messages_delivered": 0,
            "messages_dropped_expired": 0,
            "messages_dropped_queue_full": 0,
            "messages_dropped_too_large": 0,
            "messages_dropped_no_subscriber": 0,
            "messages_dropped_slow_subscriber": 0,
            "retained_refused_full": 0,
        }

    # -- sessions -------------------------------------------------------------

    def open_session(
        self,
        connection: ClientConnection,
        *,
        client_id: str,
        clean_start: bool,
        expiry_interval: int,
        username: str | None,
        address: str,
        keepalive: int,
        window: int,
        max_packet_size: int = 0,
        alias_maximum: int = 0,
    ) -> tuple[Session, bool]:
        """Attaches a new connection to its session: takes over a live one, starts clean or resumes.

        Returns:
            (the session, whether an existing session was resumed).
        """
        session = self.sessions.get(client_id)
        if session is not None and session.connection is not None:
            session.connection.close("takeovered", ReasonCode.SESSION_TAKEN_OVER)
            session = self.sessions.get(client_id)  # the old one may have ended with its connection
        if session is not None and clean_start:
            self.end_session(session)
            session = None
        present = session is not None
        if session is None:
            session = self.sessions[client_id] = Session(client_id, created_ms=now_ms())
        else:
            if session.expiry_handle is not None:
                session.expiry_handle.cancel()
                session.expiry_handle = None
            if session.delayed_will is not None:  # back in time: the will is not sent
                session.delayed_will[1].cancel()
                session.delayed_will = None
        session.expiry_interval = expiry_interval
        session.clean_start = clean_start
        session.protocol_level = connection.level
        session.keepalive = keepalive
        session.username = username
        session.address = address
        session.connected_ms = now_ms()
        session.disconnected_ms = 0
        session.connection = connection
        session.window = window
        session.max_packet_size = max_packet_size
        session.alias_maximum = alias_maximum
        session.aliases = {}
        return session, present

    def session_started(self, session: Session, present: bool) -> None:
        """After CONNACK: announce the client, resend what is unacknowledged, send what waits."""
        self.emit_event(
            "client_connected",
            {
                "clientid": session.client_id,
                "username": session.username,
                "clean_start": session.clean_start,
                "connected_at": session.connected_ms,
                "event": CLIENT_EVENTS["client_connected"].event,
                "keepalive": session.keepalive,
                "node": self.node,
                "peername": session.address,
                "proto_ver": session.protocol_level,
                "timestamp": session.connected_ms,
            },
        )
        if present:
            self._resend_inflight(session)
        self.drain(session)

    def close_session(self, session: Session, reason: str, will: Will | None) -> None:
        """The session's connection is gone: publish or delay the will, keep the session for its expiry."""
        if session.connection is None:
            return
        session.connection = None
        session.disconnected_ms = now_ms()
        if session.resend_handle is not None:
            session.resend_handle.cancel()
            session.resend_handle = None
        self._release_shared(session)
        if will is not None:
            delay = will.properties.get(Prop.WILL_DELAY_INTERVAL, 0)
            if delay and session.expiry_interval:
                handle = self.loop.call_later(delay, self._delayed_will_due, session)
                session.delayed_will = (will, handle)
            else:
                self._publish_will(session, will)
        self.emit_event(
            "client_disconnected",
            {
                "clientid": session.client_id,
                "username": session.username,
                "event": CLIENT_EVENTS["client_disconnected"].event,
                "reason": reason,
                "node": self.node,
                "peername": session.address,
                "disconnected_at": session.disconnected_ms,
                "timestamp": session.disconnected_ms,
            },
        )
        if session.expiry_interval == 0:
            self.end_session(session)
        elif session.expiry_interval != NEVER_EXPIRES:
            session.expiry_handle = self.loop.call_later(session.expiry_interval, self._expire, session)

    def end_session(self, session: Session) -> None:
        """Ends a session: its subscriptions go, and a will still waiting for its delay is sent now."""
        for handle in (session.expiry_handle, session.resend_handle):
            if handle is not None:
                handle.cancel()
        session.expiry_handle = session.resend_handle = None
        if session.delayed_will is not None:
            will, handle = session.delayed_will
            handle.cancel()
            session.delayed_will = None
            self._publish_will(session, will)
        self._release_shared(session)
        for subscription in list(session.subscriptions.values()):
            self._remove_subscription(session, subscription)
        session.subscriptions.clear()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    def _expire(self, session: Session) -> None:
        if self.sessions.get(session.client_id) is session and session.connection is None:
            self.end_session(session)

    def _delayed_will_due(self, session: Session) -> None:
        if session.delayed_will is not None:
            will = session.delayed_will[0]
            session.delayed_will = None
            self._publish_will(session, will)

    def _publish_will(self, session: Session, will: Will) -> None:
        if not self.config.acl.allows(session.username, "publish", will.topic, client_id=session.client_id):
            return
        props = dict(will.properties)
        props.pop(Prop.WILL_DELAY_INTERVAL, None)
        self.publish(
            Message.create(will.topic, will.payload, will.qos, will.retain, props, session.client_id, self.loop.time())
        )

    def set_keepalive(self, client_id: str, seconds: int) -> str | None:
        """Changes a live client's enforced keep-alive at once; returns why it cannot, or None."""
        session = self.sessions.get(client_id)
        if session is None or session.connection is None:
            return f"client {client_id!r} is not online"
        if session.connection.connect_keepalive == 0:
            return f"client {client_id!r} connected with keep-alive 0, which cannot be changed"
        session.connection.set_keepalive(seconds)
        session.keepalive = seconds
        return None

    def connected_count(self, *, from_host: str | None = None) -> int:
        """Sessions connected now (from ``from_host`` only, when given)."""
        return sum(
            1
            for session in self.sessions.values()
            if session.connection is not None and (from_host is None or session.address.rsplit(":", 1)[0] == from_host)
        )

    def new_client_id(self) -> str:
        return f"auto-{uuid.uuid4().hex}"

    # -- publishing -------------------------------------------------------------

    def publish(self, message: Message, *, event: bool = False) -> str:
        """Stores one message (client events are not stored) and routes it to every matching
        session and shared group; returns its message id."""
        self.counters["events_published" if event else "messages_received"] += 1
        message_id = self.store.new_id() if event else self.store.add(message, now_ms())
        if message.retain:
            self._retain(message)
        matches, groups = self.tree.match(message.topic, message.publisher)
        sessions = self.sessions
        for client_id, match in matches.items():
            session = sessions.get(client_id)
            if session is not None:
                self._deliver(session, message, match)
        for group in groups:
            self._dispatch_shared(group, message)
        return message_id

    def _retain(self, message: Message) -> None:
        """Keeps (or, with an empty payload, clears) the topic's retained message, within
        ``max_retained_bytes`` in all: past it a new one is delivered, not retained."""
        old = self.retained.pop(message.topic, None)
        if old is not None:
            self.retained_bytes -= len(old.payload)
        if not message.payload or message.immediate:
            return
        if self.retained_bytes + len(message.payload) > self.config.max_retained_bytes:
            self.counters["retained_refused_full"] += 1
            return
        self.retained[message.topic] = message
        self.retained_bytes += len(message.payload)

    def _send_qos0(self, session: Session, delivery: Delivery) -> None:
        """A QoS 0 message for a connected session, unless its connection is already that far behind:
        QoS 0 has no window, so a slow subscriber would otherwise grow the broker's write buffer."""
        connection = session.connection
        assert connection is not None
        if connection.buffered_bytes() > self.config.max_write_buffer:
            self.counters["messages_dropped_slow_subscriber"] += 1
            return
        self._send_publish(session, delivery, 0, False)

    def _deliver(self, session: Session, message: Message, match: Match) -> None:
        qos = min(message.qos, match.qos)
        delivery = Delivery(message, qos, message.retain and match.retain_as_published, match.identifiers)
        if qos == 0:
            if session.connection is not None:
                self._send_qos0(session, delivery)
            return
        if message.immediate:
            if session.has_room():
                self._send_inflight(session, delivery)
            else:
                self.counters["messages_dropped_expired"] += 1
            return
        self._enqueue(session.queue, delivery)
        if session.connection is not None:
            self.drain(session)

    def _enqueue(self, queue: MessageQueue, item: Delivery | Message) -> None:
        """Appends to a session's queue or a group's backlog, dropping the oldest past ``max_queued``
        messages or ``max_queued_bytes`` of payload."""
        queue.append(item)
        config = self.config
        while len(queue) > 1 and (len(queue) > config.max_queued or queue.bytes > config.max_queued_bytes):
            queue.popleft()
            self.counters["messages_dropped_queue_full"] += 1

    def drain(self, session: Session) -> None:
        """Sends what waits for the session (its queue, then its shared groups' backlogs)
        while its in-flight window has room (flow control: MQTT 5 Receive Maximum)."""
        queue = session.queue
        inflight = session.inflight
        while queue and len(inflight) < session.window:
            self._send_inflight(session, queue.popleft())
        for group in session.groups:
            while group.backlog and session.has_room():
                self._send_shared(session, group, group.backlog.popleft())

    def _send_inflight(self, session: Session, delivery: Delivery) -> None:
        packet_id = session.allocate_packet_id()
        if self._send_publish(session, delivery, packet_id, False):
            session.inflight[packet_id] = Inflight(delivery, False, self.loop.time())
            if session.resend_handle is None and self.config.retry_interval:
                self._arm_resend(session)

    def _send_publish(self, session: Session, delivery: Delivery, packet_id: int, dup: bool) -> bool:
        message = delivery.message
        connection = session.connection
        assert connection is not None
        level = connection.level
        props = message.properties if level == 5 else None
        topic_bytes = message.topic_bytes
        new_alias = None
        if props is not None and (message.expires_at is not None or delivery.identifiers or session.alias_maximum):
            props = dict(props)
            if delivery.identifiers:
                props[Prop.SUBSCRIPTION_IDENTIFIER] = delivery.identifiers
            if session.alias_maximum:
                alias = session.aliases.get(message.topic)
                if alias is not None:
                    topic_bytes = _ALIAS_ONLY
                elif len(session.aliases) < session.alias_maximum:
                    alias = new_alias = len(session.aliases) + 1
                if alias is not None:
                    props[Prop.TOPIC_ALIAS] = alias
        if message.expires_at is not None:
            if message.immediate:
                remaining = 0
            else:
                # Rounded to milliseconds first: (t + 3600) - t may be 3600.0000001 in floating point.
                remaining = math.ceil(round(message.expires_at - self.loop.time(), 3))
                if remaining <= 0 and not dup:
                    self.counters["messages_dropped_expired"] += 1
                    return False
                remaining = max(remaining, 1)
            if props is not None:
                props[Prop.MESSAGE_EXPIRY_INTERVAL] = remaining
        packet = encode_publish(
            topic_bytes, message.payload, delivery.qos, delivery.retain, dup, packet_id, level, props
        )
        if session.max_packet_size and len(packet) > session.max_packet_size:
            self.counters["messages_dropped_too_large"] += 1
            return False
        if new_alias is not None:
            session.aliases[message.topic] = new_alias
        connection.send(packet)
        self.counters["messages_delivered"] += 1
        return True

    # -- acknowledgements and resending -------------------------------------------

    def acknowledge(self, session: Session, packet_type: int, packet_id: int, reason_code: int) -> None:
        """Handles PUBACK, PUBREC and PUBCOMP from a subscriber."""
        connection = session.connection
        assert connection is not None
        entry = session.inflight.get(packet_id)
        if entry is None:
            if packet_type == PacketType.PUBREC:
                # MQTT 5 4.3.3: answer a PUBREC we do not know with PUBREL "not found".
                connection.send(
                    encode_ack(PacketType.PUBREL, packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND, connection.level)
                )
            return
        if packet_type == PacketType.PUBREC and reason_code < 0x80:
            entry.released = True
            entry.sent_at = self.loop.time()
            connection.send(encode_ack(PacketType.PUBREL, packet_id, 0, connection.level))
            return
        del session.inflight[packet_id]
        self.drain(session)

    def _resend_inflight(self, session: Session) -> None:
        """Every unacknowledged PUBLISH again with DUP, every unfinished QoS 2 exchange with its PUBREL."""
        connection = session.connection
        assert connection is not None
        now = self.loop.time()
        for packet_id, entry in list(session.inflight.items()):
            if entry.released:
                connection.send(encode_ack(PacketType.PUBREL, packet_id, 0, connection.level))
            elif not self._send_publish(session, entry.delivery, packet_id, True):
                del session.inflight[packet_id]  # now too large for this connection
                continue
            entry.sent_at = now
        if session.inflight and self.config.retry_interval:
            self._arm_resend(session)

    def _arm_resend(self, session: Session) -> None:
        if session.resend_handle is not None or not session.inflight:
            return
        oldest = min(entry.sent_at for entry in session.inflight.values())
        session.resend_handle = self.loop.call_at(oldest + self.config.retry_interval, self._resend_due, session)

    def _resend_due(self, session: Session) -> None:
        """The service resends an unacknowledged message while connected after its retry interval."""
        session.resend_handle = None
        connection = session.connection
        if connection is None:
            return
        now = self.loop.time()
        due = now - self.config.retry_interval
        for packet_id, entry in list(session.inflight.items()):
            if entry.sent_at > due:
                continue
            if entry.released:
                connection.send(encode_ack(PacketType.PUBREL, packet_id, 0, connection.level))
            elif not self._send_publish(session, entry.delivery, packet_id, True):
                del session.inflight[packet_id]
                continue
            entry.sent_at = now
        self._arm_resend(session)

    # -- shared subscriptions --------------------------------------------------------

    def _dispatch_shared(self, group: SharedGroup, message: Message) -> None:
        """One member gets the message: round robin over connected members with room in their window."""
        sessions = self.sessions
        for client_id in group.rotation():
            session = sessions[client_id]
            if session.connection is not None and (message.qos == 0 or session.has_room()):
                group.served(client_id)
                self._send_shared(session, group, message)
                return
        if message.qos == 0 or message.immediate:
            self.counters["messages_dropped_no_subscriber"] += 1
            return
        self._enqueue(group.backlog, message)

    def _send_shared(self, session: Session, group: SharedGroup, message: Message) -> None:
        subscription = group.members[session.client_id]
        qos = min(message.qos, subscription.qos)
        identifiers = [subscription.identifier] if subscription.identifier else []
        delivery = Delivery(message, qos, message.retain and subscription.retain_as_published, identifiers, group)
        if qos == 0:
            self._send_qos0(session, delivery)
        else:
            self._send_inflight(session, delivery)

    def _release_shared(self, session: Session) -> None:
        """A member went away: what it got through a group and did not acknowledge goes back to the
        group, first in line, for another member (or for it, when it comes back first)."""
        returned: dict[int, tuple[SharedGroup, list[Message]]] = {}
        for packet_id, entry in list(session.inflight.items()):
            group = entry.delivery.group
            if group is None or entry.released:
                continue
            del session.inflight[packet_id]
            returned.setdefault(id(group), (group, []))[1].append(entry.delivery.message)
        for group, messages in returned.values():
            group.backlog.extendleft(reversed(messages))
            self._drain_group(group)

    def _drain_group(self, group: SharedGroup) -> None:
        for client_id in group.rotation():
            session = self.sessions[client_id]
            while group.backlog and session.has_room():
                self._send_shared(session, group, group.backlog.popleft())
            if not group.backlog:
                return

    # -- subscriptions ------------------------------------------------------------------

    def subscribe(self, session: Session, subscription: Subscription) -> None:
        existed = subscription.topic_filter in session.subscriptions
        session.subscriptions[subscription.topic_filter] = subscription
        group = self.tree.add(session.client_id, subscription)
        self._emit_subscription_event("session_subscribed", session, subscription)
        if group is not None:
            if group not in session.groups:
                session.groups.append(group)
            self.drain(session)
            return  # retained messages are not sent on a shared subscription (MQTT 5 4.8.2)
        handling = subscription.retain_handling
        if handling == 2 or (handling == 1 and existed):
            return
        identifiers = [subscription.identifier] if subscription.identifier else []
        for topic, message in list(self.retained.items()):
            if topic_matches(subscription.filter, topic):
                self._deliver(session, message, Match(subscription.qos, True, list(identifiers)))

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        subscription = session.subscriptions.pop(topic_filter, None)
        if subscription is None:
            return False
        self._remove_subscription(session, subscription)
        self._emit_subscription_event("session_unsubscribed", session, subscription)
        return True

    def _remove_subscription(self, session: Session, subscription: Subscription) -> None:
        emptied = self.tree.remove(session.client_id, subscription)
        if subscription.share_group is None:
            return
        for group in session.groups:
            if group.name == subscription.share_group and group.filter == subscription.filter:
                session.groups.remove(group)
                break
        if emptied is not None and emptied.backlog:
            self.counters["messages_dropped_no_subscriber"] += len(emptied.backlog)
            emptied.backlog.clear()

    def shared_lag(self, name: str, topic_filter: str) -> int:
        """The messages of shared group ``name`` on ``topic_filter`` not yet acknowledged: waiting
        for a member, queued for one, or sent and unacknowledged (0 for a group with no member)."""
        group = self.tree.group(name, topic_filter)
        if group is None:
            return 0
        lag = len(group.backlog)
        for client_id in group.members:
            session = self.sessions.get(client_id)
            if session is not None:
                lag += sum(1 for delivery in session.queue if delivery.group is group)
                lag += sum(1 for inflight in session.inflight.values() if inflight.delivery.group is group)
        return lag

    # -- events ---------------------------------------------------------------------------

    def _emit_subscription_event(self, name: str, session: Session, subscription: Subscription) -> None:
        fields: dict[str, object] = {
            "clientid": session.client_id,
            "username": session.username,
            "topic": subscription.topic_filter,
            "event": CLIENT_EVENTS[name].event,
            "timestamp": now_ms(),
        }
        if name == "session_subscribed":
            subopts: dict[str, object] = {"qos": subscription.qos}
            if subscription.share_group is not None:
                subopts["share"] = subscription.share_group
            fields["subopts"] = subopts
        self.emit_event(name, fields)

    def emit_event(self, name: str, fields: dict) -> None:
        """Publishes a client event as QoS 0 JSON on ``$events/{name}``: lost or delayed
        as ``event_loss`` and ``event_delay`` say (the service's events are asynchronous)."""
        config = self.config
        if config.event_loss and self._event_random.random() < config.event_loss:
            self.counters["events_lost"] += 1
            return
        topic = event_topic(name)
        payload = json.dumps(fields, separators=(",", ":")).encode()
        if config.event_delay:
            self.loop.call_later(self._event_random.uniform(0, config.event_delay), self._publish_event, topic, payload)
        else:
            self._publish_event(topic, payload)

    def _publish_event(self, topic: str, payload: bytes) -> None:
        self.publish(Message.create(topic, payload, 0, False, {}, None, self.loop.time()), event=True)
