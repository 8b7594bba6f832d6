"""Reward terms against trajectories worked out by hand (see the comments for the arithmetic)."""

from __future__ import annotations

import pytest

from vmtr.policies.rewards import (
    RewardSettings,
    TrajectoryReward,
    TurnOutcome,
    exploration_bonus,
    frame_iou,
    trajectory_reward,
)

FIRST = frozenset({0, 4, 8, 12})
RELEVANT = {10, 11}
# After retrieving 9..11: seen {0,4,8,9,10,11,12}; IoU = |{10,11}| / 7 = 2/7, up from 0.
AFTER = FIRST | {9, 10, 11}
RETRIEVE_THEN_ANSWER = [
    TurnOutcome(valid=True, action="retrieve", seen_after=AFTER),
    TurnOutcome(valid=True, action="answer", seen_after=AFTER),
]


def test_iou():
    assert frame_iou({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    assert frame_iou(set(), set()) == 0.0


def test_code_variant_correct():
    r = trajectory_reward(RETRIEVE_THEN_ANSWER, correct=True, relevant=RELEVANT, first_seen=FIRST)
    # turn 1: format 0.1 + frame bonus 0.5; turn 2: format 0.1 + answer 1.0 - 0.1 * (2 - 1)
    assert r.per_turn == pytest.approx([0.6, 1.0])
    assert r.answer == pytest.approx(0.9) and r.total == pytest.approx(1.6)


def test_code_variant_wrong_keeps_format_loses_frames():
    r = trajectory_reward(RETRIEVE_THEN_ANSWER, correct=False, relevant=RELEVANT, first_seen=FIRST)
    assert r.per_turn == pytest.approx([0.1, 0.1])


def test_paper_variant():
    paper = RewardSettings(variant="paper")
    right = trajectory_reward(
        RETRIEVE_THEN_ANSWER, correct=True, relevant=RELEVANT, first_seen=FIRST, settings=paper
    )
    # frame term = IoU gain 2/7 (capped at 0.5); answer 1.0 with no decay
    assert right.per_turn == pytest.approx([0.1 + 2 / 7, 0.1 + 1.0])
    wrong = trajectory_reward(
        RETRIEVE_THEN_ANSWER, correct=False, relevant=RELEVANT, first_seen=FIRST, settings=paper
    )
    # the gate removes intermediate format and frame terms; the final format term stays
    assert wrong.per_turn == pytest.approx([0.0, 0.1])


def test_paper_gate_with_code_frame_term():
    both = RewardSettings(gate_format=True)
    right = trajectory_reward(
        RETRIEVE_THEN_ANSWER, correct=True, relevant=RELEVANT, first_seen=FIRST, settings=both
    )
    # a right answer is paid as under the code's variant: flat frame bonus, decayed answer
    assert right.per_turn == pytest.approx([0.6, 1.0])
    three_turns = [
        TurnOutcome(valid=True, action="retrieve", seen_after=FIRST | {30}),
        *RETRIEVE_THEN_ANSWER,
    ]
    for turns in (RETRIEVE_THEN_ANSWER, three_turns):
        wrong = trajectory_reward(
            turns, correct=False, relevant=RELEVANT, first_seen=FIRST, settings=both
        )
        # a wrong answer keeps only its final format term, however many turns it took
        assert wrong.total == pytest.approx(0.1)
    # and the paper's variant can keep the code's gate
    kept = trajectory_reward(
        RETRIEVE_THEN_ANSWER,
        correct=False,
        relevant=RELEVANT,
        first_seen=FIRST,
        settings=RewardSettings(variant="paper", gate_format=False),
    )
    assert kept.per_turn == pytest.approx([0.1, 0.1])


def test_no_gate_pays_frames_without_a_right_answer():
    r = trajectory_reward(
        RETRIEVE_THEN_ANSWER,
        correct=False,
        relevant=RELEVANT,
        first_seen=FIRST,
        settings=RewardSettings(gate=False),
    )
    assert r.per_turn == pytest.approx([0.6, 0.1])


def test_answer_only_ablation():
    r = trajectory_reward(
        RETRIEVE_THEN_ANSWER,
        correct=True,
        relevant=RELEVANT,
        first_seen=FIRST,
        settings=RewardSettings(use_frame_reward=False),
    )
    assert r.per_turn == pytest.approx([0.1, 1.0])


def hit_first_and_miss_made_good(
    settings: RewardSettings,
) -> tuple[TrajectoryReward, TrajectoryReward]:
    """Two right answers: a first retrieve that showed the evidence, then answering; and a first
    retrieve that missed, a second that showed it, then answering."""
    miss = FIRST | {30, 31}
    miss_then_hit = [
        TurnOutcome(valid=True, action="retrieve", seen_after=miss),
        TurnOutcome(valid=True, action="retrieve", seen_after=miss | {9, 10, 11}),
        TurnOutcome(valid=True, action="answer"),
    ]
    first = trajectory_reward(
        RETRIEVE_THEN_ANSWER, correct=True, relevant=RELEVANT, first_seen=FIRST, settings=settings
    )
    second = trajectory_reward(
        miss_then_hit, correct=True, relevant=RELEVANT, first_seen=FIRST, settings=settings
    )
    return first, second


@pytest.mark.parametrize("frame_reward", [True, False])
def test_code_reward_pays_a_first_retrieve_hit_and_a_second_the_same(frame_reward: bool):
    """Under the code's reward a turn's format term (0.1) offsets the answer's decay (0.1 a
    turn), so with turns to spare a right answer pays the same whether the first retrieve showed
    the needle or a second one did after a miss: only showing it at all is rewarded, which is why
    RL sharpens the first aim slowly (docs/tiny-model.md)."""
    first, second = hit_first_and_miss_made_good(RewardSettings(use_frame_reward=frame_reward))
    # frames: 0.5 for the retrieve that showed it; format 0.2 vs 0.3; answer 0.9 vs 0.8
    assert first.total == pytest.approx(second.total)
    assert first.total == pytest.approx(1.6 if frame_reward else 1.1)


def test_a_turn_decay_above_the_format_term_pays_the_first_retrieve_hit_more():
    """With ``turn_decay`` 0.2 each extra turn costs a right answer 0.1 net of its format term,
    so a group whose episodes are all right still ranks a first-retrieve hit above a miss that a
    second retrieve made good, and answering at once above retrieving after the needle was seen."""
    first, second = hit_first_and_miss_made_good(RewardSettings(turn_decay=0.2))
    assert first.total == pytest.approx(1.5)  # 0.2 format + 0.5 frames + 0.8 answer
    assert second.total == pytest.approx(1.4)  # 0.3 format + 0.5 frames + 0.6 answer
    with pytest.raises(ValueError):
        RewardSettings(turn_decay=-0.1)


def test_retrieve_that_adds_nothing_relevant_earns_no_frame_term():
    turns = [
        TurnOutcome(valid=True, action="retrieve", seen_after=FIRST | {30, 31}),
        TurnOutcome(valid=True, action="answer"),
    ]
    r = trajectory_reward(turns, correct=True, relevant=RELEVANT, first_seen=FIRST)
    assert r.frames == [0.0, 0.0]


def test_invalid_turn_then_answer():
    turns = [
        TurnOutcome(valid=False, action="invalid", seen_after=FIRST),
        TurnOutcome(valid=True, action="answer", seen_after=FIRST),
    ]
    r = trajectory_reward(turns, correct=True, relevant=RELEVANT, first_seen=FIRST)
    assert r.per_turn == pytest.approx([0.0, 1.0])  # 0.1 format + 0.9 decayed answer


def test_single_turn_answer_and_no_answer():
    one = [TurnOutcome(valid=True, action="answer", seen_after=FIRST)]
    assert trajectory_reward(one, correct=True, relevant=RELEVANT, first_seen=FIRST).per_turn == (
        pytest.approx([1.1])
    )
    none = [TurnOutcome(valid=False, action="invalid")] * 3
    assert trajectory_reward(none, correct=False, relevant=RELEVANT, first_seen=FIRST).total == 0


def test_exploration_bonus_below_half_and_below_tenth():
    def batch(n, n_retrieve):
        rewards = [
            trajectory_reward(
                RETRIEVE_THEN_ANSWER, correct=True, relevant=RELEVANT, first_seen=FIRST
            )
            for _ in range(n)
        ]
        return rewards, [i < n_retrieve for i in range(n)]

    rewards, retrieved = batch(4, 1)  # rate 0.25 < 0.5: +0.5 on intermediate turns
    assert exploration_bonus(rewards, retrieved) == pytest.approx(0.25)
    assert rewards[0].per_turn == pytest.approx([1.1, 1.0])
    assert rewards[1].per_turn == pytest.approx([0.6, 1.0])
    rewards, retrieved = batch(11, 1)  # rate 1/11 < 0.1: +1.0
    exploration_bonus(rewards, retrieved)
    assert rewards[0].per_turn == pytest.approx([1.6, 1.0])
    rewards, retrieved = batch(4, 2)  # rate 0.5: no bonus
    exploration_bonus(rewards, retrieved)
    assert rewards[0].per_turn == pytest.approx([0.6, 1.0])
