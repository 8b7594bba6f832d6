"""The group census the colour RL notes cite: outcomes per GRPO group, branches left out."""

from __future__ import annotations

import json
from pathlib import Path

from recipes.tiny.group_outcomes import groups_of, window_table


def episode(group: int, rewards: list[float], correct: bool, replayed: bool = False) -> dict:
    turns = [{"action": "retrieve", "reply": "", "frames": [0]} for _ in rewards[:-1]]
    turns.append({"action": "answer", "reply": "", "frames": [1]})
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
        episode(0, [0.6, 1.0], True),
        episode(0, [0.1, 0.6, 0.9], True),
        # group 1: varied
        episode(1, [0.6, 1.0], True),
        episode(1, [0.1, 0.1, 0.1], False),
        # group 2: a branch's continuations, left out
        episode(2, [0.1, 0.1, 0.1], False, replayed=True),
        episode(2, [0.1, 0.6, 0.9], True, replayed=True),
    ]
    path = tmp_path / "rollouts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    groups = groups_of(path)
    assert sorted(groups) == [(1, 0), (1, 1)]
    table = window_table(groups, window=50)
    # groups, varied, flat right, flat wrong, flat with turns that differ, openings a group
    assert table[-1] == "| 1-50 | 2 | 50% | 50% | 0% | 50% | 2.00 |"
