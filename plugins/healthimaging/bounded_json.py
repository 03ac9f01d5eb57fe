"""JSON parsing with a nesting limit: hostile input is a ``ValueError`` naming the limit, never a
``RecursionError`` (the standard parser recurses once per level and fails at about 1,000 levels)."""

from __future__ import annotations

import json
from typing import Any

#: Deeper than any document a copy needs (a copiableAttributes document nests 6 levels, the AWS
#: CLI's copy-image-set-information 8).
MAX_DEPTH = 32


def depth(value: Any) -> int:
    """How deeply a parsed JSON value nests (a scalar is 0, ``[]`` is 1), without recursing."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads``, refusing documents nested deeper than ``max_depth`` with a ``ValueError``."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"it nests deeper than {max_depth} levels") from None
    if depth(value) > max_depth:
        raise ValueError(f"it nests deeper than {max_depth} levels")
    return value
