"""Benchmark items in one shape, whatever file they came from.

Every loader returns a list of `QAItem`: the video, the question, the lettered options, the answer
letter (None where a benchmark keeps its answers private) and the categories scores are broken
down by. `load_video_mtr_json` reads the shape of Video-MTR's training file, which the synthetic
benchmark also writes, so the same items serve training and evaluation. Loaders for the public
benchmarks add a function here that returns the same items.

A malformed file raises `DatasetError` naming the file and the item, never a bare KeyError. A
missing video is not an error here: the runner records it per item instead of stopping.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LETTER_PREFIX = re.compile(r"^\s*([A-Z])\s*[.)]\s*")
ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

VIDEO_MTR_FIELDS = frozenset(
    {
        "problem_id",
        "problem",
        "options",
        "solution",
        "problem_type",
        "path",
        "duration",
        "relevant_windows",
        "data_source",
        "kind",
    }
)
"""Fields `load_video_mtr_json` turns into `QAItem` attributes; the rest go to `extra`."""


class DatasetError(ValueError):
    """A benchmark file that cannot be read as items; the message names the file and item."""


@dataclass
class QAItem:
    """One question about one video, the unit of evaluation and of training prompts."""

    id: str
    video: Path
    question: str
    options: list[str]  # full "A. text" strings, letters in order
    answer: str | None  # the correct letter (or the text answer of a non-choice item)
    categories: dict[str, str] = field(default_factory=dict)
    relevant_windows: list[tuple[float, float]] = field(default_factory=list)
    duration: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def letters(self) -> list[str]:
        """The option letters in order, e.g. ``["A", "B", "C", "D"]``."""
        return [OPTION_LETTERS[i] for i in range(len(self.options))]


def read_json(path: Path) -> Any:
    """Parse a JSON file, turning I/O and syntax failures into a `DatasetError`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None


def lettered_options(options: list[Any]) -> list[str]:
    """Options as "A. text" strings: kept if all are lettered A, B, ... in order; else lettered.

    Raises ValueError when only some options carry letters or the letters are out of order.
    """
    texts = [str(o).strip() for o in options]
    found = [LETTER_PREFIX.match(t) for t in texts]
    if not any(found):
        return [f"{OPTION_LETTERS[i]}. {t}" for i, t in enumerate(texts)]
    letters = [m.group(1) if m else None for m in found]
    if letters != list(OPTION_LETTERS[: len(texts)]):
        raise ValueError(f"options must be lettered A, B, ... in order, got {letters}")
    return [f"{m.group(1)}. {t[m.end() :]}" for m, t in zip(found, texts, strict=True) if m]


def parse_solution(solution: Any) -> str:
    """The answer inside ``<answer>...</answer>``; a bare string is taken as the answer itself."""
    text = str(solution)
    match = ANSWER_TAG.search(text)
    answer = (match.group(1) if match else text).strip()
    if not answer:
        raise ValueError(f"empty answer in solution {text!r}")
    return answer


def parse_windows(value: Any) -> list[tuple[float, float]]:
    """``[[start_s, end_s], ...]`` as float pairs with start <= end."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("relevant_windows must be a list of [start, end] pairs")
    windows = []
    for window in value:
        if not isinstance(window, (list, tuple)) or len(window) != 2:
            raise ValueError(f"relevant window {window!r} is not a [start, end] pair")
        start, end = (float(v) for v in window)
        if not (0 <= start <= end):
            raise ValueError(f"relevant window {window!r} must satisfy 0 <= start <= end")
        windows.append((start, end))
    return windows


def video_mtr_item(entry: Any, base: Path) -> QAItem:
    """One entry of a Video-MTR-style file; ``path`` is resolved against ``base`` if relative."""
    if not isinstance(entry, dict):
        raise ValueError("entry is not a JSON object")
    missing = [k for k in ("problem_id", "problem", "path") if k not in entry]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    question = str(entry["problem"]).strip()
    if not question:
        raise ValueError("empty problem text")
    problem_type = str(entry.get("problem_type", "multiple choice"))
    raw_options = entry.get("options") or []
    if not isinstance(raw_options, list):
        raise ValueError("options must be a list")
    options = lettered_options(raw_options)
    answer = parse_solution(entry["solution"]) if entry.get("solution") is not None else None
    if problem_type == "multiple choice":
        if len(options) < 2:
            raise ValueError("a multiple-choice item needs at least two options")
        if answer is not None:
            answer = answer.upper()
            if answer not in OPTION_LETTERS[: len(options)]:
                raise ValueError(f"answer {answer!r} is not one of the option letters")
    video = Path(str(entry["path"])).expanduser()
    duration = entry.get("duration")
    categories = {"problem_type": problem_type}
    for key in ("data_source", "kind"):
        if entry.get(key) is not None:
            categories[key] = str(entry[key])
    return QAItem(
        id=str(entry["problem_id"]),
        video=video if video.is_absolute() else base / video,
        question=question,
        options=options,
        answer=answer,
        categories=categories,
        relevant_windows=parse_windows(entry.get("relevant_windows")),
        duration=float(duration) if duration is not None else None,
        extra={k: v for k, v in entry.items() if k not in VIDEO_MTR_FIELDS},
    )


def load_video_mtr_json(path: str | Path) -> list[QAItem]:
    """Items of a JSON list in Video-MTR's training-file shape (the synthetic benchmark's too)."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of items, got {type(data).__name__}")
    items: list[QAItem] = []
    seen: set[str] = set()
    for position, entry in enumerate(data):
        label = f"item {position}"
        if isinstance(entry, dict) and "problem_id" in entry:
            label += f" (problem_id {entry['problem_id']!r})"
        try:
            item = video_mtr_item(entry, path.parent)
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"{path}: {label}: {exc}") from None
        if item.id in seen:
            raise DatasetError(f"{path}: {label}: duplicate problem_id")
        seen.add(item.id)
        items.append(item)
    return items
