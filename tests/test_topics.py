"""Topic names and filters (pure logic)."""

from __future__ import annotations

import pytest

from tdmq_beam.emulator.subscription_tree import Subscription, SubscriptionTree
from tdmq_beam.mqtt.topics import filter_covers, split_shared, topic_filter_error, topic_matches, topic_name_error


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
    subscribers, _groups = tree.match(topic)
    assert ("c" in subscribers) is expected


def test_tree_removal_prunes_and_keeps_others():
    tree = SubscriptionTree()
    tree.add("a", Subscription("x/+/z", 0))
    tree.add("b", Subscription("x/+/z", 1))
    tree.remove("a", Subscription("x/+/z", 0))
    assert set(tree.match("x/y/z")[0]) == {"b"}
    tree.remove("b", Subscription("x/+/z", 1))
    assert tree.match("x/y/z") == ({}, [])
    assert tree._root.children == {}


def test_tree_shared_groups_match_apart_and_go_with_their_last_member():
    tree = SubscriptionTree()
    shared = Subscription("$share/g/x/#", 1, share_group="g", filter="x/#")
    group = tree.add("a", shared)
    assert tree.add("b", Subscription("$share/g/x/#", 0, share_group="g", filter="x/#")) is group
    tree.add("c", Subscription("x/y", 0))
    subscribers, groups = tree.match("x/y")
    assert set(subscribers) == {"c"} and groups == [group]
    assert set(group.members) == {"a", "b"} and group.topic_filter == "$share/g/x/#"
    assert tree.remove("a", shared) is None  # b is still a member
    assert tree.remove("b", shared) is group  # the group is gone with its last member
    assert tree.match("x/y")[1] == []


@pytest.mark.parametrize(
    "topic_filter, expected",
    [
        ("$share/g/a/+", ("g", "a/+")),
        ("$share/g/#", ("g", "#")),
        ("a/b", None),
        ("$sharex/g/a", None),
    ],
)
def test_split_shared(topic_filter, expected):
    assert split_shared(topic_filter) == expected


@pytest.mark.parametrize("topic_filter", ["$share//a", "$share/g", "$share/g/", "$share/g+/a", "$share/g/a/#/b"])
def test_split_shared_refuses_malformed(topic_filter):
    with pytest.raises(ValueError):
        split_shared(topic_filter)


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
