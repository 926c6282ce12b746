"""MQTT topic names and topic filters: validation and matching.

One module for the rules of MQTT 5 section 4.7, shared by the connector (which
validates a message before any request) and the emulator's broker and ACL.
"""

from __future__ import annotations

__all__ = [
    "MAX_TOPIC_BYTES",
    "SHARE_PREFIX",
    "filter_covers",
    "shared_subscription",
    "split_shared",
    "topic_filter_error",
    "topic_matches",
    "topic_name_error",
    "utf8_string_error",
]

MAX_TOPIC_BYTES = 65535
SHARE_PREFIX = "$share/"


def topic_name_error(topic: str) -> str | None:
    """Returns why ``topic`` is not a valid topic name to publish to, or None.

    A topic name is non-empty, has no wildcard (``+`` or ``#``), no U+0000 and
    at most 65,535 bytes of UTF-8.
    """
    if not topic:
        return "topic is empty"
    if "+" in topic or "#" in topic:
        return f"topic {topic!r} contains a wildcard ('+' or '#'); publish needs a topic name"
    if "\x00" in topic:
        return "topic contains the null character U+0000"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "topic is not valid UTF-8 (it contains a lone surrogate)"
    if size > MAX_TOPIC_BYTES:
        return f"topic is {size} bytes of UTF-8; MQTT allows at most {MAX_TOPIC_BYTES}"
    return None


def utf8_string_error(name: str, value: object) -> str | None:
    """Returns why ``value`` is not an MQTT UTF-8 string (MQTT 5 section 1.5.4), or None.

    An MQTT string is valid UTF-8 (no lone surrogates), has no U+0000 and is at
    most 65,535 bytes. ``name`` says what the value is, in the reason.
    """
    if not isinstance(value, str):
        return f"{name} must be a str, got {type(value).__name__}"
    if "\x00" in value:
        return f"{name} contains the null character U+0000"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{name} is not valid UTF-8"
    if size > MAX_TOPIC_BYTES:
        return f"{name} is {size} bytes of UTF-8; MQTT allows at most {MAX_TOPIC_BYTES}"
    return None


def topic_filter_error(topic_filter: str) -> str | None:
    """Returns why ``topic_filter`` is not a valid subscription filter, or None."""
    if not topic_filter:
        return "topic filter is empty"
    if "\x00" in topic_filter:
        return "topic filter contains the null character U+0000"
    if len(topic_filter.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        return f"topic filter is longer than {MAX_TOPIC_BYTES} bytes"
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "'#' must be the whole last level of a topic filter"
        if "+" in level and level != "+":
            return "'+' must be a whole level of a topic filter"
    return None


def split_shared(topic_filter: str) -> tuple[str, str] | None:
    """``(group, filter)`` of a shared subscription ``$share/{group}/{filter}``, or None for any other filter.

    Raises:
        ValueError: the filter starts with ``$share/`` but is not a valid shared
            subscription (MQTT 5 section 4.8.2): an empty group, a group with
            ``+`` or ``#``, or no valid filter after it.
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None
    group, sep, inner = topic_filter[len(SHARE_PREFIX) :].partition("/")
    if not group or "+" in group or "#" in group:
        raise ValueError(f"shared subscription group {group!r} must be non-empty, without '+' or '#'")
    if not sep or not inner:
        raise ValueError("a shared subscription needs a topic filter after $share/{group}/")
    problem = topic_filter_error(inner)
    if problem:
        raise ValueError(problem)
    return group, inner


def shared_subscription(expression: object) -> tuple[str, str] | None:
    """``(group, filter)`` of a valid ``$share/{group}/{filter}``; None for anything else."""
    if not isinstance(expression, str):
        return None
    try:
        return split_shared(expression)
    except ValueError:
        return None


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether the topic name ``topic`` matches ``topic_filter``.

    Topics starting with ``$`` never match a filter whose first level is a
    wildcard (MQTT 5 section 4.7.2).
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


def filter_covers(outer: str, inner: str) -> bool:
    """Whether every topic that ``inner`` can match is also matched by ``outer``.

    Used for ACL rules on subscriptions: a rule on ``devices/#`` covers a
    subscription to ``devices/+/state``, a rule on ``devices/a`` does not cover
    ``devices/+``.
    """
    outer_levels = outer.split("/")
    inner_levels = inner.split("/")
    for index, level in enumerate(outer_levels):
        if level == "#":
            return True
        if index >= len(inner_levels):
            return False
        other = inner_levels[index]
        if other == "#":
            return False
        if level != "+" and level != other:
            return False
    return len(outer_levels) == len(inner_levels)
