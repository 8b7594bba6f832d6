"""Video-MTR's gated bi-level reward, per turn, in both the paper's and the released code's form.

A trajectory earns, per turn k (1..K):
- a format term ``format_reward`` (0.1) when the turn's reply was well formed;
- for intermediate turns (k < K) that retrieved frames, a frame-relevance term: the released code
  gives a flat ``frame_bonus`` (0.5) when the IoU between the pool frames seen so far and the
  annotated relevant frames rises by more than ``iou_epsilon`` over the previous turn (no
  penalty otherwise); the paper scales it by the IoU gain (at most ``frame_bonus``);
- on the final turn, the answer term: 1.0 when correct; the code decays it by
  ``turn_decay`` (0.1) per extra turn taken.

The gate keeps intermediate rewards from paying off without a right answer. Code: a wrong-answer
trajectory loses only its frame terms and keeps its format terms. Paper:
``1[R_acc > 0] * sum_{k<K} (R_fms + R_fmt) + R_acc + R_fmt^K``, so it loses both.
``gate_format`` picks the gate apart from the frame term's form. Under the code's gate a wrong
answer still earns 0.1 a turn, which the answer's turn decay does not offset, so every wrong
answer pays for taking more turns; the paper's gate pays a wrong answer 0.1 whatever its length.
Each turn's reward belongs on the last token of that turn's reply (see `advantages.py`).

`exploration_bonus` is the code's batch-level bootstrapping: while few correct trajectories
retrieve, the ones that did get extra intermediate reward.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RewardSettings(BaseModel):
    """Reward variant and constants; defaults are the released code's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: Literal["code", "paper"] = "code"
    format_reward: float = 0.1
    frame_bonus: float = 0.5
    iou_epsilon: float = 0.001
    turn_decay: float = Field(0.1, ge=0, description="Answer reward lost per extra turn (code).")
    use_frame_reward: bool = Field(True, description="False: the 'answer only' ablation.")
    gate: bool = Field(True, description="False: the 'no gate' ablation.")
    gate_format: bool | None = Field(
        None,
        description="Gate also removes a wrong answer's intermediate format terms (the paper's "
        "gate); None: the variant's own choice.",
    )
    exploration_bonus: bool = True
    explore_low: float = Field(0.5, description="Retrieve rate under which +bonus applies.")
    explore_very_low: float = Field(0.1, description="Retrieve rate under which +2x applies.")
    explore_bonus: float = 0.5


@dataclass
class TurnOutcome:
    """What the reward needs to know about one turn."""

    valid: bool
    action: Literal["answer", "retrieve", "invalid"]
    seen_after: frozenset[int] = frozenset()  # all pool indices seen once this turn is done


@dataclass
class TrajectoryReward:
    """Per-turn rewards and their parts, for logging reward terms separately."""

    per_turn: list[float]
    answer: float = 0.0
    format: list[float] = field(default_factory=list)
    frames: list[float] = field(default_factory=list)
    bonus: list[float] = field(default_factory=list)

    @property
    def total(self) -> float:
        return float(sum(self.per_turn))


def frame_iou(seen: Iterable[int], relevant: Iterable[int]) -> float:
    """Intersection over union of two sets of pool indices (0 when both are empty)."""
    a, b = set(seen), set(relevant)
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def trajectory_reward(
    turns: Sequence[TurnOutcome],
    *,
    correct: bool,
    relevant: Iterable[int],
    first_seen: Iterable[int],
    settings: RewardSettings | None = None,
) -> TrajectoryReward:
    """Rewards of one trajectory, one number per turn.

    ``first_seen`` is the set of pool indices shown on turn 1 (the IoU baseline); ``relevant`` the
    pool indices inside the annotated relevant windows; ``correct`` whether the final answer
    matched (False when there was none).
    """
    s = settings or RewardSettings()
    relevant = set(relevant)
    last = len(turns) - 1
    fmt = [s.format_reward if t.valid else 0.0 for t in turns]
    frames = [0.0] * len(turns)
    previous = frame_iou(first_seen, relevant)
    for k, turn in enumerate(turns[:last]):
        if turn.action != "retrieve" or not s.use_frame_reward:
            continue
        iou = frame_iou(turn.seen_after, relevant)
        gain = iou - previous
        if gain > s.iou_epsilon:
            frames[k] = s.frame_bonus if s.variant == "code" else min(s.frame_bonus, gain)
        previous = max(previous, iou)
    answered = bool(turns) and turns[last].action == "answer" and correct
    answer = 0.0
    if answered:
        answer = 1.0 - s.turn_decay * last if s.variant == "code" else 1.0
    if s.gate and not answered:
        frames = [0.0] * len(turns)
        if s.gate_format if s.gate_format is not None else s.variant == "paper":
            fmt = [0.0] * last + fmt[last:]
    per_turn = [f + m for f, m in zip(fmt, frames, strict=True)]
    if per_turn:
        per_turn[last] += answer
    return TrajectoryReward(
        per_turn=per_turn, answer=answer, format=fmt, frames=frames, bonus=[0.0] * len(turns)
    )


def exploration_bonus(
    rewards: Sequence[TrajectoryReward],
    retrieved: Sequence[bool],
    settings: RewardSettings | None = None,
) -> float:
    """Add the code's batch-level bonus in place; returns the retrieve rate it was based on.

    Among trajectories with a positive answer reward, if fewer than ``explore_low`` used a
    retrieve, each of those that did gets ``explore_bonus`` added to its intermediate turns
    (twice that under ``explore_very_low``).
    """
    s = settings or RewardSettings()
    rewarded = [i for i, r in enumerate(rewards) if r.answer > 0]
    if not rewarded or not s.exploration_bonus:
        return 0.0
    rate = sum(retrieved[i] for i in rewarded) / len(rewarded)
    if rate >= s.explore_low:
        return rate
    bonus = s.explore_bonus * (2.0 if rate < s.explore_very_low else 1.0)
    for i in rewarded:
        if not retrieved[i]:
            continue
        r = rewards[i]
        for k in range(len(r.per_turn) - 1):
            r.per_turn[k] += bonus
            r.bonus[k] += bonus
    return rate
