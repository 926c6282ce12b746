"""Topic names and filters (pure logic)."""

from __future__ import annotations

import pytest

from tdmq_beam.emulator.subscription_tree import Subscription, SubscriptionTree
from tdmq_beam.topics import filter_covers, topic_filter_error, topic_matches, topic_name_error


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("", "empty"),
        ("a/+/b", "wildcard"),
        ("a/#", "wildcard"),
        ("a\x00b", "U+0000"),
        ("a" * 65536, "65535"),
        ("\ud800", "UTF-8"),
    ],
)
def test_invalid_topic_names(topic, problem):
    assert problem in topic_name_error(topic)


@pytest.mark.parametrize("topic", ["a", "/", "a//b", "$SYS/x", "ü/ß", "a" * 65535, " "])
def test_valid_topic_names(topic):
    assert topic_name_error(topic) is None


@pytest.mark.parametrize("topic_filter", ["a/#/b", "a/b#", "a+/b", "", "a\x00"])
def test_invalid_filters(topic_filter):
    assert topic_filter_error(topic_filter)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("sport/#", "sport", True),
        ("sport/#", "sport/tennis/player1", True),
        ("sport/+", "sport/", True),
        ("sport/+", "sport", False),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("#", "$SYS/x", False),
        ("+/monitor", "$SYS/monitor", False),
        ("$SYS/#", "$SYS/monitor", True),
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
    ],
)
def test_matching(topic_filter, topic, expected):
    assert topic_matches(topic_filter, topic) is expected
    tree = SubscriptionTree()
    tree.add("c", Subscription(topic_filter, 1))
    assert ("c" in tree.match(topic)) is expected


def test_tree_removal_prunes_and_keeps_others():
    tree = SubscriptionTree()
    tree.add("a", Subscription("x/+/z", 0))
    tree.add("b", Subscription("x/+/z", 1))
    tree.remove("a", "x/+/z")
    assert set(tree.match("x/y/z")) == {"b"}
    tree.remove("b", "x/+/z")
    assert tree.match("x/y/z") == {}
    assert tree._root.children == {}


@pytest.mark.parametrize(
    ("outer", "inner", "expected"),
    [
        ("devices/#", "devices/+/state", True),
        ("devices/#", "devices", True),
        ("devices/a", "devices/+", False),
        ("devices/+", "devices/a", True),
        ("devices/+", "devices/#", False),
        ("#", "anything/#", True),
    ],
)
def test_filter_covers(outer, inner, expected):
    assert filter_covers(outer, inner) is expected
