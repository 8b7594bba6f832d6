"""The held-out miss anatomy the colour RL notes cite: which turn first showed the needle, and
where second retrieves went after a first that showed nothing, and how a first retrieve's
width trades holding the needle against showing it."""

from __future__ import annotations

from recipes.tiny.miss_anatomy import anatomy, classify, first_by_width, where_second

FIRST = list(range(0, 64, 4))  # the first turn's 16 frames; 24 and 28 fall on the border
ITEM = {"cue_pool_indices": [22, 29], "needle_pool_indices": [23]}
ASK = "<think>Border: frames 24 to 28. Seen: no shapes. Need more frames.</think>"


def turn(action: str, frames: list[int], span: list[int] | None = None) -> dict:
    raw = ASK + (f"<retrieve>{span[0]}, {span[1]}</retrieve>" if span else "<answer>A</answer>")
    return {"action": action, "frames": frames, "raw": raw, "retrieve": span}


def sample(turns: list[dict], correct: bool) -> dict:
    return {"id": "x", "turns": turns, "correct": correct}


SAMPLES = [
    # the first retrieve holds the named frame 28 and shows the needle
    sample([turn("retrieve", FIRST, [22, 29]), turn("answer", list(range(22, 30)))], True),
    # misses, looks next door, misses again, guesses wrong
    sample(
        [
            turn("retrieve", FIRST, [40, 47]),
            turn("retrieve", list(range(40, 48)), [32, 39]),
            turn("answer", list(range(32, 40))),
        ],
        False,
    ),
    # misses, then a retrieve far from the first shows it
    sample(
        [
            turn("retrieve", FIRST, [40, 47]),
            turn("retrieve", list(range(40, 48)), [16, 23]),
            turn("answer", list(range(16, 24))),
        ],
        True,
    ),
    # answers at once, unseen
    sample([turn("answer", FIRST)], False),
]


def test_each_question_falls_in_the_row_of_the_turn_that_first_showed_the_needle():
    rows = [classify(s, ITEM) for s in SAMPLES]
    assert rows == [
        "first retrieve",
        "never, two retrieves",
        "second retrieve",
        "never, answered without retrieving",
    ]
    on_turn_one = sample([turn("answer", [*FIRST, 23])], True)
    assert classify(on_turn_one, ITEM) == "turn 1"


def test_second_retrieves_are_placed_against_the_first():
    assert where_second([40, 47], [40, 47]) == "same range"
    assert where_second([40, 47], [32, 39]) == "next to or over the first"
    assert where_second([40, 47], [52, 60]) == "next to or over the first"
    assert where_second([40, 47], [16, 23]) == "elsewhere"


def test_anatomy_counts_rows_naming_and_second_retrieves():
    result = anatomy(SAMPLES, {"x": ITEM})
    assert result["n"] == 4
    assert result["rows"]["first retrieve"] == [1, 1, 1]
    assert result["rows"]["never, two retrieves"] == [1, 0, 1]
    assert result["rows"]["turn 1"] == [0, 0, 0]
    assert result["first_holds_named"] == 1 / 3
    assert result["second"] == {
        "same range": [0, 0],
        "next to or over the first": [1, 0],
        "elsewhere": [1, 1],
    }


def test_first_retrieves_are_banded_by_width_holding_against_showing():
    # 16 frames wide: holds the needle (23), but its 8 spread frames step over it
    wide = sample([turn("retrieve", FIRST, [16, 31]), turn("answer", list(range(16, 32, 2)))], True)
    # turn 1 already showed the needle: the aim did not matter, so it is left out
    seen = sample([turn("retrieve", [*FIRST, 23], [22, 29]), turn("answer", FIRST)], True)
    bands = first_by_width([*SAMPLES, wide, seen], {"x": ITEM})
    assert bands["8 or fewer"] == [3, 1, 1]
    assert bands["13-16"] == [1, 1, 0]
    assert bands["9-12"] == bands["over 16"] == [0, 0, 0]
