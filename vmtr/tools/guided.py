"""CLIP-guided frame choice for `select_segment` and the first turn.

Video-MTR picks frames by `linspace` only: the first turn spreads 16 frames over the pool, and a
retrieve spreads at most 8 over the asked range. With the segment store on, vmtr instead ranks the
pool frames by how similar they are to the question (`SegmentStore.scores_at`) and keeps the best
ones, spread out so that a run of near-identical neighbours cannot fill the budget. This departs
from the paper; both uses are settings that are off by default.

Everything here is a plain function over a 1-D array of per-pool-frame scores, returning pool
indices in time order, so the rules can be checked by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vmtr.tools.spread import uniform_indices


def _as_scores(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"scores must be 1-D (one per pool frame), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("scores must be finite")
    return array


def _by_score(candidates: Sequence[int], scores: np.ndarray) -> list[int]:
    """Candidates best first; ties go to the earlier frame so results never depend on sort luck."""
    return sorted(candidates, key=lambda i: (-scores[i], i))


def _far_enough(index: int, chosen: Sequence[int], min_gap: int) -> bool:
    return all(abs(index - other) >= min_gap for other in chosen)


def pick_in_range(
    scores: Sequence[float] | np.ndarray,
    start: int,
    end: int,
    n: int,
    min_gap: int | None = None,
) -> list[int]:
    """The `n` best-scoring pool indices in [start, end], at least `min_gap` apart, in time order.

    `min_gap` defaults to half the uniform spacing, `max(1, (end - start + 1) // (2 * n))`, so the
    picks can cluster around what the question asks for but never on adjacent near-duplicates.
    When too few frames pass the gap rule (a short range, or the best frames bunched together),
    the rest are filled from the uniform grid of the range, farthest from the picks first, and
    then by score; a range with at most `n` frames returns all of them, as uniform choice would,
    and so does a range whose scores are all equal (no signal to rank by).
    """
    values = _as_scores(scores)
    if not 0 <= start <= end < len(values):
        raise ValueError(f"range [{start}, {end}] is outside the pool of {len(values)} frames")
    if n <= 0:
        return []
    span = end - start + 1
    if span <= n:
        return list(range(start, end + 1))
    if np.ptp(values[start : end + 1]) == 0:
        return uniform_indices(start, end, n)  # no signal: keep the paper's spread
    gap = max(1, span // (2 * n)) if min_gap is None else max(1, min_gap)

    chosen: list[int] = []
    for index in _by_score(range(start, end + 1), values):
        if len(chosen) == n:
            break
        if _far_enough(index, chosen, gap):
            chosen.append(index)

    if len(chosen) < n:
        grid = [i for i in uniform_indices(start, end, n) if i not in chosen]
        while grid and len(chosen) < n:
            # Farthest from what is already chosen first; the better score breaks ties.
            best = max(grid, key=lambda i: (min(abs(i - c) for c in chosen), values[i], -i))
            chosen.append(best)
            grid.remove(best)
    if len(chosen) < n:
        rest = [i for i in _by_score(range(start, end + 1), values) if i not in chosen]
        chosen.extend(rest[: n - len(chosen)])
    return sorted(chosen)


def mix_first_turn(
    scores: Sequence[float] | np.ndarray,
    n_uniform: int,
    n_top: int,
    pool_size: int,
    min_gap: int = 1,
) -> list[int]:
    """First-turn frames: `n_uniform` spread over the pool plus the `n_top` best matches elsewhere.

    The uniform part is `uniform_indices(0, pool_size - 1, n_uniform)`, so it keeps the overview
    the model was trained on; the top matches are the best-scoring other frames, each at least
    `min_gap` from every frame already taken (1 means only "not the same frame"); if the gap rule
    leaves too few, the best remaining frames fill in. Returns exactly `n_uniform + n_top` sorted
    unique indices, or the whole pool when it is not larger than that.
    """
    values = _as_scores(scores)
    if len(values) != pool_size:
        raise ValueError(f"got {len(values)} scores for a pool of {pool_size} frames")
    if n_uniform < 0 or n_top < 0:
        raise ValueError("frame counts must not be negative")
    if pool_size <= n_uniform + n_top:
        return list(range(pool_size))

    chosen = uniform_indices(0, pool_size - 1, n_uniform)
    ranked = [i for i in _by_score(range(pool_size), values) if i not in chosen]
    top: list[int] = []
    for index in ranked:
        if len(top) == n_top:
            break
        if _far_enough(index, chosen + top, max(1, min_gap)):
            top.append(index)
    for index in ranked:
        if len(top) == n_top:
            break
        if index not in top:
            top.append(index)
    return sorted(chosen + top)
