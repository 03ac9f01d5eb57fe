"""JSON parsing with a nesting limit: hostile input is a ``ValueError`` naming the limit, never a
``RecursionError`` (the standard parser recurses once per level and fails at about 1,000 levels)."""

from __future__ import annotations

import json
from typing import Any

#: Deeper than any document a copy needs (a copiableAttributes document nests 6 levels, the AWS
#: CLI's copy-image-set-information 8).
MAX_DEPTH = 32


def depth(value: Any, stop_after: int | None = None) -> int:
    """How deeply a parsed JSON value nests (a scalar is 0, ``[]`` is 1), level by level without
    recursing; with ``stop_after``, counting stops one level past it (enough to refuse the value)."""
    level, frontier = 0, [value]
    while frontier:
        containers = [item for item in frontier if isinstance(item, (dict, list))]
        if not containers:
            break
        level += 1
        if stop_after is not None and level > stop_after:
            break
        frontier = [child for item in containers for child in (item.values() if isinstance(item, dict) else item)]
    return level


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads``, refusing documents nested deeper than ``max_depth`` with a ``ValueError``."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"it nests deeper than {max_depth} levels") from None
    if depth(value, stop_after=max_depth) > max_depth:
        raise ValueError(f"it nests deeper than {max_depth} levels")
    return value
