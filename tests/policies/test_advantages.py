"""Bi-level GAE and GRPO against small examples worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vmtr.policies.advantages import (
    bilevel_gae,
    grpo_advantages,
    grpo_turn_advantages,
    rewards_to_go,
    turn_level_gae,
)


def test_turn_level_gae():
    # delta_2 = 1.0 - 0.8 = 0.2; delta_1 = 0.6 + 0.8 - 0.5 = 0.9; A_1 = 0.9 + 0.2
    assert turn_level_gae([0.6, 1.0], [0.5, 0.8]) == pytest.approx([1.1, 0.2])
    # gamma 0.95: delta_1 = 0.6 + 0.95 * 0.8 - 0.5 = 0.86; A_1 = 0.86 + 0.95 * 0.2
    assert turn_level_gae([0.6, 1.0], [0.5, 0.8], gamma=0.95) == pytest.approx([1.05, 0.2])


def test_bilevel_gae_by_hand():
    # tokens: 0 prompt | 1 2 3 = turn 1 reply | 4 environment | 5 6 = turn 2 reply
    values = torch.tensor([0.0, 0.2, 0.4, 0.5, 0.0, 0.6, 0.8])
    adv, ret = bilevel_gae(values, [(1, 3), (5, 6)], [0.6, 1.0])
    # turn level: A_1 = 1.1, A_2 = 0.2 (as above, V_k = v at end of turn)
    # inside turn 1: A3 = 1.1; A2 = (0.5 - 0.4) + 1.1 = 1.2; A1 = (0.4 - 0.2) + 1.2 = 1.4
    # inside turn 2: A6 = 0.2; A5 = (0.8 - 0.6) + 0.2 = 0.4
    assert adv.tolist() == pytest.approx([0.0, 1.4, 1.2, 1.1, 0.0, 0.4, 0.2])
    # returns = A + v on reply tokens: the reward still to come from each turn on
    assert ret.tolist() == pytest.approx([0.0, 1.6, 1.6, 1.6, 0.0, 1.0, 1.0])


def test_bilevel_gae_discounting_inside_a_turn():
    values = torch.tensor([1.0, 2.0])
    adv, _ = bilevel_gae(values, [(0, 1)], [3.0], gamma=0.5, lam=0.5)
    # A1 = 3.0 - 2.0 = 1.0; A0 = (0.5 * 2.0 - 1.0) + 0.25 * 1.0 = 0.25
    assert adv.tolist() == pytest.approx([0.25, 1.0])


def test_bilevel_gae_checks_lengths():
    with pytest.raises(ValueError):
        bilevel_gae(torch.zeros(3), [(0, 2)], [1.0, 2.0])


def test_grpo_group_normalised():
    adv = grpo_advantages([1.0, 0.0, 1.0, 0.0, 5.0], [0, 0, 0, 0, 1])
    # group 0: mean 0.5, unbiased std sqrt(1/3); the lone group-1 trajectory gets 0
    expected = 0.5 / math.sqrt(1 / 3)
    assert adv == pytest.approx([expected, -expected, expected, -expected, 0.0], rel=1e-5)
    assert grpo_advantages([2.0, 2.0], [0, 0]) == [0.0, 0.0]
    assert grpo_advantages([1.0, 0.0], [0, 0], scale=False) == pytest.approx([0.5, -0.5])


def test_rewards_to_go():
    assert rewards_to_go([0.1, 0.2, 1.0]) == pytest.approx([1.3, 1.2, 1.0])
    assert rewards_to_go([1.0, 1.0], gamma=0.5) == pytest.approx([1.5, 1.0])
    assert rewards_to_go([]) == []


def test_grpo_turn_advantages_by_hand():
    # group 0: a right answer after a retrieve, a wrong one after a retrieve, a right one at once;
    # group 1: one episode reached turn 2 alone
    turn_rewards = [[0.1, 1.1], [0.1, 0.0], [1.0], [0.1, 1.1], [0.0]]
    adv = grpo_turn_advantages(turn_rewards, [0, 0, 0, 1, 1])
    totals = [1.2, 0.1, 1.0]
    mean = sum(totals) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in totals) / 2)
    first = [(x - mean) / std for x in totals]
    # turn 1 is plain GRPO; turn 2 compares the two group-0 episodes that reached it (1.1 vs 0.0)
    assert adv[0] == pytest.approx([first[0], 1 / math.sqrt(2)], rel=1e-5)
    assert adv[1] == pytest.approx([first[1], -1 / math.sqrt(2)], rel=1e-5)
    assert adv[2] == pytest.approx([first[2]], rel=1e-5)
    # group 1: turn 1 is 1.2 against 0.0; the lone turn 2 keeps its turn-1 advantage
    assert adv[3] == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2)], rel=1e-5)
    assert adv[4] == pytest.approx([-1 / math.sqrt(2)], rel=1e-5)
    # the first turn always agrees with trajectory-level GRPO
    plain = grpo_advantages([sum(r) for r in turn_rewards], [0, 0, 0, 1, 1])
    assert [a[0] for a in adv] == pytest.approx(plain)
