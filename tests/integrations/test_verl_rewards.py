"""Reward placement and turn-level GRPO on verl-shaped tensors, on hand-worked episodes (no verl
needed: these are the framework-free halves of the integration)."""

from __future__ import annotations

import pytest
import torch

from vmtr.integrations.verl.advantages import reply_spans, turn_grpo
from vmtr.integrations.verl.rewards import episode_rewards, reward_tensor
from vmtr.policies.advantages import grpo_turn_advantages
from vmtr.policies.rewards import RewardSettings


def _turn(action: str, seen: list[int], valid: bool = True) -> dict:
    return {"valid": valid, "action": action, "seen_after": seen}


# A retrieves frame 3 (relevant) then answers right; B and C answer right at once; D retrieves
# in vain and answers wrong.
A = {
    "turns": [_turn("retrieve", [0, 1, 2, 3]), _turn("answer", [0, 1, 2, 3])],
    "turn_ends": [4, 9],
    "correct": True,
    "relevant": [3],
    "first_seen": [0, 1, 2],
}
B = {
    "turns": [_turn("answer", [0, 1, 2])],
    "turn_ends": [3],
    "correct": True,
    "relevant": [3],
    "first_seen": [0, 1, 2],
}
C = {**B, "turn_ends": [2]}
D = {
    "turns": [_turn("retrieve", [0, 1, 2, 3]), _turn("answer", [0, 1, 2, 3])],
    "turn_ends": [1, 6],
    "correct": False,
    "relevant": [3],
    "first_seen": [0, 1, 2],
}


def test_code_reward_with_exploration_bonus_by_hand() -> None:
    # A: format 0.1 + frame 0.5 (IoU 0 -> 0.25) on turn 1; 0.1 + answer 1 - 0.1 * 1 on turn 2.
    # 1 of the 3 rewarded episodes retrieved (rate 1/3 < 0.5): +0.5 on A's turn 1.
    # D: the gate drops its frame term and keeps the format terms (code variant).
    rewards, rate = episode_rewards([A, B, C, D])
    assert rate == pytest.approx(1 / 3)
    assert [r.per_turn for r in rewards] == [
        pytest.approx([1.1, 1.0]),
        pytest.approx([1.1]),
        pytest.approx([1.1]),
        pytest.approx([0.1, 0.1]),
    ]


def test_each_turns_reward_sits_on_its_last_token() -> None:
    scores, _ = reward_tensor([A, B, C, D], response_length=12)
    expected = torch.zeros(4, 12)
    expected[0, 4], expected[0, 9] = 1.1, 1.0
    expected[1, 3] = 1.1
    expected[2, 2] = 1.1
    expected[3, 1], expected[3, 6] = 0.1, 0.1
    torch.testing.assert_close(scores, expected)


def test_paper_variant_gates_format_terms_and_scales_frames() -> None:
    settings = RewardSettings(variant="paper", exploration_bonus=False)
    scores, _ = reward_tensor([A, D], response_length=10, settings=settings)
    # A: 0.1 + min(0.5, IoU gain 0.25) on turn 1, 0.1 + 1.0 on turn 2; D keeps only its last 0.1
    assert scores[0, 4] == pytest.approx(0.35) and scores[0, 9] == pytest.approx(1.1)
    assert scores[1].tolist() == pytest.approx([0, 0, 0, 0, 0, 0, 0.1, 0, 0, 0])


def test_a_reply_cut_by_the_response_length_keeps_its_reward() -> None:
    scores, _ = reward_tensor([A], response_length=8, settings=RewardSettings())
    assert scores[0, 7] == pytest.approx(1.0) and scores.sum() == pytest.approx(1.6)


def test_reply_spans_are_the_runs_of_ones() -> None:
    assert reply_spans(torch.tensor([1, 1, 0, 0, 1, 0, 1, 1])) == [(0, 1), (4, 4), (6, 7)]
    assert reply_spans(torch.tensor([0, 0])) == []


def _batch(episodes: list[tuple[list[tuple[int, int]], list[float]]], length: int):
    mask = torch.zeros(len(episodes), length)
    rewards = torch.zeros(len(episodes), length)
    for row, (spans, per_turn) in enumerate(episodes):
        for (first, last), r in zip(spans, per_turn, strict=True):
            mask[row, first : last + 1] = 1
            rewards[row, last] = r
    return rewards, mask


def test_turn_grpo_by_hand_and_against_vmtr() -> None:
    # group x: A (turn rewards 0.6, 1.0) and B (1.1); group y: C (0.2, 0.1, 0) and D (0.1, 0)
    episodes = [
        ([(0, 2), (5, 7)], [0.6, 1.0]),
        ([(0, 3)], [1.1]),
        ([(0, 1), (3, 4), (6, 9)], [0.2, 0.1, 0.0]),
        ([(0, 0), (2, 5)], [0.1, 0.0]),
    ]
    rewards, mask = _batch(episodes, 10)
    index = ["x", "x", "y", "y"]
    advantages, returns = turn_grpo(rewards, mask, index)
    # turn 1 reward-to-go: A 1.6, B 1.1 -> +-0.25 around 1.35, unbiased std 0.3536 -> +-0.7071;
    # only A reaches turn 2 in group x, so it keeps its turn-1 advantage there
    a = 0.25 / (0.25 * 2**0.5 + 1e-6)
    assert advantages[0, :3].tolist() == pytest.approx([a] * 3, abs=1e-5)
    assert advantages[0, 5:8].tolist() == pytest.approx([a] * 3, abs=1e-5)
    assert advantages[1, :4].tolist() == pytest.approx([-a] * 4, abs=1e-5)
    assert advantages[0, 3:5].abs().sum() == 0 and advantages[1, 4:].abs().sum() == 0
    expected = grpo_turn_advantages([e[1] for e in episodes], [0, 0, 1, 1])
    for row, (spans, _) in enumerate(episodes):
        got = [float(advantages[row, last]) for _, last in spans]
        assert got == pytest.approx(expected[row], abs=1e-6)
    torch.testing.assert_close(returns, advantages)


def test_turn_grpo_discount_and_centring_follow_vmtr() -> None:
    episodes = [([(0, 1), (3, 3)], [0.5, 1.0]), ([(0, 2), (4, 5)], [0.2, 0.0])]
    rewards, mask = _batch(episodes, 6)
    advantages, _ = turn_grpo(rewards, mask, [7, 7], gamma=0.5, scale=False)
    expected = grpo_turn_advantages([e[1] for e in episodes], [0, 0], gamma=0.5, scale=False)
    for row, (spans, _) in enumerate(episodes):
        got = [float(advantages[row, last]) for _, last in spans]
        assert got == pytest.approx(expected[row], abs=1e-6)
