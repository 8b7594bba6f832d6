"""`select_segment`: the tool behind `<retrieve>s, e</retrieve>`, and the first turn's frames.

Video-MTR spreads frames uniformly (linspace) over the pool for the first turn and over the
requested range for a retrieve, returning ``min(e - s + 1, frames_per_retrieve)`` frames. With a
segment store, both can instead rank pool frames by similarity to the question
(`vmtr.tools.guided`); that is off by default so the released checkpoint sees what it was
trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vmtr.tools.guided import mix_first_turn, pick_in_range
from vmtr.tools.spread import uniform_indices

__all__ = ["first_turn_frames", "relevant_pool_indices", "select_segment", "uniform_indices"]


def first_turn_frames(
    pool_size: int,
    n: int,
    *,
    scores: Sequence[float] | None = None,
    n_top: int = 0,
) -> list[int]:
    """Pool indices shown on turn 1: uniform, or uniform mixed with the ``n_top`` best scored."""
    if pool_size <= 0:
        return []
    if scores is None or n_top <= 0:
        return uniform_indices(0, pool_size - 1, n)

    return mix_first_turn(np.asarray(scores, dtype=np.float32), max(n - n_top, 1), n_top, pool_size)


def select_segment(
    start: int,
    end: int,
    n: int,
    *,
    scores: Sequence[float] | None = None,
) -> list[int]:
    """Frames for a retrieve of ``start..end``: uniform, or the best scored in time order."""
    if scores is None:
        return uniform_indices(start, end, n)

    return pick_in_range(np.asarray(scores, dtype=np.float32), start, end, n)


def relevant_pool_indices(pool: Sequence[float], windows: Sequence[Sequence[float]]) -> set[int]:
    """Pool frames inside the annotated windows; the nearest pool frame for a window too narrow
    to contain one (as with a one-pool-frame needle)."""
    chosen: set[int] = set()
    for start, end in windows:
        inside = {i for i, t in enumerate(pool) if start <= t <= end}
        if not inside and pool:
            middle = (start + end) / 2
            inside = {min(range(len(pool)), key=lambda i: abs(pool[i] - middle))}
        chosen |= inside
    return chosen
