"""Branching at the decision: more continuations of an episode from the turn after its first
retrieve, so what the policy does next gets a group of its own to be judged against.

Why: under GRPO every sample of a group starts from the same question, so a second retrieve is
credited through its whole episode's reward, against episodes whose first retrieve went
elsewhere. Where to look after a first look that missed is then a couple of tokens among many
that differ, and its credit is weak. A branch replays one episode's first reply token for token
(the same frames come back), samples ``k`` continuations from there, and makes them a GRPO group:
their rewards differ only by what they did after that first retrieve. The replayed reply keeps
its span and reward but is left out of the loss (`Trajectory.replayed`).

A branch point is the first episode of each group whose first turn retrieved and went on, and,
where the item says where its evidence is, whose first retrieve left some of it unseen (a
continuation of a first look that already showed everything has little to learn).

Branching at the first decision (`branch_first`) does the same one step earlier, for the first
look itself: a policy that has settled on one first retrieve per question samples it in nearly
every episode of a group, so GRPO has no other first aim to compare. The first reply of one
episode per group is replayed up to its ``<retrieve>`` tag (what it read and said, kept) and
``k`` ranges are sampled from there, each played out; their rewards differ only by the range and
what followed it, and the replayed text stays untrained (`Trajectory.prefixed`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vmtr.config import GenerationSettings, ProtocolSettings
from vmtr.eval.datasets import QAItem
from vmtr.models.qwen import QwenVideoLM
from vmtr.policies.action_tokens import token_at
from vmtr.policies.rewards import RewardSettings
from vmtr.policies.rollout import EpisodeJob, Trajectory, run_jobs, score, turn_outcomes
from vmtr.tools.select import relevant_pool_indices

BRANCH_SEEDS = 500_009
"""Offset of the branches' episode seeds from `rollout`'s for the same step seed (which use
``group * 7919 + sample``), so a continuation never repeats a sampled episode's draws."""

FIRST_BRANCH_SEEDS = 700_001
"""The same offset for branches at the first decision."""

RETRIEVE_TAG = "<retrieve>"


def needs_branch(traj: Trajectory, item: QAItem) -> bool:
    """Whether ``traj`` is worth branching after its first reply."""
    if len(traj.turns) < 2 or traj.turns[0]["action"] != "retrieve" or traj.replayed:
        return False
    relevant = relevant_pool_indices(traj.extra["pool"], item.relevant_windows)
    if not relevant:
        return True
    outcomes, _ = turn_outcomes(traj.turns)
    return not relevant <= outcomes[0].seen_after


def first_per_group(
    trajectories: Sequence[Trajectory], qualifies: Callable[[Trajectory], bool]
) -> list[int]:
    """Indices of the first trajectory of each group that ``qualifies`` (at most one a group)."""
    chosen: dict[int, int] = {}
    for i, traj in enumerate(trajectories):
        if traj.group not in chosen and qualifies(traj):
            chosen[traj.group] = i
    return sorted(chosen.values())


def branch_points(trajectories: Sequence[Trajectory], items: dict[str, QAItem]) -> list[int]:
    """Indices of the trajectories to branch from: at most one per group, the first that
    `needs_branch`."""
    return first_per_group(trajectories, lambda t: needs_branch(t, items[t.item_id]))


def run_branches(
    lm: QwenVideoLM,
    trajectories: Sequence[Trajectory],
    items: dict[str, QAItem],
    starts: Sequence[tuple[int, tuple[tuple[int, ...], ...], tuple[int, ...]]],
    *,
    k: int,
    seed: int,
    seed_offset: int,
    protocol_settings: ProtocolSettings,
    generation: GenerationSettings,
    batched: bool,
) -> list[Trajectory]:
    """``k`` episodes from each start, a ``(trajectory index, replies to replay, prefix of the
    reply after them)`` (`EpisodeJob`'s ``replay`` and ``prefix``); each start's episodes form a
    new group, numbered after the groups of ``trajectories``, with seeds ``seed_offset`` away
    from `rollout`'s."""
    if k < 1 or not starts:
        return []
    next_group = max(t.group for t in trajectories) + 1
    jobs = [
        EpisodeJob(
            items[trajectories[i].item_id],
            next_group + b,
            seed * 1_000_003 + seed_offset + b * 7919 + j,
            replay=replay,
            prefix=prefix,
        )
        for b, (i, replay, prefix) in enumerate(starts)
        for j in range(k)
    ]
    return run_jobs(
        lm, jobs, protocol_settings=protocol_settings, generation=generation, batched=batched
    )


def branch(
    lm: QwenVideoLM,
    trajectories: Sequence[Trajectory],
    items: dict[str, QAItem],
    *,
    k: int,
    seed: int,
    protocol_settings: ProtocolSettings,
    generation: GenerationSettings,
    batched: bool = True,
) -> list[Trajectory]:
    """``k`` continuations of each branch point after its first reply. Each branch is a new
    group, numbered after the groups of ``trajectories``; ``seed`` is the step's, as `rollout`
    took it."""
    starts = [
        (i, (tuple(trajectories[i].extra["reply_ids"][0]),), ())
        for i in branch_points(trajectories, items)
    ]
    return run_branches(
        lm,
        trajectories,
        items,
        starts,
        k=k,
        seed=seed,
        seed_offset=BRANCH_SEEDS,
        protocol_settings=protocol_settings,
        generation=generation,
        batched=batched,
    )


def until_retrieve_tag(reply_ids: Sequence[int], tokenizer: Any) -> tuple[int, ...] | None:
    """The reply's tokens up to and including its ``<retrieve>`` tag (None: no tag)."""
    text = tokenizer.decode(list(reply_ids), skip_special_tokens=False)
    found = text.find(RETRIEVE_TAG)
    if found < 0:
        return None
    return tuple(reply_ids[: token_at(reply_ids, tokenizer, found + len(RETRIEVE_TAG) - 1) + 1])


def needs_first_branch(traj: Trajectory, item: QAItem) -> bool:
    """Whether ``traj``'s first look is worth branching over: a sampled episode (not itself a
    branch) whose first reply retrieved after a first turn that left evidence unseen."""
    if traj.replayed or traj.prefixed or not traj.turns or traj.turns[0]["action"] != "retrieve":
        return False
    relevant = relevant_pool_indices(traj.extra["pool"], item.relevant_windows)
    return not relevant or not relevant <= set(traj.turns[0]["frames"])


def first_decision_points(
    trajectories: Sequence[Trajectory], items: dict[str, QAItem]
) -> list[int]:
    """Indices of the trajectories whose first look to branch over: per group, the first that
    `needs_first_branch`."""
    return first_per_group(trajectories, lambda t: needs_first_branch(t, items[t.item_id]))


def branch_first(
    lm: QwenVideoLM,
    trajectories: Sequence[Trajectory],
    items: dict[str, QAItem],
    *,
    k: int,
    seed: int,
    protocol_settings: ProtocolSettings,
    generation: GenerationSettings,
    batched: bool = True,
) -> list[Trajectory]:
    """``k`` episodes from each first-decision point's first reply cut after its ``<retrieve>``
    tag, each a new group numbered after those of ``trajectories`` (`branch`'s too, when it is
    given them); ``seed`` is the step's."""
    tokenizer = lm.processor.tokenizer
    starts = []
    for i in first_decision_points(trajectories, items):
        prefix = until_retrieve_tag(trajectories[i].extra["reply_ids"][0], tokenizer)
        if prefix is not None:
            starts.append((i, (), prefix))
    return run_branches(
        lm,
        trajectories,
        items,
        starts,
        k=k,
        seed=seed,
        seed_offset=FIRST_BRANCH_SEEDS,
        protocol_settings=protocol_settings,
        generation=generation,
        batched=batched,
    )


def branch_stats(
    branches: Sequence[Trajectory],
    items: dict[str, QAItem],
    settings: RewardSettings,
    name: str = "branch",
) -> dict[str, float | None]:
    """Score the branches (rewards attached in place, their own batch for the exploration bonus)
    and return their figures for the step's metrics, apart from the sampled episodes' own, as
    ``{name}_*`` (``first_branch`` for `branch_first`'s)."""
    if not branches:
        keys = ("reward", "accuracy", "relevant_seen", "turns")
        return {f"{name}_episodes": 0, **{f"{name}_{key}": None for key in keys}}
    stats = score(branches, items, settings)
    return {
        f"{name}_episodes": len(branches),
        f"{name}_reward": stats["reward"],
        f"{name}_accuracy": stats["accuracy"],
        f"{name}_relevant_seen": stats["relevant_seen"],
        f"{name}_turns": stats["turns"],
    }
