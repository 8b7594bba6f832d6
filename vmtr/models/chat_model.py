"""`VideoLM` over a LangChain chat model, so LangGraph users can hand the agent their own model.

Any ``langchain_core`` chat model works: ``ChatOpenAI(base_url=...)`` in front of vLLM, a hosted
model, or a fake chat model in tests. The protocol's messages become LangChain messages with the
parts in the same order, frames as LangChain's standard base64 image blocks (which every provider
integration translates into its own image form). The chat model's own settings (temperature,
token limit) apply; the agent's generation settings are for backends vmtr drives itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from vmtr.agent.protocol import frames_in
from vmtr.config import GenerationSettings, ModelSettings
from vmtr.models.openai_api import QWEN_FACTOR, REASONING_FIELDS, encode_image, message_text
from vmtr.models.vlm import FrameFetcher, Generation


def langchain_messages(
    messages: Sequence[dict[str, Any]], frames: FrameFetcher, image_format: str = "png"
) -> list[Any]:
    """The protocol's messages as LangChain messages, frames as standard image blocks."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    wanted = [i for m in messages for i in frames_in(m)]
    images = iter(frames(wanted) if wanted else [])
    out: list[Any] = []
    for message in messages:
        role, content = message["role"], message.get("content")
        if role == "system":
            out.append(SystemMessage(content=message_text(message)))
        elif role == "assistant":
            out.append(AIMessage(content=message_text(message)))
        elif not isinstance(content, list):
            out.append(HumanMessage(content=message_text(message)))
        else:
            blocks: list[dict[str, Any]] = []
            for part in content:
                if part.get("type") == "image":
                    mime, data = encode_image(next(images), image_format)
                    blocks.append({"type": "image", "base64": data, "mime_type": mime})
                elif part.get("type") == "text":
                    blocks.append({"type": "text", "text": part["text"]})
            out.append(HumanMessage(content=blocks))
    return out


def ai_text(message: Any) -> str:
    """The reply's text, with a reasoning block the provider split off put back as ``<think>``."""
    text = message.text  # a property (a str) in langchain_core 1, a method before
    text = str(text if isinstance(text, str) else text())
    extra = getattr(message, "additional_kwargs", None) or {}
    for name in REASONING_FIELDS:
        reasoning = extra.get(name)
        if isinstance(reasoning, str) and reasoning:
            return f"<think>{reasoning}</think>{text}"
    return text


class ChatModelVideoLM:
    """`VideoLM` that asks a LangChain chat model (``BaseChatModel``)."""

    def __init__(
        self,
        chat_model: Any,
        *,
        pixel_budget: dict[str, int] | None = None,
        image_format: str = "png",
    ) -> None:
        self.chat_model = chat_model
        inner = getattr(chat_model, "bound", chat_model)
        self.name = str(
            getattr(inner, "model_name", None)
            or getattr(inner, "model", None)
            or type(inner).__name__
        )
        defaults = ModelSettings(model=self.name)
        self.pixel_budget = pixel_budget or {
            "max_pixels": defaults.max_pixels,
            "min_pixels": defaults.min_pixels,
            "factor": QWEN_FACTOR,
        }
        self.image_format = image_format

    def end_session(self, session: str) -> None:
        """Nothing is kept between turns: each call carries the whole conversation."""

    def generate(
        self,
        messages: Sequence[dict[str, Any]],
        frames: FrameFetcher,
        *,
        settings: GenerationSettings,
        session: str | None = None,
    ) -> Generation:
        """Invoke the chat model on the conversation; usage comes from its usage metadata."""
        started = time.perf_counter()
        reply = self.chat_model.invoke(langchain_messages(messages, frames, self.image_format))
        usage = getattr(reply, "usage_metadata", None) or {}
        prompt = int(usage.get("input_tokens") or 0)
        cached = int((usage.get("input_token_details") or {}).get("cache_read") or 0)
        output = usage.get("output_tokens")
        return Generation(
            text=ai_text(reply),
            prompt_tokens=prompt,
            new_prompt_tokens=max(prompt - cached, 0),
            completion_tokens=None if output is None else int(output),
            seconds=time.perf_counter() - started,
        )


def is_chat_model(model: Any) -> bool:
    """Whether ``model`` is a LangChain chat model, bare or bound (``chat.bind(temperature=0)``)."""
    from langchain_core.language_models import BaseChatModel
    from langchain_core.runnables import RunnableBinding

    if isinstance(model, RunnableBinding):
        model = model.bound
    return isinstance(model, BaseChatModel)
