"""Long-context mode of the agent: N frames on turn 1 as bi-level KV; a retrieve makes chunks dense.

    vmtr ask VIDEO QUESTION --encoder kv-sparse --frames N

The same turn protocol and parser as the default agent, with two changes:

- ``prepare`` samples a pool of N frames (spread over the whole video, at most one per decoded
  frame) and shows all of them on turn 1, one ``frame_idx:s-e`` label per group of
  ``frames_per_label`` frames (`FRAMES_PER_LABEL`); with a `SparseVideoLM` they are prefilled
  chunk by chunk and held as pooled KV;
- ``select_segment`` sends no new images: the next user message says that frames s..e are now
  shown in full detail and carries a ``{"type": "dense"}`` control part, which the
  `SparseVideoLM` turns into dense KV for the chunks of that range.

Given a plain `QwenVideoLM` instead, the same graph is the dense baseline (every frame at full
detail from the start; control parts are stripped before the model sees them), which is how the
benchmark compares the two. Kept apart from `vmtr.agent.graph` on purpose: the default graph
reproduces Video-MTR exactly and should not grow a second mode's branches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vmtr import protocol
from vmtr.agent.ask import AskResult, resolve_model, run_graph
from vmtr.agent.graph import (
    PoolScorer,
    after_reply,
    compile_agent,
    frame_fetcher,
    fresh_episode,
    question_of,
    turn_record,
)
from vmtr.agent.state import AgentState
from vmtr.config import GenerationSettings, ProtocolSettings
from vmtr.models.kv_sparse import SparseSettings
from vmtr.models.sparse_lm import SparseVideoLM, strip_controls
from vmtr.models.vlm import VideoLM
from vmtr.tools import video as video_tools

LIST_LIMIT = 64
"""Up to this many frames the turn-1 header lists every index, as the protocol does."""

FRAMES_PER_LABEL = 4
"""Consecutive frames that share one ``frame_idx:s-e`` label on turn 1 of the long mode.

Video-XL-2 puts one timestamp before every group of 4 frames; a label per frame (about 10 tokens,
digits tokenize one by one) would outweigh the 16 pooled tokens of a frame in the bi-level cache,
where labels are kept whole. 4 is also `SparseSettings.frames_per_chunk`'s default, and
`plan_chunks` starts each chunk right after the previous chunk's last image, so the label before
a group's first frame belongs to that frame's chunk: with the defaults every chunk owns exactly
the one label naming its frames (with ``frames_per_chunk`` a multiple of it, whole groups). A
group that straddles two chunks still works: its label lies in the first one, whose text every
later chunk sees. It is a setting of its own, not the chunk size, so that a larger chunk
(Video-XL-2's 16 frames) keeps labels as fine as Video-XL-2's and the dense baseline, which has no
chunks, gets the same prompt.
"""


def long_pool(info: video_tools.VideoInfo, frames: int) -> list[float]:
    """N timestamps spread over the whole video (capped by its frame count)."""
    rate = max(1.0, frames / max(info.duration, 1e-6)) * 1.000001
    return video_tools.pool_timestamps(info, max_frames=frames, max_fps=rate)


def first_message(
    pool: Sequence[float],
    question: str,
    options: Sequence[str] | None,
    settings: ProtocolSettings,
    scores: Sequence[float] | None = None,
    frames_per_label: int = FRAMES_PER_LABEL,
) -> dict[str, Any]:
    """Turn 1 with every pool frame, one label per ``frames_per_label`` frames (1: the protocol's
    label per frame); a compact header once the list would be long."""
    shown = list(range(len(pool)))
    message = protocol.user_message(
        turn=1,
        frames=shown,
        timestamps=list(pool),
        question=question,
        options=options,
        pool_size=len(pool),
        settings=settings,
        frames_per_label=frames_per_label,
    )
    if len(shown) > LIST_LIMIT:
        header = message["content"][0]["text"].splitlines()
        header[-1] = (
            f"Here are {len(shown)} frames from the video, frame indices 0 to {len(shown) - 1}:"
        )
        message["content"][0]["text"] = "\n".join(header) + "\n"
    if scores is not None:
        message["content"].append({"type": "scores", "values": [float(s) for s in scores]})
    return message


def dense_message(
    turn: int,
    start: int,
    end: int,
    question: str,
    options: Sequence[str] | None,
    pool_size: int,
    settings: ProtocolSettings,
) -> dict[str, Any]:
    """The user message after a retrieve: no images, frames s..e now in full detail."""
    message = protocol.user_message(
        turn=turn,
        frames=[],
        timestamps=[],
        question=question,
        options=options,
        pool_size=pool_size,
        settings=settings,
    )
    head = message["content"][0]["text"].replace(
        "No new frames are shown this turn.",
        f"Frames {start} to {end} are now shown in full detail.",
    )
    message["content"][0]["text"] = head
    message["content"].append({"type": "dense", "start": int(start), "end": int(end)})
    return message


def build_long_graph(
    model: VideoLM,
    *,
    frames: int,
    protocol_settings: ProtocolSettings | None = None,
    generation: GenerationSettings | None = None,
    frame_cache: video_tools.FrameCache | None = None,
    scorer: PoolScorer | None = None,
    checkpointer: Any = None,
    name: str = "vmtr-long",
    frames_per_label: int = FRAMES_PER_LABEL,
):
    """Compile the long-context agent graph around ``model`` (a `SparseVideoLM`, or any
    `VideoLM` for the dense baseline). ``scorer`` gives per-frame relevance for
    ``relevance="store"``; ``frames_per_label`` frames share one turn-1 label."""
    settings = protocol_settings or ProtocolSettings()
    gen = generation or GenerationSettings()
    cache = frame_cache if frame_cache is not None else video_tools.FrameCache(max(frames, 256))
    sparse = isinstance(model, SparseVideoLM)
    fetch = frame_fetcher(cache, model)

    def prepare(state: AgentState) -> dict[str, Any]:
        question = question_of(state)
        video = str(state["video"])
        info = video_tools.probe(video)
        pool = long_pool(info, frames)
        scores = scorer(video, pool, question) if scorer is not None else None
        fetch(video, pool)(range(len(pool)))  # decode now so a broken video fails early
        options = protocol.format_options(state.get("options") or []) or None
        messages = [
            protocol.system_message(settings),
            first_message(pool, question, options, settings, scores, frames_per_label),
        ]
        return fresh_episode(state, question, options, info.duration, pool, messages)

    def reason(state: AgentState) -> dict[str, Any]:
        turn, pool, messages = state["turn"], state["pool"], state["messages"]
        last = turn >= settings.max_turns
        shown = protocol.frames_in(messages[-1])
        dense = [p for p in messages[-1]["content"] if p.get("type") == "dense"]
        started = time.perf_counter()
        reply = model.generate(
            messages if sparse else strip_controls(messages),
            fetch(state["video"], pool),
            settings=gen,
            session=state["run_id"],
        )
        action = protocol.parse_reply(
            reply.text, max_index=len(pool) - 1, options=state.get("options"), last_turn=last
        )
        record = turn_record(turn, shown, pool, reply, action, started, list_limit=LIST_LIMIT)
        if dense:
            record["dense"] = [dense[0]["start"], dense[0]["end"]]  # type: ignore[typeddict-unknown-key]
        stats = getattr(model, "last_stats", None)
        if sparse and stats:
            record["kv"] = dict(stats)  # type: ignore[typeddict-unknown-key]
        return after_reply(state, action, reply.text, record, settings)

    def select(state: AgentState) -> dict[str, Any]:
        start, end = state["pending"]
        turn = state["turn"] + 1
        message = dense_message(
            turn,
            start,
            end,
            state["question"],
            state.get("options"),
            len(state["pool"]),
            settings,
        )
        return {"messages": [*state["messages"], message], "turn": turn, "pending": None}

    return compile_agent(
        AgentState, model, prepare, reason, select, checkpointer=checkpointer, name=name
    )


def sparse_model(model: VideoLM, sparse: SparseSettings | None = None) -> VideoLM:
    """Wrap a `QwenVideoLM` in a `SparseVideoLM` (anything else is returned as is)."""
    from vmtr.models.qwen import QwenVideoLM

    if isinstance(model, QwenVideoLM):
        return SparseVideoLM(model, sparse)
    return model


def ask_long(
    video: str | Path,
    question: str,
    options: Sequence[str] | None = None,
    *,
    frames: int = 256,
    model: VideoLM | str | None = None,
    sparse: SparseSettings | None = None,
    dense_baseline: bool = False,
    on_update: Callable[[str, dict[str, Any]], None] | None = None,
    scorer: PoolScorer | None = None,
    frames_per_label: int = FRAMES_PER_LABEL,
    **settings: Any,
) -> AskResult:
    """Answer ``question`` in long-context mode: ``frames`` frames on turn 1 as bi-level KV,
    ``frames_per_label`` of them under each label.

    ``model`` is a loaded `VideoLM` (a `QwenVideoLM` is wrapped in a `SparseVideoLM`) or a model
    spec; other keywords are `ProtocolSettings`, `GenerationSettings` or `ModelSettings` fields,
    as for `vmtr.ask`. ``dense_baseline`` runs the same graph without the sparse encoder.
    """
    lm, proto, gen = resolve_model(model, settings)
    if not dense_baseline:
        lm = sparse_model(lm, sparse)
    graph = build_long_graph(
        lm,
        frames=frames,
        protocol_settings=proto,
        generation=gen,
        scorer=scorer,
        frames_per_label=frames_per_label,
    )
    return run_graph(graph, video, question, options, proto.max_turns, on_update)


ENCODERS = ("dense", "kv-sparse")
"""What `vmtr ask --encoder` accepts."""


def ask_with_encoder(
    video: str | Path,
    question: str,
    options: Sequence[str] | None = None,
    *,
    encoder: str = "dense",
    frames: int = 256,
    sparse: SparseSettings | None = None,
    frames_per_label: int = FRAMES_PER_LABEL,
    **kwargs: Any,
) -> AskResult:
    """`vmtr.ask` for ``encoder="dense"``, `ask_long` for ``"kv-sparse"`` (the CLI's switch).

    In kv-sparse mode every frame is shown on turn 1, so the frame-choice options of the default
    agent (``guided_retrieve``, ``first_turn_top``) do not apply; a ``scorer`` (the segment
    store) then ranks chunks instead (``relevance="store"``) unless ``sparse`` says otherwise.
    """
    if encoder == "dense":
        from vmtr.agent.ask import ask

        return ask(video, question, options, **kwargs)
    if encoder == "kv-sparse":
        kwargs.pop("guided_retrieve", None)
        kwargs.pop("first_turn_top", None)
        if sparse is None and kwargs.get("scorer") is not None:
            sparse = SparseSettings(relevance="store")
        return ask_long(
            video,
            question,
            options,
            frames=frames,
            sparse=sparse,
            frames_per_label=frames_per_label,
            **kwargs,
        )
    raise ValueError(f"unknown encoder {encoder!r}: use one of {', '.join(ENCODERS)}")
