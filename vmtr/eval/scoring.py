"""Answer extraction and accuracy, in each benchmark's own convention.

Extraction reads the ``<answer>`` tag first, then the last well-formed option letter ("(B)",
"B.", "B)", "B:", "answer is B", or a line that is just "B"), and last the one option whose text
the reply mentions (`vmtr.protocol.option_by_text`, VLMEvalKit's rule: a reply naming two
options names none). What cannot be read is
wrong: there is no random fallback (lmms-eval's random guess inflates weak models' scores by up
to 1/k), and errors (a missing or broken video) are counted apart from wrong answers.

Accuracy follows the benchmark's paper: the micro average over questions for VideoMME,
EgoSchema, LongVideoBench, VideoMathQA and the synthetic set; the macro average over task types
for MLVU. VideoMathQA's multi-binary form asks each question as several rows (the right option
against one distractor each); a question counts as right only when every one of its rows is
(`by_question`), as its lmms-eval task scores it. Every category key of the items gets its own
breakdown.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from vmtr.protocol import option_by_text

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_TAG_LETTER = re.compile(r"^\s*\(?([A-Z])\)?(?:[.:)]|\s|$)")
_LETTER_FORMS = re.compile(
    r"\(([A-Z])\)"  # (B)
    r"|(?<![A-Za-z])([A-Z])[.:)](?=\s|$)"  # B.  B)  B:
    r"|(?i:answer)(?:\s+is)?\s*[:=]?\s*\**([A-Z])(?![A-Za-z])"  # answer is B, Answer: B
    r"|^\s*\**([A-Z])\**\s*$",  # a line holding only the letter
    re.MULTILINE,
)

Convention = Literal["micro", "macro"]

CONVENTIONS: dict[str, tuple[Convention, str | None]] = {
    "videomme": ("micro", None),
    "mlvu-dev": ("macro", "task_type"),
    "mlvu-test": ("macro", "task_type"),
    "egoschema-subset": ("micro", None),
    "longvideobench": ("micro", None),
    "videomathqa": ("micro", None),
    "videomathqa-mbin": ("micro", None),
    "synthetic": ("micro", None),
}
"""Benchmark -> (headline average, category key the macro average runs over)."""

GROUPED = frozenset({"videomathqa-mbin"})
"""Benchmarks whose rows sharing a ``group`` are one question, right only if every row is."""


def extract_answer(
    text: str | None, letters: Sequence[str], options: Sequence[str] | None = None
) -> tuple[str | None, str | None]:
    """(letter, how it was found) from a model reply; (None, None) when nothing usable is there.

    ``how`` is ``"answer_tag"``, ``"letter"`` or, given the ``options``, ``"option_text"``.
    Letters outside ``letters`` are ignored, so "E." in a reply to a four-option question is
    not an answer.
    """
    if not text:
        return None, None
    allowed = set(letters)
    tags = ANSWER_TAG.findall(text)
    if tags:
        match = _TAG_LETTER.match(tags[-1])
        if match and match.group(1) in allowed:
            return match.group(1), "answer_tag"
    found = [next(g for g in m.groups() if g) for m in _LETTER_FORMS.finditer(text)]
    found = [letter for letter in found if letter in allowed]
    if found:
        return found[-1], "letter"
    if options:
        for body in (tags[-1] if tags else None, text):
            letter = option_by_text(body, options) if body else None
            if letter in allowed:
                return letter, "option_text"
    return None, None


def _rate(correct: int, n: int) -> float | None:
    return correct / n if n else None


def breakdown(samples: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{category key: {value: {accuracy, correct, n}}} over scored samples (errors excluded)."""
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for sample in samples:
        if not is_scored(sample):
            continue
        for key, value in (sample.get("categories") or {}).items():
            cell = counts[key][str(value)]
            cell[0] += int(bool(sample["correct"]))
            cell[1] += 1
    return {
        key: {
            value: {"accuracy": _rate(c, n), "correct": c, "n": n}
            for value, (c, n) in sorted(values.items())
        }
        for key, values in sorted(counts.items())
    }


def is_scored(sample: Mapping[str, Any]) -> bool:
    """A finished question with a known correct answer (not an error row, not answer-less)."""
    return sample.get("status") == "ok" and sample.get("correct") is not None


def by_question(samples: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One sample per question: rows sharing a ``group`` merged (in the order the groups first
    appear), other rows as they are.

    A merged question is an error when any of its rows is, unscored when any row has no known
    answer, and otherwise correct only when every row is.
    """
    units: list[list[Mapping[str, Any]]] = []
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for sample in samples:
        key = sample.get("group")
        if key is None:
            units.append([sample])
        elif key in groups:
            groups[key].append(sample)
        else:
            groups[key] = [sample]
            units.append(groups[key])
    return [rows[0] if rows[0].get("group") is None else _merged(rows) for rows in units]


def _merged(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first = rows[0]
    merged = {
        "id": first["group"],
        "group": first["group"],
        "categories": first.get("categories") or {},
        "rows": len(rows),
    }
    broken = [r for r in rows if r.get("status") != "ok"]
    if broken:
        return {**merged, "status": "error", "error_kind": broken[0].get("error_kind")}
    known = all(r.get("correct") is not None for r in rows)
    correct = all(bool(r["correct"]) for r in rows) if known else None
    return {**merged, "status": "ok", "correct": correct}


def question_units(samples: Sequence[Mapping[str, Any]], benchmark: str) -> list[Mapping[str, Any]]:
    """What the benchmark scores: `by_question` for a grouped benchmark, else the samples."""
    return by_question(samples) if benchmark in GROUPED else list(samples)


def accuracy(samples: Sequence[Mapping[str, Any]], benchmark: str) -> dict[str, Any]:
    """Headline accuracy in the benchmark's convention, plus both averages and the counts
    (over questions: a grouped benchmark's rows are merged first)."""
    convention, key = CONVENTIONS.get(benchmark, ("micro", None))
    samples = question_units(samples, benchmark)
    scored = [s for s in samples if is_scored(s)]
    correct = sum(int(bool(s["correct"])) for s in scored)
    micro = _rate(correct, len(scored))
    macro = None
    if key is not None:
        per_value = [v["accuracy"] for v in breakdown(scored).get(key, {}).values()]
        macro = sum(per_value) / len(per_value) if per_value else None
    label = convention if convention == "micro" else f"macro over {key}"
    if benchmark in GROUPED:
        label = "micro over questions, every pair right"
    return {
        "accuracy": macro if convention == "macro" else micro,
        "convention": label,
        "accuracy_micro": micro,
        "accuracy_macro": macro,
        "correct": correct,
        "n": len(scored),
    }


def letter_balance(
    samples: Iterable[Mapping[str, Any]],
    gold_key: str = "answer",
    predicted_key: str = "prediction",
) -> dict[str, Any]:
    """Accuracy averaged over the right letters (balanced accuracy), and how often the most
    common prediction was given, over scored samples.

    A set's right letters are rarely uniform (the synthetic held-out set has 29.5 % D and 19 %
    C), so a model that always answers one letter scores that letter's share, and two such models
    differ by the set, not by what they saw. Balanced accuracy puts every constant answer at
    1 / (letters in the set); a top-answer share near 1 says the model has collapsed to one.
    """
    scored = [s for s in samples if is_scored(s) and s.get(gold_key) is not None]
    per_letter: dict[str, list[bool]] = defaultdict(list)
    for sample in scored:
        per_letter[str(sample[gold_key])].append(bool(sample["correct"]))
    rates = [sum(v) / len(v) for v in per_letter.values()]
    top = Counter(s.get(predicted_key) for s in scored).most_common(1)
    return {
        "n": len(scored),
        "balanced_accuracy": sum(rates) / len(rates) if rates else None,
        "top_answer": top[0][0] if top else None,
        "top_answer_share": _rate(top[0][1], len(scored)) if top else None,
    }


def saw_evidence(
    windows: Sequence[Sequence[float]], timestamps: Iterable[float] | None
) -> bool | None:
    """Whether some frame shown fell inside every relevant window (seconds), i.e. the answer
    was on screen; None when the item has no windows or the frame times are unknown.

    Accuracy split by this tells a model that uses its frames (better when it saw the evidence)
    from one that guesses (the same either way), and where a multi-turn agent loses its points:
    in finding the evidence or in reading it.
    """
    if not windows or timestamps is None:
        return None
    times = list(timestamps)
    return all(any(start <= t <= end for t in times) for start, end in windows)


def evidence_split(samples: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """How often the evidence was seen (`saw_evidence`) over scored samples that record it, and
    the accuracy when it was and when it was not."""
    known = [s for s in samples if is_scored(s) and s.get("saw_evidence") is not None]
    saw = [s for s in known if s["saw_evidence"]]
    missed = [s for s in known if not s["saw_evidence"]]

    def rate(part: list[Mapping[str, Any]]) -> float | None:
        return _rate(sum(int(bool(s["correct"])) for s in part), len(part))

    return {
        "n": len(known),
        "seen_rate": _rate(len(saw), len(known)),
        "accuracy_seen": rate(saw),
        "accuracy_missed": rate(missed),
    }
