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

from vmtr.config import GenerationSettings, ModelSettings
from vmtr.models.native_tools import (
    TOOL_RESULT,
    TOOLS,
    CallMemory,
    ToolCall,
    ToolProtocol,
    call_text,
    parse_arguments,
    reword,
)
from vmtr.models.openai_api import QWEN_FACTOR, REASONING_FIELDS, encode_image, message_text
from vmtr.models.vlm import FrameFetcher, Generation
from vmtr.protocol import frames_in


def langchain_messages(
    messages: Sequence[dict[str, Any]],
    frames: FrameFetcher,
    image_format: str = "png",
    native_calls: dict[str, ToolCall] | None = None,
) -> list[Any]:
    """The protocol's messages as LangChain messages, frames as standard image blocks. With
    ``native_calls`` (the native tool protocol), text names the tools and earlier calls go back
    as an `AIMessage` with ``tool_calls`` and a `ToolMessage` answering it."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    native = native_calls is not None
    words = reword if native else str
    wanted = [i for m in messages for i in frames_in(m)]
    images = iter(frames(wanted) if wanted else [])
    out: list[Any] = []
    for message in messages:
        role, content, text = message["role"], message.get("content"), message_text(message)
        if role == "system":
            out.append(SystemMessage(content=words(text)))
        elif role == "assistant" and native and text in native_calls:
            call = native_calls[text]
            request = {"name": call.name, "args": call.arguments, "id": call.id}
            out.append(AIMessage(content=call.content, tool_calls=[request]))
            out.append(ToolMessage(content=TOOL_RESULT, tool_call_id=call.id))
        elif role == "assistant":
            out.append(AIMessage(content=text))
        elif not isinstance(content, list):
            out.append(HumanMessage(content=words(text)))
        else:
            blocks: list[dict[str, Any]] = []
            for part in content:
                if part.get("type") == "image":
                    mime, data = encode_image(next(images), image_format)
                    blocks.append({"type": "image", "base64": data, "mime_type": mime})
                elif part.get("type") == "text":
                    blocks.append({"type": "text", "text": words(part["text"])})
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
    """`VideoLM` that asks a LangChain chat model (``BaseChatModel``). ``tool_protocol="native"``
    binds `select_segment` and `answer` as tools (``bind_tools``) in place of the text tags."""

    def __init__(
        self,
        chat_model: Any,
        *,
        pixel_budget: dict[str, int] | None = None,
        image_format: str = "png",
        tool_protocol: ToolProtocol = "text",
    ) -> None:
        self.tool_protocol = tool_protocol
        self._calls = CallMemory()
        self._runnable = chat_model
        if tool_protocol == "native":
            try:
                self._runnable = chat_model.bind_tools(TOOLS)
            except NotImplementedError:
                raise TypeError(
                    f"{type(chat_model).__name__} cannot bind tools; use tool_protocol='text'"
                ) from None
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
        """Forget the session's tool calls (nothing else is kept between turns)."""
        self._calls.forget(session)

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
        native = self.tool_protocol == "native"
        calls = self._calls.recall(session) if native else None
        reply = self._runnable.invoke(
            langchain_messages(messages, frames, self.image_format, calls)
        )
        text = ai_text(reply)
        if native and getattr(reply, "tool_calls", None):
            first = reply.tool_calls[0]
            call = ToolCall(
                id=str(first.get("id") or f"call_{len(calls or {})}"),
                name=first["name"],
                arguments=parse_arguments(first.get("args")),
                content=text,
            )
            text = call_text(call)
            self._calls.remember(session, text, call)
        usage = getattr(reply, "usage_metadata", None) or {}
        prompt = int(usage.get("input_tokens") or 0)
        cached = int((usage.get("input_token_details") or {}).get("cache_read") or 0)
        output = usage.get("output_tokens")
        return Generation(
            text=text,
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
