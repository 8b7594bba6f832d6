"""Uniform frame choice for the first turn and for a retrieve, as the released code does it."""

from vmtr.tools.select import (
    first_turn_frames,
    relevant_pool_indices,
    select_segment,
    uniform_indices,
)


def test_first_turn_is_linspace_over_pool():
    assert first_turn_frames(64, 16) == [
        0,
        4,
        8,
        13,
        17,
        21,
        25,
        29,
        34,
        38,
        42,
        46,
        50,
        55,
        59,
        63,
    ]


def test_first_turn_short_pool_shows_everything():
    assert first_turn_frames(5, 16) == [0, 1, 2, 3, 4]


def test_retrieve_returns_at_most_n_in_range():
    assert select_segment(3, 10, 8) == [3, 4, 5, 6, 7, 8, 9, 10]
    assert select_segment(10, 12, 8) == [10, 11, 12]
    assert select_segment(0, 63, 8) == [0, 9, 18, 27, 36, 45, 54, 63]
    assert select_segment(5, 5, 8) == [5]


def test_uniform_indices_unique_sorted():
    picks = uniform_indices(0, 20, 8)
    assert picks == sorted(set(picks)) and len(picks) == 8 and picks[0] == 0 and picks[-1] == 20


def test_relevant_pool_indices_nearest_for_narrow_windows():
    pool = [0.5, 1.5, 2.5, 3.5]
    assert relevant_pool_indices(pool, [[1.0, 3.0]]) == {1, 2}
    assert relevant_pool_indices(pool, [[2.9, 3.0]]) == {2}
