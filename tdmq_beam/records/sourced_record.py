"""`SourcedRecord`: a record, and where it came from, carried through the transforms with it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["SourcedRecord", "source_of"]


class SourcedRecord(dict):
    """A record (the dict every transform maps) and its ``source``: the file and line a backfill
    read it from, the Beam YAML row it was parsed from.

    To every transform it is the dict it holds: the source reaches no payload, journal key or
    result file (``json.dumps`` and ``dict()`` see the items only) and takes no field of the
    schema; Beam's coders pickle it with its slot. So an output whose element is one (a
    `FailedMessage`, a `PublishedMessage`) can say where its input came from.

    Args:
        source: where the record came from.
        record: the record's items.
        defaults: items the record's own win over (a schema's defaults), or None.
    """

    __slots__ = ("source",)

    def __init__(self, source: Any, record: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> None:
        if defaults:  # one dict built either way: this is on every command's path
            super().__init__(defaults)
            self.update(record)
        else:
            super().__init__(record)
        self.source = source


def source_of(element: Any, default: Any = None) -> Any:
    """``element``'s source when it is a `SourcedRecord`, else ``default``."""
    return element.source if isinstance(element, SourcedRecord) else default
