"""A `VideoLM` that replays scripted replies: for testing graphs without weights.

Like LangGraph's fake chat models, it lets a test (or a user wiring vmtr into a bigger agent)
drive every route of the agent — answer at once, retrieve then answer, invalid output, budget
exhausted — and inspect exactly what the model was shown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vmtr.config import GenerationSettings
from vmtr.models.vlm import FrameFetcher, Generation
from vmtr.protocol import frames_in


class ScriptedVideoLM:
    """Returns ``replies`` in order (or ``reply(messages)`` when given a function)."""

    name = "scripted"

    def __init__(
        self,
        replies: Sequence[str] | Callable[[Sequence[dict[str, Any]]], str],
        *,
        fetch_frames: bool = True,
    ) -> None:
        self._replies = replies
        self._fetch = fetch_frames
        self.calls: list[list[dict[str, Any]]] = []
        self.frames_seen: list[list[int]] = []
        self.sessions_ended: list[str] = []

    def generate(
        self,
        messages: Sequence[dict[str, Any]],
        frames: FrameFetcher,
        *,
        settings: GenerationSettings,
        session: str | None = None,
    ) -> Generation:
        """Record the call, fetch the frames it would see, and return the next scripted reply."""
        self.calls.append(list(messages))
        indices = frames_in(messages[-1]) if messages else []
        self.frames_seen.append(indices)
        if self._fetch and indices:
            images = frames(indices)
            if len(images) != len(indices):
                raise AssertionError("frame fetcher returned the wrong number of images")
        if callable(self._replies):
            text = self._replies(messages)
        else:
            turn = len(self.calls) - 1
            if turn >= len(self._replies):
                raise IndexError(f"script has {len(self._replies)} replies, asked for more")
            text = self._replies[turn]
        return Generation(text=text)

    def end_session(self, session: str) -> None:
        self.sessions_ended.append(session)
