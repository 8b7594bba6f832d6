"""Every route of the agent graph, driven by a scripted model (no weights), under both the
in-memory and the SQLite checkpointer, plus streaming and use as a subgraph."""

from __future__ import annotations

import json
import sqlite3
from typing import TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import START, StateGraph

from vmtr import ask, build_graph
from vmtr.config import ProtocolSettings
from vmtr.models.scripted import ScriptedVideoLM
from vmtr.protocol import frames_in

ANSWER_B = "<think>green it is</think><answer>B</answer>"
OPTIONS = ["A. red", "B. green", "C. blue", "D. yellow"]


@pytest.fixture
def video(make_video):
    return make_video("clip.mp4", seconds=40.0, fps=2.0)  # 40-frame pool at 1 fps


def test_answer_at_once(video):
    lm = ScriptedVideoLM([ANSWER_B])
    result = ask(video, "What colour?", OPTIONS, model=lm)
    assert result.answer == "B" and result.stop_reason == "answered"
    assert len(result.turns) == 1
    turn = result.turns[0]
    assert turn["action"] == "answer" and len(turn["frames"]) == 16
    assert turn["frames"][0] == 0 and turn["frames"][-1] == 39
    assert turn["timestamps"] == [result.pool[i] for i in turn["frames"]]
    assert len(lm.sessions_ended) == 1


def test_retrieve_then_answer(video):
    lm = ScriptedVideoLM(["<think>look closer</think><retrieve>3, 20</retrieve>", ANSWER_B])
    result = ask(video, "What colour?", OPTIONS, model=lm)
    assert [t["action"] for t in result.turns] == ["retrieve", "answer"]
    assert result.turns[0]["retrieve"] == [3, 20]
    assert result.turns[1]["frames"] == [3, 5, 8, 10, 13, 15, 18, 20]
    assert lm.frames_seen[1] == result.turns[1]["frames"]
    assert result.answer == "B"


def test_invalid_output_uses_a_turn_and_sends_no_frames(video):
    lm = ScriptedVideoLM(["I think it is green", ANSWER_B])
    result = ask(video, "What colour?", OPTIONS, model=lm)
    assert [t["action"] for t in result.turns] == ["invalid", "answer"]
    assert result.turns[0]["error"] == "format"
    assert result.turns[1]["frames"] == []
    second_prompt = lm.calls[1][-1]
    text = "".join(p.get("text", "") for p in second_prompt["content"])
    assert "could not be used" in text and "What colour?" in text
    assert frames_in(second_prompt) == []


def test_budget_exhausted_gives_no_answer(video):
    lm = ScriptedVideoLM(
        [
            "<think>a</think><retrieve>0, 5</retrieve>",
            "<think>b</think><retrieve>6, 9</retrieve>",
            "<think>c</think><retrieve>10, 12</retrieve>",
        ]
    )
    result = ask(video, "What colour?", OPTIONS, model=lm)
    assert result.answer is None and result.stop_reason == "budget_exhausted"
    assert [t["action"] for t in result.turns] == ["retrieve", "retrieve", "invalid"]
    assert result.turns[-1]["error"] == "retrieve_on_last_turn"
    last_prompt = "".join(p.get("text", "") for p in lm.calls[-1][-1]["content"])
    assert "last turn" in last_prompt


def test_model_that_never_follows_the_format(video):
    lm = ScriptedVideoLM(lambda messages: "blah")
    result = ask(video, "What colour?", OPTIONS, model=lm, max_turns=5)
    assert result.answer is None and len(result.turns) == 5
    assert {t["error"] for t in result.turns} == {"format"}


def test_out_of_range_retrieve_is_invalid(video):
    lm = ScriptedVideoLM(["<think>a</think><retrieve>30, 50</retrieve>", ANSWER_B])
    result = ask(video, "What colour?", OPTIONS, model=lm)
    assert result.turns[0]["error"] == "retrieve_range"
    assert "39" in result.turns[0]["error_message"]


def test_short_video_shows_every_pool_frame(make_video):
    clip = make_video("short.mp4", seconds=5.0, fps=5.0)
    lm = ScriptedVideoLM([ANSWER_B])
    result = ask(clip, "What colour?", OPTIONS, model=lm)
    assert result.turns[0]["frames"] == [0, 1, 2, 3, 4]


def test_empty_question_is_rejected(video):
    with pytest.raises(ValueError, match="question is empty"):
        ask(video, "   ", OPTIONS, model=ScriptedVideoLM([ANSWER_B]))


def test_settings_are_checked(video):
    with pytest.raises(TypeError, match="unknown setting"):
        ask(video, "Q?", model=ScriptedVideoLM([ANSWER_B]), max_turnz=2)


def test_stream_yields_per_node_updates(video):
    graph = build_graph(ScriptedVideoLM(["<think>a</think><retrieve>1, 2</retrieve>", ANSWER_B]))
    nodes = [
        next(iter(chunk))
        for chunk in graph.stream(
            {"video": str(video), "question": "Q?", "options": OPTIONS}, stream_mode="updates"
        )
    ]
    assert nodes == ["prepare", "reason", "select_segment", "reason", "finish"]


def _memory():
    return InMemorySaver()


def _sqlite(tmp_path):
    return SqliteSaver(sqlite3.connect(tmp_path / "ckpt.sqlite", check_same_thread=False))


@pytest.mark.parametrize("make_saver", ["memory", "sqlite"])
def test_checkpointers_store_text_only_state(video, tmp_path, make_saver):
    saver = _memory() if make_saver == "memory" else _sqlite(tmp_path)
    lm = ScriptedVideoLM(["<think>a</think><retrieve>1, 9</retrieve>", ANSWER_B])
    graph = build_graph(lm, checkpointer=saver)
    config = {"configurable": {"thread_id": "t1"}}
    final = graph.invoke({"video": str(video), "question": "Q?", "options": OPTIONS}, config)
    assert final["answer"] == "B" and len(final["turns"]) == 2
    snapshot = graph.get_state(config)
    assert snapshot.values["answer"] == "B"
    json.dumps(snapshot.values)  # ids, indices, timestamps and text only: no pixels
    history = list(graph.get_state_history(config))
    assert len(history) >= 5


def test_interrupted_run_resumes_from_checkpoint(video, tmp_path):
    saver = _sqlite(tmp_path)
    replies = ["<think>a</think><retrieve>1, 9</retrieve>", ANSWER_B]
    graph = build_graph(ScriptedVideoLM(replies), checkpointer=saver)
    config = {"configurable": {"thread_id": "t2"}}
    graph_stop = build_graph(ScriptedVideoLM(replies), checkpointer=saver)
    inputs = {"video": str(video), "question": "Q?", "options": OPTIONS}
    for chunk in graph_stop.stream(inputs, config, stream_mode="updates"):
        if "select_segment" in chunk:
            break  # the process "dies" after the tool ran
    resumed = build_graph(ScriptedVideoLM([ANSWER_B]), checkpointer=saver)
    final = resumed.invoke(None, config)
    assert final["answer"] == "B"
    assert [t["action"] for t in final["turns"]] == ["retrieve", "answer"]
    assert graph is not None


class HostState(TypedDict, total=False):
    video: str
    question: str
    options: list[str] | None
    answer: str | None
    verdict: str


def test_drops_into_a_host_graph_as_a_node(video):
    agent = build_graph(
        ScriptedVideoLM([ANSWER_B]), protocol_settings=ProtocolSettings(max_turns=2)
    )

    def judge(state: HostState) -> dict:
        return {"verdict": f"model said {state['answer']}"}

    host = StateGraph(HostState)
    host.add_node("video_agent", agent)
    host.add_node("judge", judge)
    host.add_edge(START, "video_agent")
    host.add_edge("video_agent", "judge")
    out = host.compile(checkpointer=InMemorySaver()).invoke(
        {"video": str(video), "question": "What colour?", "options": OPTIONS},
        {"configurable": {"thread_id": "host"}},
    )
    assert out["answer"] == "B" and out["verdict"] == "model said B"
