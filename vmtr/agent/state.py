"""The graph state: ids, indices, timestamps and text only, so any checkpointer can store it.

Pixels never enter the state; frames are decoded into a per-run `FrameCache` keyed by the video
and the pool timestamp, and the model backend resolves ``{"type": "image", "frame": i}``
placeholders through it.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict


class TurnRecord(TypedDict, total=False):
    """What happened in one turn: the trace `vmtr ask` prints and evaluation stores."""

    turn: int
    frames: list[int]
    timestamps: list[float]
    raw: str
    action: str  # "answer" | "retrieve" | "invalid"
    answer: str | None
    retrieve: list[int] | None
    error: str | None
    error_message: str | None
    seconds: float
    prompt_tokens: int
    new_prompt_tokens: int
    completion_tokens: int


class AgentInput(TypedDict, total=False):
    """What a caller (or a host graph) supplies."""

    video: str
    question: str
    options: list[str] | None
    subtitles: str | None  # the video's subtitle file, read only by a graph built to show them


class AgentState(AgentInput, total=False):
    """The whole run. ``turns`` accumulates; everything else is overwritten by the node that owns it."""

    run_id: str
    duration: float
    pool: list[float]
    messages: list[dict[str, Any]]
    turn: int
    pending: list[int] | None
    turns: Annotated[list[TurnRecord], operator.add]
    answer: str | None
    done: bool
    stop_reason: str
    subtitle_cues: list[list[Any]] | None  # [start s, end s, text] per line, when shown
