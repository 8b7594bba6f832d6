"""Multi-turn rollouts for RL, run through the agent's own graph.

A rollout is not a re-implementation of the protocol: it runs `build_graph` — the same prompts,
parser, frame pool and `select_segment` as `vmtr ask` — around a recorder that, when the graph
ends its session, takes the backend's token sequence exactly as the model consumed and sampled it
(no decode and re-encode). From that it builds the loss mask (1 on the model's own tokens, 0 on
everything the environment added), the sampling log-probs and the span of every turn's reply,
whose last token is where that turn's reward sits.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from vmtr.agent.graph import build_graph
from vmtr.config import GenerationSettings, ProtocolSettings
from vmtr.eval.datasets import QAItem
from vmtr.models.engine import EpisodeEngine
from vmtr.models.qwen import QwenVideoLM
from vmtr.policies.rewards import (
    RewardSettings,
    TrajectoryReward,
    TurnOutcome,
    exploration_bonus,
    frame_iou,
    trajectory_reward,
)
from vmtr.tools.select import relevant_pool_indices
from vmtr.tools.video import FrameCache


@dataclass
class Trajectory:
    """One episode as token tensors plus what happened in it."""

    item_id: str
    group: int
    input_ids: torch.Tensor  # [L]
    mm_token_type_ids: torch.Tensor  # [L]
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    action_mask: torch.Tensor  # [L] 1 on sampled tokens
    old_logprobs: torch.Tensor  # [L] sampling log-probs on sampled tokens, 0 elsewhere
    turn_spans: list[tuple[int, int]]  # (first, last) sampled token of each reply
    turns: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    answer: str | None
    correct: bool
    reward: TrajectoryReward | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # the vision tower's merged embeddings of pixel_values, as the episode engine computed them
    # while sampling (None on the one-at-a-time path)
    image_embeds: torch.Tensor | None = None
    # leading replies fed from another episode rather than sampled (a branch: `branching`); they
    # keep their span and reward but leave the action mask, so nothing trains them
    replayed: int = 0
    # tokens fed at the start of the first reply after those (a branch inside a reply); untrained
    prefixed: int = 0

    @property
    def retrieved(self) -> bool:
        return any(t["action"] == "retrieve" for t in self.turns)


class _Recorder:
    """Wraps the backend; keeps each session's tokens when the graph ends it, and the token ids
    of every reply (what a branch replays). Its first ``len(replay)`` replies are fed from
    ``replay`` instead of sampled, and the reply after them starts with ``prefix``."""

    def __init__(
        self,
        lm: QwenVideoLM | EpisodeEngine,
        replay: Sequence[Sequence[int]] = (),
        prefix: Sequence[int] = (),
    ):
        self.lm = lm
        self.name = lm.name
        self.pixel_budget = lm.pixel_budget
        self.records: dict[str, dict[str, Any]] = {}
        self.replies: list[list[int]] = []
        self.replay = list(replay)
        self.prefix = tuple(prefix)

    def generate(self, *args: Any, **kwargs: Any):
        if len(self.replies) < len(self.replay):
            kwargs["forced"] = self.replay[len(self.replies)]
        elif len(self.replies) == len(self.replay) and self.prefix:
            kwargs["prefix"] = self.prefix
        generation = self.lm.generate(*args, **kwargs)
        self.replies.append(list(generation.token_ids))
        return generation

    def end_session(self, session: str) -> None:
        record = self.lm.session_tokens(session)
        if record is not None:
            self.records[session] = record
        self.lm.end_session(session)


def turn_outcomes(turns: Sequence[dict[str, Any]]) -> tuple[list[TurnOutcome], set[int]]:
    """Per-turn reward inputs from the graph's trace, and the frames shown on turn 1."""
    shown = [set(t.get("frames", [])) for t in turns]
    first = shown[0] if shown else set()
    outcomes = []
    for k, turn in enumerate(turns):
        seen = set().union(*shown[: k + 2]) if shown else set()
        outcomes.append(
            TurnOutcome(
                valid=turn["action"] != "invalid",
                action=turn["action"],
                seen_after=frozenset(seen),
            )
        )
    return outcomes, first


def _tensors(record: dict[str, Any]) -> dict[str, Any]:
    ids = record["input_ids"]
    mask = torch.zeros_like(ids, dtype=torch.float32)
    logprobs = torch.zeros_like(ids, dtype=torch.float32)
    spans = []
    for reply in record["replies"]:
        if reply.sampled == 0:
            continue
        first, last = reply.start, reply.start + reply.sampled - 1
        mask[first : last + 1] = 1.0
        logprobs[first : last + 1] = torch.tensor(reply.logprobs, dtype=torch.float32)
        spans.append((first, last))
    return {"action_mask": mask, "old_logprobs": logprobs, "turn_spans": spans}


def run_episode(
    lm: QwenVideoLM | EpisodeEngine,
    item: QAItem,
    *,
    group: int,
    seed: int,
    protocol_settings: ProtocolSettings,
    generation: GenerationSettings,
    frame_cache: FrameCache | None = None,
    replay: Sequence[Sequence[int]] = (),
    prefix: Sequence[int] = (),
) -> Trajectory:
    """One sampled episode on ``item`` through the agent graph; its first replies are
    ``replay``'s token ids, fed rather than sampled, when given (then untrained: `replayed`),
    and the reply after them starts with ``prefix``'s (fed too, and untrained)."""
    recorder = _Recorder(lm, replay, prefix)
    gen = generation.model_copy(update={"seed": seed})
    graph = build_graph(
        recorder, protocol_settings=protocol_settings, generation=gen, frame_cache=frame_cache
    )
    state = graph.invoke(
        {"video": str(item.video), "question": item.question, "options": item.options},
        {"recursion_limit": 4 * protocol_settings.max_turns + 10},
    )
    record = recorder.records[state["run_id"]]
    answer = state.get("answer")
    tensors = _tensors(record)
    replayed = min(len(replay), len(recorder.replies))
    for first, last in tensors["turn_spans"][:replayed]:
        tensors["action_mask"][first : last + 1] = 0.0
    if prefix and len(tensors["turn_spans"]) > replayed:
        first, _ = tensors["turn_spans"][replayed]
        tensors["action_mask"][first : first + len(prefix)] = 0.0
    return Trajectory(
        item_id=item.id,
        group=group,
        input_ids=record["input_ids"],
        mm_token_type_ids=record["mm_token_type_ids"],
        pixel_values=record["pixel_values"],
        image_grid_thw=record["image_grid_thw"],
        turns=list(state["turns"]),
        messages=list(state["messages"]),
        answer=answer,
        correct=answer is not None and answer == item.answer,
        extra={"pool": state["pool"], "reply_ids": recorder.replies},
        image_embeds=record.get("image_embeds"),
        replayed=replayed,
        prefixed=len(prefix) if len(tensors["turn_spans"]) > replayed else 0,
        **tensors,
    )


def score(
    trajectories: Sequence[Trajectory],
    items: dict[str, QAItem],
    settings: RewardSettings,
) -> dict[str, float | None]:
    """Attach rewards (with the batch-level exploration bonus) and return batch statistics."""
    seen_all, ious = [], []  # where the policy looked, whatever it answered: aim, unlike reward
    for traj in trajectories:
        outcomes, first = turn_outcomes(traj.turns)
        relevant = relevant_pool_indices(traj.extra["pool"], items[traj.item_id].relevant_windows)
        traj.reward = trajectory_reward(
            outcomes, correct=traj.correct, relevant=relevant, first_seen=first, settings=settings
        )
        if len(traj.reward.per_turn) != len(traj.turn_spans):
            raise RuntimeError("turn count differs between the graph trace and the token record")
        if relevant:
            seen = outcomes[-1].seen_after if outcomes else frozenset()
            seen_all.append(float(relevant <= seen))
            ious.append(frame_iou(seen, relevant))
    rate = exploration_bonus(
        [t.reward for t in trajectories], [t.retrieved for t in trajectories], settings
    )
    n = max(len(trajectories), 1)
    return {
        "reward": sum(t.reward.total for t in trajectories) / n,
        "reward_answer": sum(t.reward.answer for t in trajectories) / n,
        "reward_format": sum(sum(t.reward.format) for t in trajectories) / n,
        "reward_frames": sum(sum(t.reward.frames) for t in trajectories) / n,
        "reward_bonus": sum(sum(t.reward.bonus) for t in trajectories) / n,
        "accuracy": sum(t.correct for t in trajectories) / n,
        "turns": sum(len(t.turns) for t in trajectories) / n,
        "retrieve_rate": sum(t.retrieved for t in trajectories) / n,
        "rewarded_retrieve_rate": rate,
        # None (JSON null) where no item has relevant windows: NaN is not JSON
        "relevant_seen": sum(seen_all) / len(seen_all) if seen_all else None,
        "frame_iou": sum(ious) / len(ious) if ious else None,
        "response_tokens": sum(float(t.action_mask.sum()) for t in trajectories) / n,
    }


@dataclass(frozen=True)
class EpisodeJob:
    """One episode to run: its item, GRPO group, sampling seed, any replies to replay and the
    first tokens of the reply after them."""

    item: QAItem
    group: int
    seed: int
    replay: tuple[tuple[int, ...], ...] = ()
    prefix: tuple[int, ...] = ()


def rollout(
    lm: QwenVideoLM,
    items: Sequence[QAItem],
    *,
    group_size: int,
    seed: int,
    protocol_settings: ProtocolSettings,
    generation: GenerationSettings,
    batched: bool = True,
    engine_stats: dict[str, float] | None = None,
) -> list[Trajectory]:
    """``group_size`` sampled episodes per item (GRPO groups), each with its own seed.

    ``batched`` (the default) runs every episode at once, each graph in its own thread, on one
    `EpisodeEngine`: one forward per token for all of them, a group's shared first prompt
    prefilled once, each video's frames decoded once. Each episode samples from its own
    generator, so its tokens are those of the one-at-a-time path (``batched=False``) with the
    same seed. ``engine_stats``, when given, receives the engine's counters and its worker's
    seconds by phase (prefill, vision, decode).
    """
    jobs = [
        EpisodeJob(item, g, seed * 1_000_003 + g * 7919 + k)
        for g, item in enumerate(items)
        for k in range(group_size)
    ]
    return run_jobs(
        lm,
        jobs,
        protocol_settings=protocol_settings,
        generation=generation,
        batched=batched,
        engine_stats=engine_stats,
    )


def run_jobs(
    lm: QwenVideoLM,
    jobs: Sequence[EpisodeJob],
    *,
    protocol_settings: ProtocolSettings,
    generation: GenerationSettings,
    batched: bool = True,
    engine_stats: dict[str, float] | None = None,
) -> list[Trajectory]:
    """The jobs' episodes, in order: all at once on one `EpisodeEngine` (``batched``), else one
    at a time on ``lm``; the same tokens either way (see `rollout`)."""
    videos = len({job.item.video for job in jobs})
    frames = FrameCache(max_frames=max(256, 64 * videos))

    def one(model: QwenVideoLM | EpisodeEngine, job: EpisodeJob) -> Trajectory:
        return run_episode(
            model,
            job.item,
            group=job.group,
            seed=job.seed,
            protocol_settings=protocol_settings,
            generation=generation,
            frame_cache=frames,
            replay=job.replay,
            prefix=job.prefix,
        )

    if not batched or len(jobs) <= 1:
        return [one(lm, job) for job in jobs]
    with (
        EpisodeEngine(lm, max_episodes=len(jobs)) as engine,
        ThreadPoolExecutor(len(jobs), thread_name_prefix="vmtr-rollout") as pool,
    ):
        trajectories = list(pool.map(lambda job: one(engine, job), jobs))
    if engine_stats is not None:
        engine_stats.update(engine.stats())
    return trajectories
