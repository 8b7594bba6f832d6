"""Selective prompts: the plain draw unchanged, solved questions passed over at the set rate, the
history rebuilt from rollouts.jsonl as it was recorded."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from vmtr.eval.datasets import QAItem
from vmtr.policies.prompt_picker import PromptPicker, solved_groups


def items(n: int) -> list[QAItem]:
    return [QAItem(f"q{i}", Path(f"v{i}.mp4"), "?", [], "A") for i in range(n)]


def test_without_skipping_the_draw_is_the_plain_uniform_one():
    pool = items(20)
    for world in (1, 2):
        picker = PromptPicker(pool, per_step=6, seed=3)
        picker.record([("q1", 0, 1.0, True), ("q1", 0, 1.0, True)])  # nothing changes at 0
        for step in range(5):
            expected = random.Random(3 * 7_919 + step).sample(pool, 6)
            got = [picker.pick(step, rank, world) for rank in range(world)]
            assert got == [expected[rank::world][: 6 // world] for rank in range(world)]


def test_solved_means_every_sample_right_with_the_same_reward():
    outcomes = [
        ("right alike", 0, 1.1, True),
        ("right alike", 0, 1.1, True),
        ("right, rewards differ", 1, 1.1, True),
        ("right, rewards differ", 1, 1.6, True),
        ("wrong alike", 2, 0.1, False),
        ("wrong alike", 2, 0.1, False),
    ]
    assert solved_groups(outcomes) == {
        "right alike": True,
        "right, rewards differ": False,
        "wrong alike": False,  # still open: most such questions vary on their next visit
    }


def test_solved_questions_are_passed_over_at_the_set_rate():
    pool = items(40)
    picker = PromptPicker(pool, per_step=8, seed=0, skip_solved=0.75)
    solved = {f"q{i}" for i in range(20)}
    picker.record([(i.id, n, 1.0, i.id in solved) for n, i in enumerate(pool) for _ in range(2)])
    asked = passed = 0
    for step in range(400):
        picks = picker.pick(step)
        assert len(picks) == 8 and len({p.id for p in picks}) == 8
        asked += sum(p.id in solved for p in picks)
        passed += picker.passed_over
    # half the pool is solved; passed over three times in four, it is asked a quarter as often
    assert asked / (400 * 8) == pytest.approx(0.25 / 1.25, abs=0.03)
    assert passed > 0


def test_a_step_still_asks_its_full_share_when_every_question_is_solved():
    pool = items(5)
    picker = PromptPicker(pool, per_step=4, seed=1, skip_solved=0.99)
    picker.record([(i.id, n, 1.0, True) for n, i in enumerate(pool)])
    picks = picker.pick(0)
    assert len(picks) == 4 and len({p.id for p in picks}) == 4


def test_replay_rebuilds_the_history_with_the_latest_outcome_winning(tmp_path):
    def row(step: int, item: str, group: int, reward: list[float], correct: bool) -> dict:
        return {"step": step, "item": item, "group": group, "reward": reward, "correct": correct}

    rows = [
        row(1, "q0", 0, [0.1, 1.0], True),
        row(1, "q0", 0, [1.1], True),
        row(1, "q1", 1, [0.1, 1.0], True),
        row(1, "q1", 1, [0.1], False),
        row(2, "q1", 0, [1.1], True),
        row(2, "q1", 0, [1.1], True),
    ]
    path = tmp_path / "rollouts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    picker = PromptPicker(items(2), per_step=1, seed=0, skip_solved=0.5)
    picker.replay(path)
    assert picker.solved == {"q0": True, "q1": True}
    picker.replay(tmp_path / "missing.jsonl")  # a fresh run has none: nothing changes
    assert picker.solved == {"q0": True, "q1": True}


def test_the_chance_is_a_probability_below_one():
    with pytest.raises(ValueError):
        PromptPicker(items(2), per_step=1, seed=0, skip_solved=1.0)
    with pytest.raises(ValueError):
        PromptPicker(items(2), per_step=1, seed=0, skip_solved=-0.1)
