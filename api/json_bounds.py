"""Bounds on a JSON document before it is stored: depth, node count, string length, finite numbers.

Checked at upload, so a stored document can always be hashed, serialised and listed again: a
``params`` object nested a few hundred levels deep would otherwise be stored, then make every
team's listing fail in the response serialiser (pydantic stops at depth 255; the json module
recurses). The walk is iterative, so no depth can make the check itself fail.
"""

from __future__ import annotations

import math
from typing import Any


class DocumentBoundsError(ValueError):
    """The document is valid JSON but larger or deeper than the service stores."""


def check_json_bounds(value: Any, *, what: str, max_depth: int, max_nodes: int, max_string: int) -> None:
    """Raise DocumentBoundsError (message names ``what`` and the bound) unless ``value`` fits."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise DocumentBoundsError(f"{what} has more than {max_nodes} values")
        if isinstance(item, dict):
            if depth > max_depth:
                raise DocumentBoundsError(f"{what} is nested deeper than {max_depth} levels")
            for key, child in item.items():
                if len(key) > max_string or "\x00" in key:
                    raise DocumentBoundsError(f"{what} has a key longer than {max_string} characters or with a NUL")
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                raise DocumentBoundsError(f"{what} is nested deeper than {max_depth} levels")
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            if len(item) > max_string or "\x00" in item:
                raise DocumentBoundsError(f"{what} has a string longer than {max_string} characters or with a NUL")
        elif isinstance(item, float) and not math.isfinite(item):
            raise DocumentBoundsError(f"{what} contains NaN or Infinity (not JSON)")
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) >= 2**63:
            raise DocumentBoundsError(f"{what} has an integer outside the 64-bit range")
