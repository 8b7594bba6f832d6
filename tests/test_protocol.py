"""The strict parser, its error kinds, the last-turn rule and the prompt fields."""

from __future__ import annotations

import pytest

from vmtr import protocol
from vmtr.config import ProtocolSettings
from vmtr.protocol import Answer, Invalid, Retrieve, parse_reply

OPTIONS = ["A. red", "B. green", "C. blue", "D. yellow"]


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("<think>it is green</think><answer>B</answer>", "B"),
        ("  <think>\nmulti\nline\n</think>\n<answer> C </answer>\n", "C"),
        ("<think></think><answer>B.</answer>", "B"),
        ("<think>x</think><answer>(D)</answer>", "D"),
        ("<think>x</think><answer>A. red</answer>", "A"),
        ("<think>x</think><answer>b</answer>", "B"),
        ("<think>x</think><answer> green</answer>", "B"),
        ("<think>x</think><answer>Yellow.</answer>", "D"),
        ("<think>x</think><answer>a blue circle</answer>", "C"),
    ],
)
def test_answers(text, letter):
    action = parse_reply(text, max_index=63, options=OPTIONS)
    assert action == Answer(letter, action.think)


def test_option_text_matches_one_option_only():
    assert protocol.option_by_text("the  Red one", ["A. the red one", "B. the blue one"]) == "A"
    assert protocol.option_by_text("red", ["A. red", "B. red"]) is None  # ambiguous
    assert protocol.option_by_text("re", OPTIONS) is None  # no prefix matching


def test_a_free_answer_names_the_one_option_it_mentions():
    assert protocol.option_by_text("a blue circle", OPTIONS) == "C"
    assert protocol.option_by_text("It was GREEN.", OPTIONS) == "B"
    assert protocol.option_by_text("green or blue", OPTIONS) is None  # two options named
    assert protocol.option_by_text("red green blue yellow", OPTIONS) is None
    assert protocol.option_by_text("reddish", OPTIONS) is None  # whole words only
    counts = ["A. 1", "B. 2", "C. 3", "D. 4"]
    assert protocol.option_by_text("3 objects", counts) == "C"
    assert protocol.option_by_text("13 objects", counts) is None
    order = ["A. the red square came first", "B. the blue circle came first"]
    assert protocol.option_by_text("I think the blue circle came first", order) == "B"
    # a short answer inside exactly one option names it; one that fits both or neither, none
    assert protocol.option_by_text("blue circle", order) == "B"
    assert protocol.option_by_text("came first", order) is None
    assert protocol.option_by_text("the blue square", order) is None
    # an exact repeat wins over a longer option that contains it
    assert protocol.option_by_text("dark red", ["A. red", "B. dark red"]) == "B"
    assert protocol.option_text("B. green") == "green"


def test_retrieve_and_think_text():
    action = parse_reply("<think>look at 3-9</think><retrieve> 3 , 9 </retrieve>", max_index=63)
    assert action == Retrieve(3, 9, "look at 3-9")


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("B", "format"),
        ("<answer>B</answer>", "format"),
        ("<think>x</think><answer>B</answer> trailing", "format"),
        ("<think>x</think><answer>B</answer><answer>C</answer>", "answer_option"),
        ("<think>x</think>", "format"),
        ("<think>x</think><retrive>1, 2</retrive>", "format"),
        ("<think>x</think><retrieve>1-2</retrieve>", "retrieve_format"),
        ("<think>x</think><retrieve>1, 2, 3</retrieve>", "retrieve_format"),
        ("<think>x</think><retrieve>-1, 2</retrieve>", "retrieve_format"),
        ("<think>x</think><retrieve>9, 2</retrieve>", "retrieve_range"),
        ("<think>x</think><retrieve>60, 64</retrieve>", "retrieve_range"),
        ("<think>x</think><answer>E</answer>", "answer_option"),
        ("<think>x</think><answer>green or blue</answer>", "answer_option"),
        ("<think>x</think><answer></answer>", "answer_option"),
    ],
)
def test_invalid_kinds(text, kind):
    action = parse_reply(text, max_index=63, options=OPTIONS)
    assert isinstance(action, Invalid)
    assert action.error == kind
    assert action.message


def test_range_bounds_are_inclusive():
    assert parse_reply("<think></think><retrieve>0, 63</retrieve>", max_index=63) == Retrieve(
        0, 63, ""
    )
    assert parse_reply("<think></think><retrieve>7, 7</retrieve>", max_index=63) == Retrieve(
        7, 7, ""
    )


def test_last_turn_forbids_retrieve():
    action = parse_reply("<think>x</think><retrieve>1, 2</retrieve>", max_index=63, last_turn=True)
    assert isinstance(action, Invalid) and action.error == "retrieve_on_last_turn"
    action = parse_reply("nonsense", max_index=63, last_turn=True)
    assert "retrieve" not in action.message


def test_open_ended_answer_keeps_text():
    assert parse_reply("<think></think><answer>42 apples</answer>", max_index=3).answer == (
        "42 apples"
    )


def test_option_letters_and_formatting():
    assert protocol.option_letters(["A. x", "B) y", "(C) z", "plain"]) == ["A", "B", "C", "D"]
    assert protocol.format_options(["red", "green"]) == ["A. red", "B. green"]


def _texts(message):
    return "".join(p["text"] for p in message["content"] if p["type"] == "text")


def test_user_message_fields():
    settings = ProtocolSettings()
    msg = protocol.user_message(
        turn=1,
        frames=[0, 21, 42],
        timestamps=[0.5, 21.5, 42.5],
        question=" What colour? ",
        options=OPTIONS,
        pool_size=64,
        settings=settings,
    )
    text = _texts(msg)
    assert "Turn 1 of 3" in text
    assert "3 frames" in text and "[0, 21, 42]" in text
    assert text.count("frame_idx:") == 3 and "frame_idx:21, " in text
    assert "Question: What colour?" in text
    assert all(o in text for o in OPTIONS)
    assert protocol.RETRIEVE_SHAPE in text and protocol.ANSWER_SHAPE in text
    assert "0 to 63" in text
    assert protocol.frames_in(msg) == [0, 21, 42]


def test_last_turn_message_asks_for_answer_only():
    settings = ProtocolSettings(max_turns=2)
    msg = protocol.user_message(
        turn=2,
        frames=[],
        timestamps=[],
        question="Q?",
        options=None,
        pool_size=10,
        settings=settings,
        error="the reply must be exactly ...",
    )
    text = _texts(msg)
    assert "last turn" in text and protocol.RETRIEVE_SHAPE not in text
    assert "could not be used" in text and "No new frames" in text


def test_timestamp_labels_are_a_setting():
    settings = ProtocolSettings(label_timestamps=True)
    msg = protocol.user_message(
        turn=1,
        frames=[4],
        timestamps=[12.25],
        question="Q?",
        options=None,
        pool_size=10,
        settings=settings,
    )
    assert "frame_idx:4 (time 12.2s), " in _texts(msg) or "frame_idx:4 (time 12.3s), " in _texts(
        msg
    )


def test_group_labels_share_one_label_per_run_of_frames():
    settings = ProtocolSettings()
    common = dict(question="Q?", options=None, pool_size=10, settings=settings)
    times = [float(i) for i in range(10)]
    grouped = protocol.user_message(
        turn=1, frames=list(range(10)), timestamps=times, frames_per_label=4, **common
    )
    body = [p.get("text", p.get("frame")) for p in grouped["content"][1:-1]]
    assert body == [
        "frame_idx:0-3, ", 0, 1, 2, 3, "\n",
        "frame_idx:4-7, ", 4, 5, 6, 7, "\n",
        "frame_idx:8-9, ", 8, 9, "\n",
    ]  # fmt: skip
    stamped = ProtocolSettings(label_timestamps=True)
    assert protocol.group_label([4, 5], [2.0, 2.5], stamped) == "frame_idx:4-5 (time 2.0-2.5s), "
    assert protocol.group_label([4], [2.0], settings) == protocol.frame_label(4, 2.0, settings)
    # the default, one frame a label, is the Video-MTR protocol: label, image, new line
    per_frame = protocol.user_message(turn=1, frames=[3, 4], timestamps=[1.0, 2.0], **common)
    body = [p.get("text", p.get("frame")) for p in per_frame["content"][1:-1]]
    assert body == ["frame_idx:3, ", 3, "\n", "frame_idx:4, ", 4, "\n"]
    with pytest.raises(ValueError):
        protocol.user_message(turn=1, frames=[1], timestamps=[1.0], frames_per_label=0, **common)


def test_settings_validate():
    with pytest.raises(ValueError):
        ProtocolSettings(first_turn_frames=65)
    with pytest.raises(ValueError):
        ProtocolSettings(max_turns=0)
