"""Oracle aim rewrites only where a retrieve looks, through the real agent graph."""

from __future__ import annotations

from vmtr import ask
from vmtr.eval.oracle import OracleAim, aim_reply, relevant_span
from vmtr.models.scripted import ScriptedVideoLM

OPTIONS = ["A. red", "B. green", "C. blue", "D. yellow"]
ANSWER_B = "<think>green</think><answer>B</answer>"


def test_relevant_span_widens_to_a_retrieve_of_frames():
    assert relevant_span([12, 9, 10], width=4) == (9, 12)
    assert relevant_span([12, 9, 10], width=8) == (7, 14)
    assert relevant_span([24], width=8) == (21, 28)
    assert relevant_span([1, 2], width=8) == (0, 7)  # clipped at the pool's ends
    assert relevant_span([62], width=8, max_index=63) == (56, 63)
    assert relevant_span([3, 30], width=8) == (3, 30)  # wider than a retrieve: kept
    assert relevant_span([]) is None


def test_aim_reply_replaces_only_a_retrieve_body():
    assert (
        aim_reply("<think>more</think><retrieve>3, 20</retrieve>", (9, 12))
        == "<think>more</think><retrieve>9, 12</retrieve>"
    )
    # a malformed range is still the model's choice to retrieve: the oracle says where
    assert aim_reply("<think>x</think> <retrieve>2, 4, 4</retrieve>\n", (5, 5)) == (
        "<think>x</think> <retrieve>5, 5</retrieve>\n"
    )
    for untouched in (ANSWER_B, "I would retrieve 3, 20", "<retrieve>1, 2</retrieve>"):
        assert aim_reply(untouched, (9, 12)) == untouched


def test_oracle_aim_shows_the_relevant_frames(make_video):
    video = make_video("clip.mp4", seconds=40.0, fps=2.0)  # 40-frame pool at 1 fps
    script = ["<think>look closer</think><retrieve>0, 7</retrieve>", ANSWER_B]
    plain = ask(video, "What colour?", OPTIONS, model=ScriptedVideoLM(list(script)))
    oracle = OracleAim(ScriptedVideoLM(list(script)), relevant=[22, 25, 23], width=4)
    aimed = ask(video, "What colour?", OPTIONS, model=oracle)

    assert plain.turns[1]["frames"] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert aimed.turns[0]["retrieve"] == [22, 25]
    assert aimed.turns[1]["frames"] == [22, 23, 24, 25]
    assert aimed.turns[0]["raw"].endswith("<retrieve>22, 25</retrieve>")
    # the model's decisions and its answer are its own
    assert [t["action"] for t in aimed.turns] == ["retrieve", "answer"]
    assert aimed.answer == plain.answer == "B"
    assert oracle.rewritten == 1 and oracle.name == "scripted+oracle-aim"


def test_oracle_aim_without_relevant_frames_changes_nothing(make_video):
    video = make_video("clip.mp4", seconds=40.0, fps=2.0)
    script = ["<think>look closer</think><retrieve>0, 7</retrieve>", ANSWER_B]
    oracle = OracleAim(ScriptedVideoLM(script), relevant=[])
    result = ask(video, "What colour?", OPTIONS, model=oracle)
    assert result.turns[0]["retrieve"] == [0, 7] and oracle.rewritten == 0
