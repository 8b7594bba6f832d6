"""`VideoLM`: the small interface between the agent and a vision-language model.

The agent hands over the conversation so far (chat messages whose frames are pool-index
placeholders) and a way to fetch those frames; the model returns its next reply with the token
ids it generated, their log-probs and token counts, so evaluation can report cost and RL can train
on exactly what was sampled. `vmtr.models.loading.load_video_lm` is the front door that turns a model spec (hub id,
local folder, ``tiny``) into a backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from vmtr.config import GenerationSettings

FrameFetcher = Callable[[Sequence[int]], list[Image.Image]]
"""Returns the images of the given pool indices, in order."""


class ModelLoadError(RuntimeError):
    """A checkpoint could not be loaded; the message says why and what to do."""


@dataclass
class Generation:
    """One model reply, with what RL and cost reports need."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    prompt_tokens: int = 0
    new_prompt_tokens: int = 0
    seconds: float = 0.0
    completion_tokens: int | None = None  # when the backend counts them but has no ids (a server)


@runtime_checkable
class VideoLM(Protocol):
    """A model that continues a multi-turn video conversation."""

    name: str

    def generate(
        self,
        messages: Sequence[dict[str, Any]],
        frames: FrameFetcher,
        *,
        settings: GenerationSettings,
        session: str | None = None,
    ) -> Generation:
        """Reply to the conversation. ``session`` lets a backend keep state (a KV cache) between
        the turns of one run; a backend must give the same output with or without it."""
        ...

    def end_session(self, session: str) -> None:
        """Forget whatever was kept for ``session``."""
        ...
