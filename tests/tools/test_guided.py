"""Guided frame choice, against picks worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from vmtr.tools.guided import mix_first_turn, pick_in_range, uniform_indices


def _peaks(size: int, peaks: dict[int, float]) -> np.ndarray:
    scores = np.zeros(size)
    for index, value in peaks.items():
        scores[index] = value
    return scores


def test_uniform_indices_follow_linspace() -> None:
    assert uniform_indices(0, 63, 16)[:4] == [0, 4, 8, 13]  # 0, 4.2, 8.4, 12.6 rounded
    assert uniform_indices(0, 15, 4) == [0, 5, 10, 15]
    assert uniform_indices(3, 5, 8) == [3, 4, 5]
    assert uniform_indices(5, 4, 8) == []


def test_pick_in_range_default_gap_skips_neighbours() -> None:
    scores = _peaks(16, {5: 0.9, 6: 0.85, 7: 0.8, 12: 0.7, 2: 0.5})
    # span 16, n 3 -> gap 16 // 6 = 2: 5 taken, 6 too close, 7 is 2 away, then 12.
    assert pick_in_range(scores, 0, 15, 3) == [5, 7, 12]
    # gap 3: 5, then 6 and 7 too close, 12, then 2 (3 away from 5).
    assert pick_in_range(scores, 0, 15, 3, min_gap=3) == [2, 5, 12]


def test_pick_in_range_stays_inside_the_range() -> None:
    scores = _peaks(16, {5: 0.9, 6: 0.85, 7: 0.8, 12: 0.7, 2: 0.5})
    # [8, 15], n 2, gap 8 // 4 = 2: 12 is best; then 8 (ties at 0 go to the earlier frame).
    assert pick_in_range(scores, 8, 15, 2) == [8, 12]


def test_pick_in_range_small_range_returns_all() -> None:
    scores = _peaks(16, {5: 0.9})
    assert pick_in_range(scores, 4, 6, 8) == [4, 5, 6]
    assert pick_in_range(scores, 9, 9, 8) == [9]


def test_pick_in_range_fills_from_uniform_grid() -> None:
    scores = _peaks(10, {4: 1.0, 5: 0.9, 6: 0.8})
    # gap 4: 4, then 0 and 8 pass; 3 picks for 4 wanted. Grid linspace(0, 9, 4) = 0, 3, 6, 9;
    # distances to {0, 4, 8}: 3 -> 1, 6 -> 2, 9 -> 1, so 6 fills in.
    assert pick_in_range(scores, 0, 9, 4, min_gap=4) == [0, 4, 6, 8]


def test_pick_in_range_flat_scores_are_uniform() -> None:
    assert pick_in_range(np.full(64, 0.3), 0, 63, 8) == uniform_indices(0, 63, 8)


def test_pick_in_range_checks_its_input() -> None:
    with pytest.raises(ValueError, match="outside the pool"):
        pick_in_range(np.zeros(8), 2, 8, 3)
    with pytest.raises(ValueError, match="finite"):
        pick_in_range(np.array([0.0, np.nan, 1.0]), 0, 2, 1)
    assert pick_in_range(np.zeros(8), 0, 7, 0) == []


def test_mix_first_turn_adds_best_other_frames() -> None:
    scores = _peaks(16, {5: 0.99, 6: 0.9, 9: 0.8, 12: 0.7})
    # uniform 0, 5, 10, 15; 5 is already in, so the top two others are 6 and 9.
    assert mix_first_turn(scores, 4, 2, 16) == [0, 5, 6, 9, 10, 15]


def test_mix_first_turn_gap_then_fill_by_score() -> None:
    scores = _peaks(16, {5: 0.99, 6: 0.9, 9: 0.8, 12: 0.7})
    # gap 2: 6 touches 5 and 9 touches 10, so 12 goes in; the next best (all 0) is the earliest
    # far enough frame, 2.
    assert mix_first_turn(scores, 4, 2, 16, min_gap=2) == [0, 2, 5, 10, 12, 15]


def test_mix_first_turn_counts_and_small_pool() -> None:
    rng = np.random.default_rng(0)
    picks = mix_first_turn(rng.random(64), 12, 4, 64, min_gap=3)
    assert len(picks) == 16 and picks == sorted(set(picks))
    assert mix_first_turn(np.zeros(8), 6, 4, 8) == list(range(8))
    with pytest.raises(ValueError, match="pool of 10"):
        mix_first_turn(np.zeros(8), 2, 2, 10)
