"""vmtr's gated bi-level reward over a verl batch, each turn's reward on its reply's last token.

The agent loop leaves one JSON-able record per episode (`episode.reward_inputs`): per-turn
outcomes, correctness, relevant and first-shown pool frames, and where each reply ends in the
response. `episode_rewards` turns a batch of them into per-turn rewards with
`vmtr.policies.rewards` (code or paper variant, the gate, and the batch-level exploration bonus,
which needs the whole batch); `reward_tensor` lays them out as verl's token-level scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vmtr.policies.rewards import (
    RewardSettings,
    TrajectoryReward,
    TurnOutcome,
    exploration_bonus,
    trajectory_reward,
)


def outcomes_of(record: Mapping[str, Any]) -> list[TurnOutcome]:
    """The reward's per-turn inputs from an episode record."""
    return [
        TurnOutcome(
            valid=bool(turn["valid"]),
            action=turn["action"],
            seen_after=frozenset(int(i) for i in turn["seen_after"]),
        )
        for turn in record["turns"]
    ]


def single_reward(
    record: Mapping[str, Any], settings: RewardSettings | None = None
) -> TrajectoryReward:
    """One episode's per-turn rewards, before the batch-level exploration bonus."""
    return trajectory_reward(
        outcomes_of(record),
        correct=bool(record["correct"]),
        relevant=[int(i) for i in record["relevant"]],
        first_seen=[int(i) for i in record["first_seen"]],
        settings=settings,
    )


def episode_rewards(
    records: Sequence[Mapping[str, Any]], settings: RewardSettings | None = None
) -> tuple[list[TrajectoryReward], float]:
    """Per-turn rewards of every episode of a batch, the exploration bonus included, and the
    retrieve rate among rewarded episodes that the bonus was based on."""
    rewards = [single_reward(record, settings) for record in records]
    retrieved = [any(t["action"] == "retrieve" for t in record["turns"]) for record in records]
    rate = exploration_bonus(rewards, retrieved, settings)
    return rewards, rate


def reward_tensor(
    records: Sequence[Mapping[str, Any]],
    response_length: int,
    settings: RewardSettings | None = None,
) -> tuple[torch.Tensor, list[TrajectoryReward]]:
    """``[batch, response_length]`` token-level scores: each turn's reward on the last token
    of that turn's reply, 0 elsewhere. A turn whose reply was cut off by the response length
    puts its reward on the last token kept."""
    rewards, _ = episode_rewards(records, settings)
    scores = torch.zeros(len(records), response_length, dtype=torch.float32)
    for row, (record, reward) in enumerate(zip(records, rewards, strict=True)):
        ends = [int(e) for e in record["turn_ends"]]
        if len(ends) != len(reward.per_turn):
            raise ValueError(
                f"episode {row}: {len(ends)} reply ends for {len(reward.per_turn)} turn rewards"
            )
        for end, value in zip(ends, reward.per_turn, strict=True):
            scores[row, min(end, response_length - 1)] += value
    return scores, rewards
