"""`ask`: one question about one video, answered by the multi-turn agent.

The convenience front door over `build_graph`: it splits keyword settings onto the settings
objects they belong to, loads the model (or takes a ready `VideoLM`), runs the graph and returns
an `AskResult` holding the answer and the full per-turn trace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from vmtr.agent.graph import PoolScorer, build_graph
from vmtr.agent.state import TurnRecord
from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings
from vmtr.models.loading import as_video_lm, load_video_lm
from vmtr.models.vlm import VideoLM


@dataclass
class AskResult:
    """The answer (None when the budget ran out first) and how the agent got there."""

    answer: str | None
    turns: list[TurnRecord]
    stop_reason: str
    video: str
    question: str
    options: list[str] | None
    duration: float
    pool: list[float] = field(repr=False)

    @property
    def frames_seen(self) -> list[int]:
        """Distinct pool indices shown over the whole run, sorted."""
        return sorted({i for t in self.turns for i in t.get("frames", [])})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `vmtr ask --json` prints)."""
        data = asdict(self)
        data["frames_seen"] = self.frames_seen
        return data


def split_settings(overrides: dict[str, Any], *models: type[BaseModel]) -> tuple[BaseModel, ...]:
    """Build each settings model from the keyword arguments that name its fields."""
    unknown = set(overrides) - {name for m in models for name in m.model_fields}
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return tuple(m(**{k: v for k, v in overrides.items() if k in m.model_fields}) for m in models)


def ask(
    video: str | Path,
    question: str,
    options: Sequence[str] | None = None,
    *,
    model: VideoLM | Any | str | None = None,
    on_update: Callable[[str, dict[str, Any]], None] | None = None,
    scorer: PoolScorer | None = None,
    guided_retrieve: bool = False,
    first_turn_top: int = 0,
    **settings: Any,
) -> AskResult:
    """Answer ``question`` about ``video`` with the multi-turn agent.

    ``model`` is a loaded `VideoLM`, a LangChain chat model, or a model spec (hub id, local
    folder, ``tiny``); any other keyword is a field of `ProtocolSettings`, `GenerationSettings`
    or `ModelSettings` (``max_turns=2``, ``temperature=0``, ``max_pixels=...``).
    ``on_update(node, update)`` is called after every graph node, for progress displays. ``scorer`` (for example a segment
    store's `scores_at`) ranks pool frames against the question; ``guided_retrieve`` then picks a
    retrieve's frames by that score and ``first_turn_top`` mixes that many top frames into turn 1.
    """
    lm, proto, gen = resolve_model(model, settings)
    graph = build_graph(
        lm,
        protocol_settings=proto,
        generation=gen,
        scorer=scorer,
        guided_retrieve=guided_retrieve,
        first_turn_top=first_turn_top,
    )
    return run_graph(graph, video, question, options, proto.max_turns, on_update)


def resolve_model(
    model: VideoLM | Any | str | None, settings: dict[str, Any]
) -> tuple[VideoLM, ProtocolSettings, GenerationSettings]:
    """The `VideoLM` to ask (``model`` itself, or loaded from a spec or the model keywords) and
    the protocol and generation settings among ``settings``."""
    if isinstance(model, str):
        settings = {**settings, "model": model}
        model = None
    proto, gen, model_settings = split_settings(
        settings, ProtocolSettings, GenerationSettings, ModelSettings
    )
    lm = as_video_lm(model) if model is not None else load_video_lm(model_settings)
    return lm, proto, gen


def run_graph(
    graph: Any,
    video: str | Path,
    question: str,
    options: Sequence[str] | None,
    max_turns: int,
    on_update: Callable[[str, dict[str, Any]], None] | None = None,
) -> AskResult:
    """Stream a compiled agent graph over one question and collect its result and trace."""
    inputs = {"video": str(video), "question": question, "options": list(options or []) or None}
    config = {"recursion_limit": 4 * max_turns + 10}
    state: dict[str, Any] = {}
    turns: list[TurnRecord] = []
    for chunk in graph.stream(inputs, config, stream_mode="updates"):
        for node, update in chunk.items():
            update = update or {}
            turns.extend(update.get("turns", []))
            state.update({k: v for k, v in update.items() if k != "turns"})
            if on_update is not None:
                on_update(node, update)
    return AskResult(
        answer=state.get("answer"),
        turns=turns,
        stop_reason=state.get("stop_reason", "answered"),
        video=str(video),
        question=state.get("question", question),
        options=state.get("options"),
        duration=state.get("duration", 0.0),
        pool=state.get("pool", []),
    )
