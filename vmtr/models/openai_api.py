"""`VideoLM` over an OpenAI-compatible chat-completions endpoint: vLLM, SGLang, `transformers
serve` or a hosted API.

Each turn sends the whole conversation again (servers keep no session; vLLM and SGLang reuse the
shared prefix through their own prefix caches). The messages are the protocol's, part for part:
every text part as a text part, every frame placeholder as a base64 image part at the protocol's
pixel budget, so a Qwen2.5-VL chat template on the server renders exactly the prompt the
in-process backend renders (each frame after its ``frame_idx`` label). Frames are sized here, on
the factor-of-28 grid, so that the server's processor finds them within its budget and resizes
nothing. Transient failures (connection, timeout, 429, 5xx) are retried with a doubling, capped
wait; anything else becomes a `ServedModelError` whose message says what to change.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from vmtr.config import GenerationSettings, ModelSettings, ServedSettings
from vmtr.models.native_tools import (
    TOOL_RESULT,
    TOOLS,
    CallMemory,
    ToolCall,
    call_text,
    parse_arguments,
    reword,
)
from vmtr.models.vlm import FrameFetcher, Generation
from vmtr.protocol import frames_in

QWEN_FACTOR = 28
"""Qwen2(.5)-VL's image grid: 14-pixel patches merged 2x2."""

CHECK_TIMEOUT = 30.0
"""Seconds the model list may take: a server that cannot list its models that fast is stuck."""

RETRIED_STATUS = {408, 409, 429}
"""Besides 5xx: statuses a later try can succeed on (timeout, conflict, rate limit)."""


class ServedModelError(RuntimeError):
    """A served model could not reply; the message says why and what to change. ``status`` is
    the HTTP status the server answered (None when it could not be reached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def encode_image(image: Image.Image, image_format: str = "png") -> tuple[str, str]:
    """(mime type, base64 data) of ``image``: png keeps the pixels exact, jpeg is smaller."""
    buffer = io.BytesIO()
    if image_format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format="PNG")
    return f"image/{image_format}", base64.b64encode(buffer.getvalue()).decode("ascii")


def message_text(message: dict[str, Any]) -> str:
    """All text parts of a protocol message, joined as the chat template joins them."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if part.get("type") == "text")


def chat_messages(
    messages: Sequence[dict[str, Any]],
    frames: FrameFetcher,
    image_format: str = "png",
    native_calls: dict[str, ToolCall] | None = None,
) -> list[dict[str, Any]]:
    """The protocol's messages in chat-completions form. System and assistant messages become
    plain strings; user messages keep their parts in order, frames as ``image_url`` data URLs.

    With ``native_calls`` (the native tool protocol: reply text -> the call it came from), user
    text names the tools, and a reply that came from a call goes back as that call and its result.
    """
    native = native_calls is not None
    wanted = [i for m in messages for i in frames_in(m)]
    images = iter(frames(wanted) if wanted else [])
    out: list[dict[str, Any]] = []
    for message in messages:
        role, text = message["role"], message_text(message)
        if native and role == "assistant" and text in native_calls:
            out.extend(call_messages(native_calls[text]))
            continue
        if role != "user" or not isinstance(message.get("content"), list):
            out.append({"role": role, "content": reword(text) if native else text})
            continue
        parts: list[dict[str, Any]] = []
        for part in message["content"]:
            if part.get("type") == "image":
                mime, data = encode_image(next(images), image_format)
                url = f"data:{mime};base64,{data}"
                parts.append({"type": "image_url", "image_url": {"url": url}})
            elif part.get("type") == "text":
                words = reword(part["text"]) if native else part["text"]
                parts.append({"type": "text", "text": words})
        out.append({"role": "user", "content": parts})
    return out


def call_messages(call: ToolCall) -> list[dict[str, Any]]:
    """An earlier tool call as chat-completions sends it back: the call, then its result."""
    function = {"name": call.name, "arguments": call.json_arguments}
    return [
        {
            "role": "assistant",
            "content": call.content or None,
            "tool_calls": [{"id": call.id, "type": "function", "function": function}],
        },
        {"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT},
    ]


REASONING_FIELDS = ("reasoning_content", "reasoning")
"""Where servers with a reasoning parser (transformers serve for Qwen models, vLLM and SGLang
with --reasoning-parser) put the text they cut out of ``<think>...</think>``."""


END_OF_TURN = "<|im_end|>"
"""Qwen's end-of-turn token as text: a reasoning parser that never saw ``</think>`` leaves it at
the end of the reasoning it cut out."""


def reply_text(message: Any) -> str:
    """The reply as the model wrote it: a server that moved the ``<think>`` block into a reasoning
    field gets it put back in front, since the protocol's parser reads both tags.

    With no content after it the block is put back unclosed: a reply that never closed its think
    (cut off, or ended inside it) must not gain a ``</think>`` it did not write; such a reply has
    no action either way, so the protocol's verdict is the same."""
    content = getattr(message, "content", None) or ""
    extra = getattr(message, "model_extra", None) or {}
    for name in REASONING_FIELDS:
        reasoning = getattr(message, name, None) or extra.get(name)
        if isinstance(reasoning, str) and reasoning:
            if not content:
                return f"<think>{reasoning.removesuffix(END_OF_TURN)}"
            return f"<think>{reasoning}</think>{content}"
    return content


def request_body(settings: GenerationSettings) -> dict[str, Any]:
    """The generation settings as chat-completions fields (temperature 0 is greedy)."""
    body: dict[str, Any] = {
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_tokens": settings.max_new_tokens,
    }
    if settings.seed is not None:
        body["seed"] = settings.seed
    return body


class OpenAIVideoLM:
    """`VideoLM` that asks a model behind ``POST {base_url}/chat/completions``.

    ``api_key`` goes only into the Authorization header (a local server needs none);
    ``key_hint`` names where it came from, for error messages. ``pixel_budget`` defaults to the
    protocol's (`ModelSettings.max_pixels` on the Qwen grid). ``http_client`` and ``sleep`` are
    for tests. Safe to call from several threads: the client is shared, requests are independent.
    """

    def __init__(
        self,
        settings: ServedSettings,
        *,
        api_key: str | None = None,
        key_hint: str = "the API key",
        pixel_budget: dict[str, int] | None = None,
        http_client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from openai import OpenAI

        self.settings = settings
        self.name = settings.model
        self._key = api_key or ""
        self._key_hint = key_hint
        defaults = ModelSettings(model=settings.model)
        self.pixel_budget = pixel_budget or {
            "max_pixels": defaults.max_pixels,
            "min_pixels": defaults.min_pixels,
            "factor": QWEN_FACTOR,
        }
        self._sleep = sleep
        self._calls = CallMemory()
        self.client = OpenAI(
            base_url=settings.base_url,
            api_key=api_key or "none",  # servers without auth ignore it; the client wants one
            timeout=settings.timeout,
            max_retries=0,  # retried here, with the settings' own backoff
            http_client=http_client,
        )

    def __repr__(self) -> str:
        return f"OpenAIVideoLM(base_url={self.settings.base_url!r}, model={self.name!r})"

    def end_session(self, session: str) -> None:
        """Forget the session's tool calls (the server itself keeps nothing between turns)."""
        self._calls.forget(session)

    def generate(
        self,
        messages: Sequence[dict[str, Any]],
        frames: FrameFetcher,
        *,
        settings: GenerationSettings,
        session: str | None = None,
    ) -> Generation:
        """Send the conversation, return the reply with the server's token counts."""
        started = time.perf_counter()
        native = self.settings.tool_protocol == "native"
        calls = self._calls.recall(session) if native else None
        payload = chat_messages(messages, frames, self.settings.image_format, calls)
        tools = {"tools": TOOLS} if native else {}
        n_images = sum(
            1
            for m in payload
            if isinstance(m["content"], list)
            for p in m["content"]
            if p["type"] == "image_url"
        )
        response = self._with_retries(
            lambda: self.client.chat.completions.create(
                model=self.settings.model,
                messages=payload,
                extra_body=self.settings.extra_body,
                **tools,
                **request_body(settings),
            ),
            n_images,
        )
        if not response.choices:
            raise ServedModelError(f"{self._where()} returned no choices")
        message = response.choices[0].message
        text = reply_text(message)
        function = getattr((message.tool_calls or [None])[0], "function", None)
        if native and function is not None:
            call = ToolCall(
                id=message.tool_calls[0].id,
                name=function.name,
                arguments=parse_arguments(function.arguments),
                content=message.content or "",
            )
            text = call_text(call)
            self._calls.remember(session, text, call)
        usage = response.usage
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        details = getattr(usage, "prompt_tokens_details", None)
        cached = int(getattr(details, "cached_tokens", 0) or 0)
        completion = getattr(usage, "completion_tokens", None)
        return Generation(
            text=text,
            prompt_tokens=prompt,
            new_prompt_tokens=max(prompt - cached, 0),
            completion_tokens=None if completion is None else int(completion),
            seconds=time.perf_counter() - started,
        )

    def check(self) -> None:
        """Fail early, in one message, when the server cannot be reached or refuses the key; a
        server without a model list passes (the first request then says what is wrong)."""
        quick = self.client.with_options(timeout=min(self.settings.timeout, CHECK_TIMEOUT))
        try:
            self._with_retries(lambda: quick.models.list(), 0)
        except ServedModelError as error:
            if error.status is None or error.status in (401, 403):
                raise

    def list_models(self) -> list[str]:
        """The model names the server lists (empty when it cannot say)."""
        try:
            quick = self.client.with_options(timeout=CHECK_TIMEOUT, max_retries=0)
            return [m.id for m in quick.models.list()]
        except Exception:  # noqa: BLE001 - only a hint for error messages
            return []

    # -- failures -------------------------------------------------------------------------------

    def _with_retries(self, call: Callable[[], Any], n_images: int) -> Any:
        """``call()``, retrying what a later try can fix, with a doubling wait up to the cap."""
        import openai

        tries = self.settings.max_retries + 1
        for attempt in range(tries):
            try:
                return call()
            except openai.APIConnectionError as error:  # includes timeouts
                if attempt == tries - 1:
                    raise ServedModelError(self._connection_message(error, tries)) from None
                wait = None
            except openai.APIStatusError as error:
                status = error.status_code
                if status not in RETRIED_STATUS and status < 500:
                    raise ServedModelError(self._status_message(error, n_images), status) from None
                if attempt == tries - 1:
                    raise ServedModelError(
                        self._status_message(error, n_images, tries=tries), status
                    ) from None
                wait = _retry_after(error)
            delay = min(self.settings.max_backoff, self.settings.backoff * 2**attempt)
            self._sleep(min(wait, self.settings.max_backoff) if wait is not None else delay)
        raise AssertionError("unreachable")

    def _where(self) -> str:
        return f"the model server at {self.settings.base_url}"

    def _connection_message(self, error: Exception, tries: int) -> str:
        import openai

        if isinstance(error, openai.APITimeoutError):
            return (
                f"{self._where()} did not reply within {self.settings.timeout:g}s "
                f"({_tries(tries)}); give it longer (--timeout) or send less (--max-pixels, "
                "fewer frames)"
            )
        cause = error.__cause__ or error
        return self._redact(
            f"cannot reach {self._where()} ({_tries(tries)}: {cause}); is the server running "
            "and is --base-url right (it usually ends in /v1)?"
        )

    def _status_message(self, error: Any, n_images: int, *, tries: int | None = None) -> str:
        status = error.status_code
        detail = _detail(error)
        said = f"{self._where()} answered {status}" + (f" ({_tries(tries)})" if tries else "")
        said += f": {detail}" if detail else ""
        low = detail.lower()
        if status in (401, 403):
            hint = f"check {self._key_hint}"
        elif status == 404 and "model" not in low and self.name.lower() not in low:
            hint = (
                f"{self.settings.base_url.rstrip('/')}/chat/completions does not exist: check "
                "--base-url (OpenAI-compatible servers usually serve under /v1)"
            )
        elif status == 404 or self.name.lower() in low or "model" in low and "not found" in low:
            served = self.list_models()
            listed = f" (it lists: {', '.join(served[:8])})" if served else ""
            hint = f"pass --model with a name the server serves{listed}"
        elif status == 429:
            hint = "lower --concurrency, or wait for the rate limit to reset"
        elif (
            status == 413 or "image" in low and any(w in low for w in ("limit", "at most", "many"))
        ):
            hint = (
                f"this request holds {n_images} images: raise the server's per-prompt image "
                "limit (vLLM: --limit-mm-per-prompt '{\"image\": N}'), or show fewer frames "
                "(--max-turns, frames per turn)"
            )
        elif any(w in low for w in ("context", "max_model_len", "max-model-len", "too long")) or (
            "token" in low and ("maximum" in low or "at most" in low)
        ):
            hint = (
                "the prompt is longer than the server's context: raise its --max-model-len, or "
                "send smaller frames (--max-pixels) or fewer of them"
            )
        elif status >= 500 or status in RETRIED_STATUS:
            hint = "the server failed; see its log"
        else:
            hint = "the server rejected the request as sent; see its message"
        return self._redact(f"{said}; {hint}")

    def _redact(self, text: str) -> str:
        """Never echo the key, whatever a server or proxy put in its message."""
        return text.replace(self._key, "***") if len(self._key) >= 4 else text


def _tries(n: int) -> str:
    return f"{n} tr{'y' if n == 1 else 'ies'}"


def _retry_after(error: Any) -> float | None:
    """The server's Retry-After, in seconds, when it sent one."""
    value = getattr(getattr(error, "response", None), "headers", {}).get("retry-after")
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


def _detail(error: Any) -> str:
    """The server's own words from an error body (OpenAI, FastAPI and plain shapes), shortened."""
    body = getattr(error, "body", None)
    text: Any = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        text = inner.get("message") if isinstance(inner, dict) else inner
        text = text or body.get("detail") or body.get("message")
    elif body is not None:
        text = body
    if not text:
        response = getattr(error, "response", None)
        text = getattr(response, "text", "") or ""
    text = " ".join(str(text).split())
    return text[:300] + ("..." if len(text) > 300 else "")
