"""Paired comparison of two perplexities measured on the same windows.

Both runs score the same test windows (equal token counts), so the change of mean NLL is the
mean of the per-window differences and its standard error is std(diff) / sqrt(W). Reported as a
percentage change of perplexity, 100 * (exp(mean(other) - mean(base)) - 1), with the SE in the
same units (100 * SE of the NLL difference, first order). A change is beyond noise at ~2 SE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def paired_change(base: Sequence[float], other: Sequence[float]) -> tuple[float, float]:
    """(% change of PPL of ``other`` against ``base``, paired standard error in %); NaN SE for one window."""
    if len(base) != len(other) or not base:
        raise ValueError(f"paired comparison needs equal, non-empty window lists ({len(base)} vs {len(other)})")
    diff = [o - b for b, o in zip(base, other, strict=True)]
    mean = sum(diff) / len(diff)
    pct = (math.exp(mean) - 1.0) * 100.0
    if len(diff) < 2:
        return pct, float("nan")
    var = sum((d - mean) ** 2 for d in diff) / (len(diff) - 1)
    return pct, math.sqrt(var / len(diff)) * 100.0
