"""Uniform spreads of pool indices: Video-MTR's first turn (over the pool) and retrieve (over
the requested range) both take evenly spaced frames (numpy ``linspace``, rounded)."""

from __future__ import annotations

import numpy as np


def uniform_indices(start: int, end: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``start..end`` inclusive, rounded, unique, sorted."""
    if end < start or n <= 0:
        return []
    count = min(n, end - start + 1)
    if count <= 0:
        return []
    picks = np.linspace(start, end, count).round().astype(int)
    return sorted({int(i) for i in picks})
