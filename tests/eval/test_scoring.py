"""Answer extraction and each benchmark's accuracy convention, checked against hand counts."""

from __future__ import annotations

import pytest

from vmtr.eval.scoring import (
    accuracy,
    breakdown,
    evidence_split,
    extract_answer,
    letter_balance,
    saw_evidence,
)

ABCD = ["A", "B", "C", "D"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>hmm</think><answer>B</answer>", ("B", "answer_tag")),
        ("<answer>(c) the red one</answer>", (None, None)),  # lower case is not a letter
        ("<answer>C. the red one</answer> but maybe (A)", ("C", "answer_tag")),
        ("<answer>maybe</answer> so the answer is D", ("D", "letter")),  # tag unusable
        ("I think (A) or rather (B).", ("B", "letter")),  # the last well-formed letter
        ("Answer: C", ("C", "letter")),
        ("The answer is B because it is red", ("B", "letter")),
        ("B", ("B", "letter")),
        ("A dog runs across the field", (None, None)),  # an article is not an answer
        ("E. none of these", (None, None)),  # not one of the options
        ("", (None, None)),
        (None, (None, None)),
    ],
)
def test_extract_answer(text, expected) -> None:
    assert extract_answer(text, ABCD) == expected


COLOURS = ["A. red", "B. green", "C. blue", "D. yellow"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>a blue circle</answer>", ("C", "option_text")),
        ("The shape was green, I think.", ("B", "option_text")),
        ("<answer>blue?</answer> no, it was red", ("C", "option_text")),  # the tag first
        ("It was red or green.", (None, None)),  # two options named: none
        ("The answer is D, though it looked green", ("D", "letter")),  # letters first
    ],
)
def test_extract_answer_falls_back_on_the_option_a_reply_names(text, expected) -> None:
    assert extract_answer(text, ABCD, COLOURS) == expected


def _sample(correct, status="ok", **categories):
    return {
        "status": status,
        "correct": correct,
        "prediction": None if correct is None else "A",
        "categories": categories,
    }


def test_videomme_micro_average_excludes_errors() -> None:
    samples = [
        _sample(True, duration="short"),
        _sample(True, duration="short"),
        _sample(False, duration="long"),
        _sample(None, status="error", duration="long"),  # missing video: not scored, not wrong
    ]
    result = accuracy(samples, "videomme")
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert (result["n"], result["correct"], result["convention"]) == (3, 2, "micro")
    assert breakdown(samples)["duration"] == {
        "long": {"accuracy": 0.0, "correct": 0, "n": 1},
        "short": {"accuracy": 1.0, "correct": 2, "n": 2},
    }


def test_mlvu_macro_average_over_task_types() -> None:
    # count: 1/1, needle: 1/4 -> macro (1 + 0.25) / 2 = 0.625, micro 2/5 = 0.4
    samples = [_sample(True, task_type="count")]
    samples += [_sample(i == 0, task_type="needle") for i in range(4)]
    result = accuracy(samples, "mlvu-dev")
    assert result["accuracy"] == pytest.approx(0.625)
    assert result["accuracy_micro"] == pytest.approx(0.4)
    assert result["convention"] == "macro over task_type"


def test_unparseable_answer_is_wrong_and_unknown_truth_unscored() -> None:
    samples = [_sample(False), _sample(None), _sample(True)]
    samples[0]["prediction"] = None
    result = accuracy(samples, "egoschema-subset")
    assert (result["n"], result["accuracy"]) == (2, 0.5)
    assert accuracy([], "videomme")["accuracy"] is None


def test_saw_evidence_needs_a_frame_inside_every_window() -> None:
    assert saw_evidence([(4.0, 6.0)], [1.0, 5.0]) is True
    assert saw_evidence([(4.0, 6.0), (8.0, 9.0)], [1.0, 5.0]) is False
    assert saw_evidence([(4.0, 6.0)], [6.0]) is True  # window ends are inside
    assert saw_evidence([], [5.0]) is None  # nothing to look for
    assert saw_evidence([(4.0, 6.0)], None) is None  # frame times not recorded


def test_evidence_split_separates_accuracy_by_what_was_seen() -> None:
    samples = [
        {"status": "ok", "correct": True, "saw_evidence": True},
        {"status": "ok", "correct": False, "saw_evidence": True},
        {"status": "ok", "correct": True, "saw_evidence": False},
        {"status": "ok", "correct": True, "saw_evidence": None},  # unknown: left out
        {"status": "error", "correct": None, "saw_evidence": None},
        {"status": "ok", "correct": False, "saw_evidence": False},
    ]
    split = evidence_split(samples)
    assert split == {"n": 4, "seen_rate": 0.5, "accuracy_seen": 0.5, "accuracy_missed": 0.5}
    assert evidence_split([])["seen_rate"] is None


def test_letter_balance_puts_a_constant_answer_at_one_over_k() -> None:
    # A key with three Ds and one each of A, B, C: always answering D is right 50 % of the time.
    gold = ["D", "D", "D", "A", "B", "C"]
    always_d = [{"status": "ok", "answer": g, "prediction": "D", "correct": g == "D"} for g in gold]
    balance = letter_balance(always_d)
    assert balance == {
        "n": 6,
        "balanced_accuracy": 0.25,
        "top_answer": "D",
        "top_answer_share": 1.0,
    }
    # Right on A and one D of three: (1/3 + 1 + 0 + 0) / 4; errors and unscored rows are left out.
    mixed = [
        {"status": "ok", "answer": "D", "prediction": "D", "correct": True},
        {"status": "ok", "answer": "D", "prediction": "A", "correct": False},
        {"status": "ok", "answer": "D", "prediction": None, "correct": False},
        {"status": "ok", "answer": "A", "prediction": "A", "correct": True},
        {"status": "ok", "answer": "B", "prediction": "A", "correct": False},
        {"status": "ok", "answer": "C", "prediction": "D", "correct": False},
        {"status": "error", "answer": "C", "prediction": None, "correct": None},
    ]
    balance = letter_balance(mixed)
    assert balance["balanced_accuracy"] == pytest.approx((1 / 3 + 1) / 4)
    assert balance["top_answer"] == "A" and balance["top_answer_share"] == pytest.approx(0.5)
    assert balance["n"] == 6
    # The benchmark scripts' rows name their keys differently.
    rows = [{"status": "ok", "truth": "B", "answer": "B", "correct": True}]
    assert letter_balance(rows, gold_key="truth", predicted_key="answer")["balanced_accuracy"] == 1
    assert letter_balance([])["balanced_accuracy"] is None
