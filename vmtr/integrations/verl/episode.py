"""One Video-MTR episode against any token-in/token-out generator (no verl needed).

The steps are those of the agent graph (`vmtr.agent.graph`): probe the video and sample its frame
pool, show the first turn's frames with the question, parse each reply strictly, answer ends the
episode, a retrieve shows the frames `select_segment` picks, an invalid reply is explained in a
user turn without frames, and the last turn must answer. Prompts, parser, pool and frame choice
are vmtr's own functions, so the conversation is the one `vmtr ask` holds; tokens go through
`Transcript`, so they are the ones `vmtr.policies.rollout` records.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from PIL import Image

from vmtr import protocol
from vmtr.agent.graph import after_reply, turn_record
from vmtr.agent.state import TurnRecord
from vmtr.config import ProtocolSettings
from vmtr.eval.datasets import QAItem
from vmtr.integrations.verl.transcript import Transcript
from vmtr.models.vlm import Generation
from vmtr.tools import video as video_tools
from vmtr.tools.select import first_turn_frames, relevant_pool_indices, select_segment

Generate = Callable[
    [list[int], list[Image.Image], int | None], Awaitable[tuple[list[int], list[float] | None]]
]
"""(all token ids so far, all images so far, tokens left in the episode's budget or None) ->
(sampled reply tokens, their log-probs)."""

Offload = Callable[[Callable[[], Any]], Awaitable[Any]]
"""Runs blocking work (frame decoding, tokenization) off the event loop; see `inline`."""


async def inline(work: Callable[[], Any]) -> Any:
    """Run ``work`` right here (the default when no executor is at hand)."""
    return work()


FrameReader = Callable[[str, Sequence[float], Sequence[int]], Sequence[Image.Image]]
"""(video, pool timestamps, pool indices) -> decoded frames."""


@dataclass
class Episode:
    """What one episode produced: its tokens, conversation, per-turn trace and reward inputs."""

    transcript: Transcript
    prompt_length: int  # tokens before the first reply (verl's "prompt")
    messages: list[dict[str, Any]]
    turns: list[TurnRecord]
    pool: list[float]
    answer: str | None
    correct: bool
    relevant: list[int]
    stop_reason: str
    first_seen: list[int] = field(default_factory=list)


def frame_reader(cache: video_tools.FrameCache, budget: dict[str, int]) -> FrameReader:
    """Pool frames from ``cache`` at the per-frame pixel ``budget``."""

    def read(video: str, pool: Sequence[float], indices: Sequence[int]) -> list[Image.Image]:
        return cache.get_many(video, [pool[i] for i in indices], **budget)

    return read


async def run_episode(
    item: QAItem,
    transcript: Transcript,
    generate: Generate,
    read_frames: FrameReader,
    settings: ProtocolSettings,
    *,
    token_budget: int | None = None,
    offload: Offload = inline,
) -> Episode:
    """Play ``item`` to the end; ``token_budget`` caps the tokens after the first prompt (the
    episode stops, as spent, once a reply leaves no room for another turn). ``offload`` runs
    frame decoding and tokenization (an executor keeps other episodes going meanwhile)."""
    video = str(item.video)
    info = await offload(lambda: video_tools.probe(video))
    pool = video_tools.pool_timestamps(
        info, max_frames=settings.pool_size, max_fps=settings.pool_max_fps
    )
    question = item.question.strip()
    if not question:
        raise ValueError(f"item {item.id}: the question is empty")
    options = protocol.format_options(item.options or []) or None
    shown = first_turn_frames(len(pool), settings.first_turn_frames)
    messages: list[dict[str, Any]] = [
        protocol.system_message(settings),
        protocol.user_message(
            turn=1,
            frames=shown,
            timestamps=[pool[i] for i in shown],
            question=question,
            options=options,
            pool_size=len(pool),
            settings=settings,
        ),
    ]

    def frames(indices: Sequence[int]) -> Sequence[Image.Image]:
        return read_frames(video, pool, indices)

    await offload(partial(transcript.add_messages, messages, frames))
    prompt_length = len(transcript.ids)
    state: dict[str, Any] = {
        "turn": 1,
        "messages": messages,
        "question": question,
        "options": options,
        "pool": pool,
    }
    turns: list[TurnRecord] = []
    answer, stop_reason = None, "budget_exhausted"
    while True:
        turn = state["turn"]
        started = time.perf_counter()
        before = len(transcript.ids)
        room = None if token_budget is None else token_budget - (before - prompt_length)
        if room is not None and room <= 0:
            stop_reason = "length"  # the environment's last message used up the budget
            break
        tokens, logprobs = await generate(list(transcript.ids), list(transcript.images), room)
        text = transcript.add_reply(tokens, logprobs)
        reply = Generation(text=text, token_ids=list(tokens), prompt_tokens=before)
        action = protocol.parse_reply(
            text,
            max_index=len(pool) - 1,
            options=options,
            last_turn=turn >= settings.max_turns,
        )
        shown_now = protocol.frames_in(state["messages"][-1])
        record = turn_record(turn, shown_now, pool, reply, action, started)
        turns.append(record)
        update = after_reply(state, action, text, record, settings)
        state["messages"] = update["messages"]
        if update.get("done"):
            answer, stop_reason = update.get("answer"), update["stop_reason"]
            break
        spent = len(transcript.ids) - prompt_length
        if token_budget is not None and spent >= token_budget:
            stop_reason = "length"
            break
        if update.get("pending"):
            start, end = update["pending"]
            chosen = select_segment(start, end, settings.frames_per_retrieve)
            state["turn"] = turn + 1
            state["messages"] = [
                *state["messages"],
                protocol.user_message(
                    turn=turn + 1,
                    frames=chosen,
                    timestamps=[pool[i] for i in chosen],
                    question=question,
                    options=options,
                    pool_size=len(pool),
                    settings=settings,
                ),
            ]
        else:
            state["turn"] = update["turn"]
        await offload(partial(transcript.add_messages, state["messages"], frames))
    relevant = sorted(relevant_pool_indices(pool, item.relevant_windows))
    return Episode(
        transcript=transcript,
        prompt_length=prompt_length,
        messages=state["messages"],
        turns=turns,
        pool=pool,
        answer=answer,
        correct=answer is not None and answer == item.answer,
        relevant=relevant,
        stop_reason=stop_reason,
        first_seen=list(shown),
    )


def reward_inputs(episode: Episode) -> dict[str, Any]:
    """The JSON-able per-episode record the reward reads: per-turn outcomes, where each turn's
    reply ends in verl's response (prompt removed), correctness and the relevant pool frames."""
    from vmtr.policies.rollout import turn_outcomes

    outcomes, _ = turn_outcomes(episode.turns)
    offset = episode.prompt_length
    return {
        "turns": [
            {"valid": o.valid, "action": o.action, "seen_after": sorted(o.seen_after)}
            for o in outcomes
        ],
        "turn_ends": [last - offset for _, last in episode.transcript.spans],
        "correct": bool(episode.correct),
        "relevant": list(episode.relevant),
        "first_seen": list(episode.first_seen),
        "answer": episode.answer,
        "stop_reason": episode.stop_reason,
    }
