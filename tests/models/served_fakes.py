"""A scripted chat-completions server on an in-memory transport, for the served backend's tests.

The transport is the HTTP library the installed `openai` client is built on (httpx, or httpx2
from openai 3 on), taken from the client itself so the tests follow whichever is installed.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
from collections.abc import Callable
from typing import Any

import openai
from PIL import Image

httpx = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])

Reply = dict[str, Any] | tuple[int, Any] | Exception | Callable[[dict[str, Any]], Any]


def completion(
    content: str | None, *, prompt: int = 100, completion: int = 7, **message: Any
) -> dict[str, Any]:
    """A chat-completions response body with one choice and its usage."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "served-model",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content, **message},
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


class FakeServer:
    """Answers each POST with the next scripted reply: a body (200), ``(status, body)``, an
    exception to raise (a refused connection, a timeout), or a function of the request body.
    ``GET /models`` lists ``models`` (404 when None); ``down`` refuses every connection. Every
    request is kept, with its headers."""

    def __init__(
        self,
        replies: list[Reply],
        models: tuple[str, ...] | None = ("served-model",),
        *,
        down: bool = False,
    ):
        self.replies = list(replies)
        self.models = models
        self.down = down
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    def handle(self, request: Any) -> Any:
        if self.down:
            raise refused()
        if request.method == "GET" and request.url.path.endswith("/models"):
            if self.models is None:
                return httpx.Response(404, json={"detail": "Not Found"})
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "x"} for m in self.models
            ]
            return httpx.Response(200, json={"object": "list", "data": data})
        body = json.loads(request.content)
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        if not self.replies:
            raise AssertionError("the script has no reply left")
        reply = self.replies.pop(0)
        if callable(reply) and not isinstance(reply, Exception):
            reply = reply(body)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, tuple):
            status, payload = reply
            headers = payload.pop("_headers", {}) if isinstance(payload, dict) else {}
            return httpx.Response(status, json=payload, headers=headers)
        return httpx.Response(200, json=reply)

    def client(self) -> Any:
        return httpx.Client(transport=httpx.MockTransport(self.handle))


def refused() -> Exception:
    return httpx.ConnectError("[Errno 111] Connection refused")


def timed_out() -> Exception:
    return httpx.ReadTimeout("timed out")


def image_of(part: dict[str, Any]) -> Image.Image:
    """The image of a chat-completions ``image_url`` part (a base64 data URL)."""
    url = part["image_url"]["url"]
    header, data = url.split(",", 1)
    assert header.startswith("data:image/") and header.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(data)))
