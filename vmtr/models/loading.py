"""The front door from what a user names to a `VideoLM`.

`load_video_lm` turns a model spec (``tiny``, a local folder, a LoRA adapter folder, a hub id)
into the in-process backend; `as_video_lm` accepts what a Python caller hands over instead: a
`VideoLM` as it is, or a LangChain chat model wrapped.
Reading a checkpoint's weights is `vmtr.models.weights`. Kept apart from `vmtr.models.vlm` (the
interface every backend implements) so that the interface imports no backend.
"""

from __future__ import annotations

from typing import Any

from vmtr.config import ModelSettings
from vmtr.models.vlm import VideoLM


def as_video_lm(model: Any) -> VideoLM:
    """A LangChain chat model wrapped as a `VideoLM`; anything with ``generate`` (a `VideoLM`, or
    a wrapper that forwards to one) as it is."""
    from vmtr.models.chat_model import ChatModelVideoLM, is_chat_model  # langchain_core, lazily

    if is_chat_model(model):
        return ChatModelVideoLM(model)
    if callable(getattr(model, "generate", None)):
        return model
    raise TypeError(f"expected a VideoLM or a LangChain chat model, got {type(model).__name__}")


def load_video_lm(settings: ModelSettings) -> VideoLM:
    """Build the backend a model spec names: ``tiny`` (bundled), a local folder or a hub id."""
    from vmtr.models.qwen import QwenVideoLM  # torch and transformers only when a model loads

    return QwenVideoLM.load(settings)
