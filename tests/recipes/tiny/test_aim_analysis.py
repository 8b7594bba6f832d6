"""The aim analyses the colour RL notes cite: the fixed-rule ceiling and the rollout probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipes.tiny.aim_ceiling import named_border, retrieved, scripted_shows, shown
from recipes.tiny.aim_probe import move_of, second_rows, side_of, side_rows, window_rows

# cue on pool frames 22-29: the first turn's frames 25 and 29 fall inside it
ITEM = {"cue_pool_indices": [22, 29], "needle_pool_indices": [23], "kind": "colour"}


def test_named_border_is_the_first_turn_frames_inside_the_cue():
    assert named_border(ITEM) == (25, 29)


def test_a_range_rule_shows_eight_frames_spread_and_a_block_rule_the_whole_block():
    assert retrieved(ITEM, (-2, 3)) == {23, 24, 26, 27, 28, 29, 31, 32}  # 23..32, 8 of them
    assert retrieved(ITEM, ("first", 0)) == set(range(24, 32))
    assert retrieved(ITEM, ("last", -1)) == set(range(16, 24))
    assert shown(ITEM, [("first", 0), ("last", -1)])
    assert not shown(ITEM, [("first", 0)])


def test_the_scripted_aim_looks_after_the_border_first_then_before_it():
    # first 25..34 (from the first border frame to the label after the last), missing 23; then
    # 21..25 (the label before the first border frame to it), all five frames shown
    assert not scripted_shows(ITEM, 1)
    assert scripted_shows(ITEM, 2)
    assert scripted_shows({**ITEM, "needle_pool_indices": [25]}, 0)  # on a first-turn frame


def episode(
    step: int, turns: list[tuple[str, str, list[int]]], reward: list[float], correct: bool
) -> dict:
    return {
        "step": step,
        "item": "x",
        "turns": [{"action": a, "reply": r, "frames": f} for a, r, f in turns],
        "reward": reward,
        "correct": correct,
    }


def test_probe_counts_first_aims_and_what_follows_a_miss(tmp_path: Path):
    first = list(range(0, 64, 4))
    ask = "<think>Border: frames 25 to 29. Seen: no shapes. Need more frames.</think>"
    rollouts = [
        # aimed at the border, shows the needle, answers
        episode(
            1,
            [
                ("retrieve", ask + "<retrieve>20, 27</retrieve>", first),
                ("answer", "<answer>A</answer>", [20, 21, 22, 23, 24, 25, 26, 27]),
            ],
            [0.6, 1.0],
            True,
        ),
        # misses, retrieves again and the second shows it
        episode(
            1,
            [
                ("retrieve", ask + "<retrieve>40, 47</retrieve>", first),
                ("retrieve", ask + "<retrieve>16, 23</retrieve>", list(range(40, 48))),
                ("answer", "<answer>A</answer>", list(range(16, 24))),
            ],
            [0.1, 0.6, 0.9],
            True,
        ),
        # misses and guesses
        episode(
            1,
            [
                ("retrieve", ask + "<retrieve>40, 47</retrieve>", first),
                ("answer", "<answer>B</answer>", list(range(40, 48))),
            ],
            [0.1, 0.1],
            False,
        ),
    ]
    path = tmp_path / "rollouts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rollouts))
    (row,) = window_rows(path, {"x": ITEM}, window=10)
    assert row["retrieves"] == 3
    assert row["copies_border"] == 1 / 3
    assert row["border_named_right"] == 1.0
    assert row["first_shows"] == 1 / 3
    assert row["again_after_miss"] == 1 / 2
    assert row["second_shows"] == 1.0
    # what the reward paid the aim: the hit's return against the two misses' mean
    assert row["return_after_hit"] == pytest.approx(1.6)
    assert row["return_after_miss"] == pytest.approx((1.6 + 0.2) / 2)
    assert row["right_after_miss"] == 1 / 2


def test_probe_places_second_retrieves_after_a_miss(tmp_path: Path):
    first = list(range(0, 64, 4))
    ask = "<think>Border: frames 25 to 29. Seen: no shapes. Need more frames.</think>"

    def after_a_miss(second: tuple[int, int], answer: str, correct: bool) -> dict:
        """A first retrieve of 40-47 that shows nothing, then ``second``, then ``answer``."""
        return episode(
            1,
            [
                ("retrieve", ask + "<retrieve>40, 47</retrieve>", first),
                (
                    "retrieve",
                    ask + f"<retrieve>{second[0]}, {second[1]}</retrieve>",
                    list(range(40, 48)),
                ),
                ("answer", f"<answer>{answer}</answer>", list(range(second[0], second[1] + 1))),
            ],
            [0.1, 0.6 if correct else 0.1, 0.9 if correct else 0.1],
            correct,
        )

    # next door, misses again; far from the first, shows the needle (23); a branch's replayed
    # continuation, or an episode branched after a first-reply prefix, is not one of the run's
    # sampled episodes and is not counted
    rollouts = [after_a_miss((32, 39), "B", False), after_a_miss((16, 23), "A", True)]
    rollouts.append({**after_a_miss((16, 23), "A", True), "replayed": 1})
    rollouts.append({**after_a_miss((40, 47), "A", True), "prefixed": 9})
    path = tmp_path / "rollouts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rollouts))
    (row,) = second_rows(path, {"x": ITEM}, window=10)
    assert row["seconds"] == 2
    assert row["same range"] == (0.0, None)
    assert row["next to or over the first"] == (0.5, 0.0)
    assert row["elsewhere"] == (0.5, 1.0)
    # the branches alone: the replayed continuation, which went elsewhere and showed it
    (row,) = second_rows(path, {"x": ITEM}, window=10, branches=True)
    assert row["seconds"] == 1 and row["elsewhere"] == (1.0, 1.0)


def test_window_and_label_rules():
    # named border 24 and 28 (the first turn's frames inside the cue 22-29)
    item = {"cue_pool_indices": [22, 29], "needle_pool_indices": [23]}
    assert named_border(item) == (25, 29) or named_border(item) == (24, 28)
    first, last = named_border(item)
    assert retrieved(item, ("window-first", -2)) == set(range(first - 2, first + 6))
    assert retrieved(item, ("window-last", 40)) == set(range(56, 64))  # clipped to the pool
    # the label before the first named frame to the last named one: 8 frames spread over it
    frames = retrieved(item, ("labels", -1, 0))
    assert min(frames) < first and max(frames) == last and len(frames) == 8


def test_sides_split_second_retrieves_by_needle_side_and_move(tmp_path: Path):
    assert [side_of(v, 10, 20) for v in (9, 10, 20, 21)] == ["before", "inside", "inside", "after"]
    assert move_of((10, 20), (2, 9)) == "earlier" and move_of((10, 20), (12, 18)) == "within"
    assert move_of((10, 20), (15, 27)) == "later" and move_of((10, 20), (5, 25)) == "both ways"
    first = list(range(0, 64, 4))
    ask = "<think>Border: frames 25 to 29. Seen: no shapes. Need more frames.</think>"

    def missed_then(second: tuple[int, int], frames: list[int]) -> dict:
        """A first retrieve of 24-31 (past the needle, 23) and then ``second``."""
        return episode(
            1,
            [
                ("retrieve", ask + "<retrieve>24, 31</retrieve>", first),
                ("retrieve", ask + f"<retrieve>{second[0]}, {second[1]}</retrieve>", [24, 31]),
                ("answer", "<answer>A</answer>", frames),
            ],
            [0.1, 0.1, 0.1],
            False,
        )

    rollouts = [
        missed_then((16, 23), list(range(16, 24))),  # earlier, narrow: shows it
        missed_then((0, 47), [0, 7, 13, 20, 27, 34, 40, 47]),  # both ways, wide: holds it only
        missed_then((26, 30), [26, 27, 28, 29, 30]),  # within: neither
    ]
    path = tmp_path / "rollouts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rollouts))
    counts = side_rows(path, {"x": ITEM})
    assert counts == {
        ("before", "earlier"): [1, 1, 1],
        ("before", "both ways"): [1, 1, 0],
        ("before", "within"): [1, 0, 0],
    }
    assert side_rows(path, {"x": ITEM}, branches=True) == {}
