"""A tree of topic filters that finds a topic's subscribers without scanning them all.

Ordinary subscriptions and shared subscription groups (``$share/{group}/{filter}``)
hang on the same nodes: a match returns every ordinary subscriber (one `Match`
each, overlapping subscriptions merged) and every matching group, from which the
broker picks one member.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tdmq_beam.emulator.message import Message
from tdmq_beam.emulator.message_queue import MessageQueue

__all__ = ["Match", "SharedGroup", "Subscription", "SubscriptionTree"]


@dataclass(frozen=True, slots=True)
class Subscription:
    """One client's subscription to one topic filter (MQTT 5 subscription options).

    Attributes:
        topic_filter: the filter as subscribed, ``$share/{group}/{filter}`` for a
            shared subscription.
        share_group: the shared subscription group, or None.
        filter: the filter that topics are matched against (without ``$share/{group}/``).
    """

    topic_filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    identifier: int | None = None
    share_group: str | None = None
    filter: str = ""

    def __post_init__(self) -> None:
        if not self.filter:
            object.__setattr__(self, "filter", self.topic_filter)


@dataclass(slots=True)
class Match:
    """What one client gets for one message: overlapping subscriptions make one copy
    at the highest QoS they grant, carrying every subscription identifier."""

    qos: int
    retain_as_published: bool
    identifiers: list[int]


@dataclass(eq=False)
class SharedGroup:
    """The members of one shared subscription group on one filter.

    Each message goes to one member, round robin. Messages no member can take
    now (all offline or their windows full), and the unacknowledged messages of
    a member that went away, wait in ``backlog`` for the first member that can.
    """

    name: str
    filter: str
    members: dict[str, Subscription] = field(default_factory=dict)
    backlog: MessageQueue[Message] = field(default_factory=MessageQueue)
    cursor: int = 0

    @property
    def topic_filter(self) -> str:
        return f"$share/{self.name}/{self.filter}"

    def rotation(self) -> list[str]:
        """Member client ids, starting after the one served last."""
        ids = list(self.members)
        if not ids:
            return ids
        start = self.cursor % len(ids)
        return ids[start:] + ids[:start]

    def served(self, client_id: str) -> None:
        ids = list(self.members)
        self.cursor = ids.index(client_id) + 1


class _Node:
    __slots__ = ("children", "groups", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.subscribers: dict[str, Subscription] = {}
        self.groups: dict[str, SharedGroup] = {}


class SubscriptionTree:
    """Topic filters by level; ``+`` and ``#`` are children like any other level."""

    def __init__(self) -> None:
        self._root = _Node()

    def add(self, client_id: str, subscription: Subscription) -> SharedGroup | None:
        """Adds or replaces a subscription; returns its group when it is shared."""
        node = self._root
        for level in subscription.filter.split("/"):
            node = node.children.setdefault(level, _Node())
        if subscription.share_group is None:
            node.subscribers[client_id] = subscription
            return None
        group = node.groups.get(subscription.share_group)
        if group is None:
            group = node.groups[subscription.share_group] = SharedGroup(subscription.share_group, subscription.filter)
        group.members[client_id] = subscription
        return group

    def group(self, name: str, topic_filter: str) -> SharedGroup | None:
        """The shared group ``name`` on exactly ``topic_filter``, or None when it has no member."""
        node: _Node | None = self._root
        for level in topic_filter.split("/"):
            node = node.children.get(level) if node is not None else None
        return node.groups.get(name) if node is not None else None

    def remove(self, client_id: str, subscription: Subscription) -> SharedGroup | None:
        """Removes a subscription; returns its group if the group is now empty (and gone)."""
        path = [self._root]
        levels = subscription.filter.split("/")
        for level in levels:
            child = path[-1].children.get(level)
            if child is None:
                return None
            path.append(child)
        node = path[-1]
        emptied = None
        if subscription.share_group is None:
            node.subscribers.pop(client_id, None)
        else:
            group = node.groups.get(subscription.share_group)
            if group is not None:
                group.members.pop(client_id, None)
                if not group.members:
                    emptied = node.groups.pop(subscription.share_group)
        # Prune the branch back to the last node still in use.
        for depth in range(len(levels), 0, -1):
            node = path[depth]
            if node.subscribers or node.children or node.groups:
                break
            del path[depth - 1].children[levels[depth - 1]]
        return emptied

    def match(self, topic: str, publisher: str | None = None) -> tuple[dict[str, Match], list[SharedGroup]]:
        """Every client with an ordinary subscription matching ``topic``, and every matching group.

        Args:
            topic: the topic name of a message.
            publisher: the client id that published it, for no-local subscriptions.
        """
        levels = topic.split("/")
        found: dict[str, Match] = {}
        groups: list[SharedGroup] = []
        dollar = topic.startswith("$")
        stack = [(self._root, 0)]
        while stack:
            node, depth = stack.pop()
            children = node.children
            wildcards_allowed = not (dollar and depth == 0)
            if wildcards_allowed and "#" in children:
                hash_node = children["#"]
                _collect(hash_node.subscribers, found, publisher)
                if hash_node.groups:
                    groups.extend(hash_node.groups.values())
            if depth == len(levels):
                _collect(node.subscribers, found, publisher)
                if node.groups:
                    groups.extend(node.groups.values())
                continue
            child = children.get(levels[depth])
            if child is not None:
                stack.append((child, depth + 1))
            if wildcards_allowed and "+" in children:
                stack.append((children["+"], depth + 1))
        return found, groups


def _collect(subscribers: dict[str, Subscription], found: dict[str, Match], publisher: str | None) -> None:
    for client_id, sub in subscribers.items():
        if sub.no_local and client_id == publisher:
            continue
        match = found.get(client_id)
        if match is None:
            found[client_id] = Match(sub.qos, sub.retain_as_published, [sub.identifier] if sub.identifier else [])
            continue
        match.qos = max(match.qos, sub.qos)
        match.retain_as_published = match.retain_as_published or sub.retain_as_published
        if sub.identifier:
            match.identifiers.append(sub.identifier)
