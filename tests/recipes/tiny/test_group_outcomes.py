"""The group census the colour RL notes cite: outcomes per GRPO group, branches left out."""

from __future__ import annotations

import json
from pathlib import Path

from recipes.tiny.group_outcomes import groups_of, window_table


def episode(
    group: int, rewards: list[float], correct: bool, retrieved: list[int], replayed: bool = False
) -> dict:
    """Turn k shows the frames the retrieve before it fetched (turn 1: the uniform ones)."""
    shown = [[0, 16, 32, 48], *[[f] for f in retrieved]]
    actions = ["retrieve"] * len(retrieved) + ["answer"]
    turns = [{"action": a, "reply": "", "frames": f} for a, f in zip(actions, shown, strict=True)]
    return {
        "step": 1,
        "item": f"q{group}",
        "group": group,
        "replayed": replayed,
        "correct": correct,
        "turns": turns,
        "reward": rewards,
    }


def test_a_tie_between_two_and_three_turn_episodes_counts_as_flat_with_turns_that_differ(
    tmp_path: Path,
):
    rows = [
        # group 0: a first retrieve that hit (2 turns) and a miss made good (3 turns) tie at 1.6
        episode(0, [0.6, 1.0], True, [9]),
        episode(0, [0.1, 0.6, 0.9], True, [30, 9]),
        # group 1: varied, both first retrieves fetched frame 9
        episode(1, [0.6, 1.0], True, [9]),
        episode(1, [0.1, 0.1, 0.1], False, [9, 30]),
        # group 2: a branch's continuations, left out
        episode(2, [0.1, 0.1, 0.1], False, [30, 31], replayed=True),
        episode(2, [0.1, 0.6, 0.9], True, [30, 9], replayed=True),
        # group 3: branched at the first decision (a replayed first-reply prefix), left out
        {**episode(3, [0.6, 1.0], True, [9]), "prefixed": 12},
        {**episode(3, [0.1, 0.1, 0.1], False, [40, 30]), "prefixed": 12},
    ]
    path = tmp_path / "rollouts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    groups = groups_of(path)
    assert sorted(groups) == [(1, 0), (1, 1)]
    table = window_table(groups, window=50)
    # groups, varied, flat right, flat wrong, flat with turns that differ, openings and first
    # retrieves a group (group 0 tried two first aims, group 1 one)
    assert table[-1] == "| 1-50 | 2 | 50% | 50% | 0% | 50% | 2.00 | 1.50 |"
