"""The native tool protocol with scripted tool-call replies, through the served backend (mock
transport) and a LangChain model (``bind_tools`` on langchain_core's fake chat model): the tools
offered, calls turned into the protocol's replies, calls and their results sent back in the
history, validation errors fed back as on the text protocol, and the same trace."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from served_fakes import FakeServer, completion

from vmtr import ask
from vmtr.config import ServedSettings
from vmtr.models.chat_model import ChatModelVideoLM
from vmtr.models.native_tools import TOOL_RESULT
from vmtr.models.openai_api import OpenAIVideoLM
from vmtr.protocol import ANSWER_SHAPE

OPTIONS = ["A. red", "B. green", "C. blue", "D. yellow"]


@pytest.fixture
def video(make_video):
    return make_video("clip.mp4", seconds=40.0, fps=2.0, size=(56, 56))


def tool_reply(name: str, arguments: dict[str, Any], content: str | None, call_id: str) -> dict:
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }
    return completion(content, tool_calls=[call])


def native(server: FakeServer) -> OpenAIVideoLM:
    settings = ServedSettings(
        base_url="http://127.0.0.1:9/v1", model="served-model", tool_protocol="native"
    )
    return OpenAIVideoLM(settings, http_client=server.client(), sleep=lambda s: None)


def test_served_tool_calls_drive_the_same_graph(video):
    server = FakeServer(
        [
            tool_reply("select_segment", {"start": 8, "end": 999}, "look later", "c1"),
            tool_reply("select_segment", {"start": 8, "end": 15}, None, "c2"),
            tool_reply("answer", {"answer": "B"}, "it is green", "c3"),
        ]
    )
    result = ask(video, "What colour?", OPTIONS, model=native(server), max_turns=4)
    assert result.answer == "B" and len(result.turns) == 3
    first, second, third = server.bodies
    assert [t["function"]["name"] for t in first["tools"]] == ["select_segment", "answer"]
    user_text = json.dumps(first["messages"][1])
    assert ANSWER_SHAPE not in user_text and "select_segment(start, end)" in user_text
    # an out-of-range call is invalid, as the same retrieve tag would be, and explained
    assert result.turns[0]["action"] == "invalid" and result.turns[0]["error"] == "retrieve_range"
    assert result.turns[0]["raw"] == "<think>look later</think><retrieve>8, 999</retrieve>"
    call, answer_to_call, objection = second["messages"][2:5]
    assert call["role"] == "assistant" and call["tool_calls"][0]["id"] == "c1"
    assert answer_to_call == {"role": "tool", "tool_call_id": "c1", "content": TOOL_RESULT}
    assert "the range must satisfy" in json.dumps(objection)
    assert result.turns[1]["raw"] == "<think></think><retrieve>8, 15</retrieve>"
    assert result.turns[1]["action"] == "retrieve" and result.turns[2]["frames"] == list(
        range(8, 16)
    )
    assert [m.get("tool_call_id") for m in third["messages"] if m["role"] == "tool"] == ["c1", "c2"]
    assert result.turns[2]["raw"] == "<think>it is green</think><answer>B</answer>"


def test_a_plain_text_reply_is_still_read_on_the_native_protocol(video):
    server = FakeServer([completion("<think>x</think><answer>C</answer>")])
    assert ask(video, "What colour?", OPTIONS, model=native(server)).answer == "C"


class ToolFake(GenericFakeChatModel):
    """langchain_core's fake chat model, with ``bind_tools`` keeping what it was given."""

    tools: list = []

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        self.tools.extend(tools)
        return self


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.calls.append(list(messages[0]))


def test_langchain_tool_calls_through_bind_tools(video):
    recorder = Recorder()
    replies = [
        AIMessage(
            content="",
            tool_calls=[{"name": "select_segment", "args": {"start": 4, "end": 9}, "id": "t1"}],
        ),
        AIMessage(
            content="seen", tool_calls=[{"name": "answer", "args": {"answer": "A"}, "id": "t2"}]
        ),
    ]
    chat = ToolFake(messages=iter(replies), callbacks=[recorder], tools=[])
    lm = ChatModelVideoLM(chat, tool_protocol="native")
    result = ask(video, "What colour?", OPTIONS, model=lm)
    assert [t["function"]["name"] for t in chat.tools] == ["select_segment", "answer"]
    assert result.answer == "A" and result.turns[1]["frames"] == list(range(4, 10))
    history = recorder.calls[1]
    assert isinstance(history[2], AIMessage) and history[2].tool_calls[0]["id"] == "t1"
    assert isinstance(history[3], ToolMessage) and history[3].tool_call_id == "t1"
    assert result.turns[1]["raw"] == "<think>seen</think><answer>A</answer>"


def test_a_chat_model_without_tools_is_refused_on_the_native_protocol():
    chat = GenericFakeChatModel(messages=iter([]))
    with pytest.raises(TypeError, match="cannot bind tools"):
        ChatModelVideoLM(chat, tool_protocol="native")
