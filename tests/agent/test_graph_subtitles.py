"""Subtitles in the agent graph: each turn that shows frames carries the lines near them."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from vmtr import build_graph
from vmtr.config import ProtocolSettings
from vmtr.models.scripted import ScriptedVideoLM

SRT = Path(__file__).parents[1] / "eval/fixtures/videomathqa/subtitles/kT3a9bXqL2w.srt"
OPTIONS = ["A. 30", "B. 45", "C. 60"]
ANSWER = "<think>half of 120</think><answer>C</answer>"


def _text(message: dict) -> str:
    return "".join(part.get("text", "") for part in message["content"])


def _run(graph, video: Path, subtitles: Path | None) -> dict:
    inputs = {"video": str(video), "question": "Each half?", "options": OPTIONS}
    if subtitles is not None:
        inputs["subtitles"] = str(subtitles)
    config = {"recursion_limit": 30, "configurable": {"thread_id": uuid.uuid4().hex}}
    return graph.invoke(inputs, config)


@pytest.fixture
def video(make_video):
    return make_video("lesson.mp4", seconds=12.0, fps=2.0)  # a 12-frame pool at 1 fps


def test_each_turn_shows_the_lines_near_its_frames(video) -> None:
    lm = ScriptedVideoLM(["<think>the end</think><retrieve>9, 11</retrieve>", ANSWER])
    settings = ProtocolSettings(first_turn_frames=3, frames_per_retrieve=3)
    graph = build_graph(lm, protocol_settings=settings, subtitle_window=0.0)
    state = _run(graph, video, SRT)
    first, second = (_text(call[-1]) for call in lm.calls)
    times = [turn["timestamps"] for turn in state["turns"]]
    assert state["turns"][0]["frames"] == [0, 6, 11] and state["turns"][1]["frames"] == [9, 10, 11]
    # turn 1 shows frames at about 0, 6 and 11 s: the cues on screen then, each named by its frame
    assert 0.0 <= times[0][0] <= 2.5 and 6.0 <= times[0][1] <= 8.0 and 9.5 <= times[0][2] <= 11.5
    assert "Subtitles spoken near these frames:" in first
    assert "frame_idx:0: Today we bisect an angle." in first
    assert "frame_idx:6: The bisector splits it in two." in first
    assert "frame_idx:11: Each half is sixty degrees." in first
    assert "one hundred and twenty" not in first  # 3-5 s: no frame shown then
    # the retrieve's frames (about 9-11 s) bring only the last line; the block precedes the question
    assert "Each half is sixty degrees." in second and "bisector" not in second
    assert second.index("Subtitles spoken") < second.index("Question: Each half?")
    assert state["answer"] == "C"


def test_a_wider_window_reaches_lines_between_frames(video) -> None:
    lm = ScriptedVideoLM([ANSWER])
    settings = ProtocolSettings(first_turn_frames=3, label_timestamps=True)
    graph = build_graph(lm, protocol_settings=settings, subtitle_window=3.5)
    _run(graph, video, SRT)
    text = _text(lm.calls[0][-1])
    assert "(3.0-5.0s): Angle ABC measures one hundred and twenty degrees." in text


def test_off_by_default_and_without_a_file(video) -> None:
    lm = ScriptedVideoLM([ANSWER, ANSWER])
    plain = build_graph(lm, protocol_settings=ProtocolSettings(first_turn_frames=3))
    _run(plain, video, SRT)  # the input names a file, but this graph shows no subtitles
    assert "ubtitle" not in _text(lm.calls[0][-1])
    shown = build_graph(
        lm, protocol_settings=ProtocolSettings(first_turn_frames=3), subtitle_window=1.0
    )
    _run(shown, video, None)  # a video without a subtitle file: the turn says so
    assert "No subtitles fall near these frames." in _text(lm.calls[1][-1])


def test_a_broken_subtitle_file_fails_before_the_model(video, tmp_path) -> None:
    broken = tmp_path / "broken.srt"
    broken.write_text("not\nsubtitles\n")
    lm = ScriptedVideoLM([ANSWER])
    graph = build_graph(lm, subtitle_window=1.0)
    with pytest.raises(ValueError, match=r"broken\.srt: no timed subtitle lines"):
        _run(graph, video, broken)
    assert lm.calls == []
