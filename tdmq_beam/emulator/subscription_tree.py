"""A tree of topic filters that finds a topic's subscribers without scanning them all."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Match", "Subscription", "SubscriptionTree"]


@dataclass(frozen=True, slots=True)
class Subscription:
    """One client's subscription to one topic filter (MQTT 5 subscription options)."""

    topic_filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    identifier: int | None = None


@dataclass(slots=True)
class Match:
    """What one client gets for one message: overlapping subscriptions make one copy
    at the highest QoS they grant, carrying every subscription identifier."""

    qos: int
    retain_as_published: bool
    identifiers: list[int]


class _Node:
    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.subscribers: dict[str, Subscription] = {}


class SubscriptionTree:
    """Topic filters by level; ``+`` and ``#`` are children like any other level."""

    def __init__(self) -> None:
        self._root = _Node()

    def add(self, client_id: str, subscription: Subscription) -> None:
        node = self._root
        for level in subscription.topic_filter.split("/"):
            node = node.children.setdefault(level, _Node())
        node.subscribers[client_id] = subscription

    def remove(self, client_id: str, topic_filter: str) -> None:
        path = [self._root]
        levels = topic_filter.split("/")
        for level in levels:
            child = path[-1].children.get(level)
            if child is None:
                return
            path.append(child)
        path[-1].subscribers.pop(client_id, None)
        # Prune the branch back to the last node still in use.
        for depth in range(len(levels), 0, -1):
            node = path[depth]
            if node.subscribers or node.children:
                break
            del path[depth - 1].children[levels[depth - 1]]

    def match(self, topic: str, publisher: str | None = None) -> dict[str, Match]:
        """Every client with a subscription matching ``topic``.

        Args:
            topic: the topic name of a message.
            publisher: the client id that published it, for no-local subscriptions.
        """
        levels = topic.split("/")
        found: dict[str, Match] = {}
        dollar = topic.startswith("$")
        stack = [(self._root, 0)]
        while stack:
            node, depth = stack.pop()
            children = node.children
            wildcards_allowed = not (dollar and depth == 0)
            if wildcards_allowed and "#" in children:
                _collect(children["#"].subscribers, found, publisher)
            if depth == len(levels):
                _collect(node.subscribers, found, publisher)
                continue
            child = children.get(levels[depth])
            if child is not None:
                stack.append((child, depth + 1))
            if wildcards_allowed and "+" in children:
                stack.append((children["+"], depth + 1))
        return found


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
