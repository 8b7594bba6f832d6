"""LangChain chat models as the agent's model, driven by langchain_core's own fake chat models:
the messages they receive (standard image blocks after their labels, the whole history), usage
in the trace, and the front doors (`build_graph`, `ask`) taking them as they are."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import (
    FakeMessagesListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from PIL import Image

from vmtr import ask, build_graph
from vmtr.models.chat_model import ChatModelVideoLM
from vmtr.models.loading import as_video_lm

OPTIONS = ["A. red", "B. green", "C. blue", "D. yellow"]
RETRIEVE = "<think>need more</think><retrieve>8, 15</retrieve>"
ANSWER = "<think>seen it</think><answer>B</answer>"


class Recorder(BaseCallbackHandler):
    """Keeps the messages of every chat-model call."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.calls.append(list(messages[0]))


def image_in(block: dict[str, Any]) -> Image.Image | None:
    """The image of a content block as the chat model receives it: the standard block we send,
    or the OpenAI ``image_url`` form langchain_core normalises it into for providers."""
    if block["type"] == "image":
        assert block["mime_type"] == "image/png"
        data = block["base64"]
    elif block["type"] == "image_url":
        header, data = block["image_url"]["url"].split(",", 1)
        assert header == "data:image/png;base64"
    else:
        return None
    return Image.open(io.BytesIO(base64.b64decode(data)))


@pytest.fixture
def video(make_video):
    return make_video("clip.mp4", seconds=40.0, fps=2.0, size=(112, 112))


def test_build_graph_takes_a_chat_model(video, read_frame_index):
    recorder = Recorder()
    usage = {"input_tokens": 700, "output_tokens": 9, "total_tokens": 709}
    chat = GenericFakeChatModel(
        messages=iter(
            [AIMessage(content=RETRIEVE, usage_metadata=usage), AIMessage(content=ANSWER)]
        ),
        callbacks=[recorder],
    )
    graph = build_graph(chat)
    state = graph.invoke({"video": str(video), "question": "What colour?", "options": OPTIONS})
    assert state["answer"] == "B" and len(recorder.calls) == 2
    system, human = recorder.calls[0]
    assert isinstance(system, SystemMessage) and isinstance(human, HumanMessage)
    blocks = human.content
    images = [i for i, b in enumerate(blocks) if image_in(b) is not None]
    assert len(images) == 16
    frames = state["turns"][0]["frames"]
    for n, at in enumerate(images):
        assert blocks[at - 1] == {"type": "text", "text": f"frame_idx:{frames[n]}, "}
        assert read_frame_index(image_in(blocks[at])) == int(state["pool"][frames[n]] * 2)
    second = recorder.calls[1]
    assert second[:2] == recorder.calls[0]
    assert isinstance(second[2], AIMessage) and second[2].content == RETRIEVE
    assert sum(image_in(b) is not None for b in second[3].content) == 8
    turn = state["turns"][0]
    assert (turn["prompt_tokens"], turn["completion_tokens"]) == (700, 9)


def test_ask_takes_a_chat_model_and_reads_a_split_off_think_block(video):
    reply = AIMessage(content="<answer>C</answer>", additional_kwargs={"reasoning_content": "x"})
    result = ask(video, "What colour?", OPTIONS, model=FakeMessagesListChatModel(responses=[reply]))
    assert result.answer == "C" and result.turns[0]["raw"] == "<think>x</think><answer>C</answer>"


def test_a_bound_chat_model_is_adapted_and_anything_else_refused():
    chat = FakeMessagesListChatModel(responses=[AIMessage(content=ANSWER)])
    assert isinstance(as_video_lm(chat.bind(stop=["</answer>"])), ChatModelVideoLM)
    with pytest.raises(TypeError, match="VideoLM or a LangChain chat model"):
        as_video_lm(object())
