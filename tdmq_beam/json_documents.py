"""JSON from untrusted text (input lines, message payloads), with its nesting bounded.

Python's ``json`` recurses once per level of nesting: a line of 100,000 ``[``
raises `RecursionError`, which is not a `ValueError` and so escaped the
handlers that turn bad input into dead letters; and a document nested just
under the interpreter's limit parses, then breaks whatever recurses over it
next (Beam's pickling coders, with the dead letter that carries it). So JSON
read from outside is parsed here, and a document nested deeper than
``max_depth`` is refused as a `ValueError` naming the limit. The check costs
two ``count`` calls on the text unless it has more brackets than the limit.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["DEFAULT_MAX_DEPTH", "load_json", "nesting_depth"]

DEFAULT_MAX_DEPTH = 64
"""Levels of arrays and objects a document may nest (a device command uses two or three)."""


def load_json(text: str | bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """The document ``text`` holds.

    Raises:
        ValueError: not JSON (``json.JSONDecodeError``), or nested deeper than ``max_depth``.
    """
    try:
        document = json.loads(text)
    except RecursionError:
        raise ValueError(f"nested deeper than the limit of {max_depth} levels") from None
    if _brackets(text) > max_depth and (depth := nesting_depth(document)) > max_depth:
        raise ValueError(f"nested {depth} levels deep, over the limit of {max_depth}")
    return document


def nesting_depth(value: Any) -> int:
    """Levels of lists and dicts in ``value`` (0 for a scalar), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _brackets(text: str | bytes) -> int:
    """An upper bound of the nesting: every level opens with one of these."""
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{")
    return text.count("[") + text.count("{")
