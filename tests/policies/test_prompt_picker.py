"""Selective prompts: the plain draw unchanged, flat questions passed over at the set rate, the
history rebuilt from rollouts.jsonl as it was recorded."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from vmtr.eval.datasets import QAItem
from vmtr.policies.prompt_picker import PromptPicker, flat_groups
from vmtr.policies.trainer import RLSettings


def items(n: int) -> list[QAItem]:
    return [QAItem(f"q{i}", Path(f"v{i}.mp4"), "?", [], "A") for i in range(n)]


def test_without_skipping_the_draw_is_the_plain_uniform_one():
    pool = items(20)
    for world in (1, 2):
        picker = PromptPicker(pool, per_step=6, seed=3)
        picker.record([("q1", 0, 1.0), ("q1", 0, 1.0)])  # history changes nothing at 0
        for step in range(5):
            expected = random.Random(3 * 7_919 + step).sample(pool, 6)
            got = [picker.pick(step, rank, world) for rank in range(world)]
            assert got == [expected[rank::world][: 6 // world] for rank in range(world)]


def test_flat_groups_are_those_whose_episodes_all_scored_the_same():
    outcomes = [("a", 0, 1.0), ("a", 0, 1.0), ("b", 1, 1.0), ("b", 1, 0.1), ("c", 2, 0.5)]
    assert flat_groups(outcomes) == {"a": True, "b": False, "c": True}


def test_flat_questions_are_passed_over_at_the_set_rate():
    pool = items(40)
    picker = PromptPicker(pool, per_step=8, seed=0, skip_flat=0.75)
    flat = {f"q{i}" for i in range(20)}
    picker.record(
        [(i.id, n, 1.0 if i.id in flat else float(k)) for n, i in enumerate(pool) for k in range(2)]
    )
    asked = passed = 0
    for step in range(400):
        picks = picker.pick(step)
        assert len(picks) == 8 and len({p.id for p in picks}) == 8
        asked += sum(p.id in flat for p in picks)
        passed += picker.passed_over
    # half the pool is flat; passed over three times in four, it is asked a quarter as often
    share = asked / (400 * 8)
    assert share == pytest.approx(0.25 / 1.25, abs=0.03)
    assert passed > 0


def test_a_step_still_asks_its_full_share_when_every_question_is_flat():
    pool = items(5)
    picker = PromptPicker(pool, per_step=4, seed=1, skip_flat=0.99)
    picker.record([(i.id, n, 0.0) for n, i in enumerate(pool)])
    picks = picker.pick(0)
    assert len(picks) == 4 and len({p.id for p in picks}) == 4


def test_replay_rebuilds_the_history_with_the_latest_outcome_winning(tmp_path):
    rows = [
        {"step": 1, "item": "q0", "group": 0, "reward": [0.1, 1.0]},
        {"step": 1, "item": "q0", "group": 0, "reward": [1.1]},
        {"step": 1, "item": "q1", "group": 1, "reward": [0.1]},
        {"step": 1, "item": "q1", "group": 1, "reward": [1.1]},
        {"step": 2, "item": "q0", "group": 0, "reward": [0.1]},
        {"step": 2, "item": "q0", "group": 0, "reward": [1.1]},
    ]
    path = tmp_path / "rollouts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    picker = PromptPicker(items(2), per_step=1, seed=0, skip_flat=0.5)
    picker.replay(path)
    assert picker.flat == {"q0": False, "q1": False}
    picker.replay(tmp_path / "missing.jsonl")  # a fresh run has none: nothing changes
    assert picker.flat == {"q0": False, "q1": False}


def test_skipping_is_grpo_only_and_a_probability():
    with pytest.raises(ValueError, match="GRPO"):
        RLSettings(algo="ppo", skip_flat=0.5)
    with pytest.raises(ValueError):
        RLSettings(skip_flat=1.0)
    with pytest.raises(ValueError):
        PromptPicker(items(2), per_step=1, seed=0, skip_flat=-0.1)
