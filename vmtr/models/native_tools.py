"""The native tool protocol: `select_segment` and `answer` offered as function tools, for servers
and providers that parse tool calls (vLLM with ``--enable-auto-tool-choice``, hosted APIs).

The agent itself stays on the text protocol: a tool call is turned into the reply the text
protocol would have had (``<think>`` from the message text, then ``<retrieve>s, e</retrieve>`` or
``<answer>X</answer>``), so the graph's parser, routing, turn budget, validation messages and
trace are the same. Going out, the prompt's "reply exactly in this form" lines are reworded to
name the tools, and each earlier tool call is sent back as the assistant's ``tool_calls`` with a
``tool`` message answering it, the form chat-completions APIs require.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Literal

from vmtr.protocol import ANSWER_SHAPE, RETRIEVE_SHAPE

ToolProtocol = Literal["text", "native"]

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "select_segment",
            "description": "See more frames: those between two frame indices of the video "
            "(inclusive). The frames come in the next message.",
            "parameters": {
                "type": "object",
                "properties": {
                    "start": {"type": "integer", "description": "First frame index."},
                    "end": {"type": "integer", "description": "Last frame index."},
                },
                "required": ["start", "end"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "answer",
            "description": "Give the final answer to the question; this ends the conversation.",
            "parameters": {
                "type": "object",
                "properties": {
                    "answer": {
                        "type": "string",
                        "description": "The answer: the chosen option's letter when there are "
                        "options.",
                    }
                },
                "required": ["answer"],
            },
        },
    },
]

TOOL_RESULT = "Received; the next message has what follows."
"""What each ``tool`` message says: frames and any objection come in the next user turn."""

REWORDED = {
    f"Reply exactly in one of these forms: {ANSWER_SHAPE} or {RETRIEVE_SHAPE}": (
        "Reply by calling one of your tools: select_segment(start, end) for more frames, or "
        "answer(answer). Think in the message text first if you like."
    ),
    f"Reply exactly in this form: {ANSWER_SHAPE}": (
        "Reply by calling answer(answer). Think in the message text first if you like."
    ),
    "Inside the answer tag put only the letter of the chosen option.": (
        "In the answer, put only the letter of the chosen option."
    ),
    f"the reply must be exactly {ANSWER_SHAPE} or {RETRIEVE_SHAPE}.": (
        "the reply must call select_segment or answer."
    ),
    f"the reply must be exactly {ANSWER_SHAPE}.": "the reply must call answer.",
    "the retrieve tag must hold": "select_segment must get",
    "the answer tag is empty.": "the answer is empty.",
}


def reword(text: str) -> str:
    """A protocol text part with its reply-format sentences naming the tools instead."""
    for old, new in REWORDED.items():
        text = text.replace(old, new)
    return text


@dataclass(frozen=True)
class ToolCall:
    """One call as the model made it: the id that pairs it with its result, and what it said."""

    id: str
    name: str
    arguments: dict[str, Any]
    content: str

    @property
    def json_arguments(self) -> str:
        return json.dumps(self.arguments)


def call_text(call: ToolCall) -> str:
    """The text-protocol reply a tool call stands for (unusable calls stay unparseable)."""
    # the message text (with any reasoning put back as <think> by the backend) is the thinking
    thought = call.content.replace("<think>", " ").replace("</think>", " ")
    think = f"<think>{' '.join(thought.split())}</think>"
    args = call.arguments
    if call.name == "answer":
        return f"{think}<answer>{str(args.get('answer', '')).strip()}</answer>"
    if call.name == "select_segment":
        start, end = args.get("start"), args.get("end")
        if isinstance(start, int) and isinstance(end, int):
            return f"{think}<retrieve>{start}, {end}</retrieve>"
        return f"{think}<retrieve>{json.dumps(args)}</retrieve>"
    return f"{think}<tool>{call.name}({json.dumps(args)})</tool>"


def parse_arguments(raw: Any) -> dict[str, Any]:
    """A call's arguments as a dict, whether sent as JSON text or already parsed."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except (TypeError, ValueError):
        return {"unparsed": str(raw)}
    return value if isinstance(value, dict) else {"value": value}


class CallMemory:
    """The tool calls behind each session's replies, keyed by the reply text they became, so the
    next turn can send them back as calls. Thread-safe; a session is forgotten when it ends."""

    def __init__(self) -> None:
        self._calls: dict[str, dict[str, ToolCall]] = {}
        self._lock = threading.Lock()

    def remember(self, session: str | None, text: str, call: ToolCall) -> None:
        if session is None:
            return
        with self._lock:
            self._calls.setdefault(session, {})[text] = call

    def recall(self, session: str | None) -> dict[str, ToolCall]:
        with self._lock:
            return dict(self._calls.get(session, {})) if session is not None else {}

    def forget(self, session: str) -> None:
        with self._lock:
            self._calls.pop(session, None)
