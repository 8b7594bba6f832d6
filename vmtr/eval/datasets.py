"""Benchmark items in one shape, whatever file they came from.

Every loader returns a list of `QAItem`: the video, the question, the lettered options, the answer
letter (None where a benchmark keeps its answers private) and the categories scores are broken
down by. `load_video_mtr_json` reads the shape of Video-MTR's training file, which the synthetic
benchmark also writes, so the same items serve training and evaluation. The public benchmarks
(VideoMME, MLVU dev and test, the EgoSchema subset, LongVideoBench, VideoMathQA) are read from
their annotation files exactly as distributed; `load_benchmark(name, folder)` is the front door the
runner uses. Where a benchmark ships subtitle files (VideoMME, VideoMathQA), each item names its
video's file, which `vmtr eval --subtitles` shows.

A malformed file raises `DatasetError` naming the file and the item, never a bare KeyError. A
missing video is not an error here: the runner records it per item instead of stopping.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmtr.tools.subtitles import find_subtitles

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
    subtitles: Path | None = None  # the video's subtitle file, where the benchmark ships one
    group: str | None = None  # rows asking one question together (VideoMathQA's multi-binary)

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
    """Items of a JSON list in Video-MTR's training-file shape (the synthetic benchmark's too).

    ``path`` may also be a split folder holding ``annotations.json`` (what `vmtr synth` writes).
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "annotations.json").exists():
            raise DatasetError(f"{path}: a folder without annotations.json")
        path = path / "annotations.json"
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


# ---------------------------------------------------------------------------------------------
# Public benchmarks, in the shapes their authors distribute


VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".MP4")

MLVU_DEV_TASKS = (
    "plotQA",
    "needle",
    "ego",
    "count",
    "order",
    "anomaly_reco",
    "topic_reasoning",
)
"""MLVU dev's multiple-choice task types (its generation tasks, sub_scene and summary, are left
out: they are scored by an LLM judge, not by letter)."""

MLVU_TEST_TASKS = (*MLVU_DEV_TASKS, "sportsQA", "tutorialQA")
"""MLVU test's nine multiple-choice task types."""


def _find_video(folders: Iterable[Path], stem: str) -> Path:
    """The first ``folder/stem`` (as given, then with a video extension) that exists.

    When none exists the first candidate is returned anyway: the runner then records the item as
    an error row naming that path, instead of the loader refusing the whole benchmark.
    """
    folders = list(folders)
    has_suffix = Path(stem).suffix.lower() in VIDEO_EXTENSIONS
    names = [stem] if has_suffix else [stem + ext for ext in VIDEO_EXTENSIONS]
    for folder in folders:
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return folders[0] / names[0]


def _letter_of(answer: Any, options: list[str], candidates: list[str] | None = None) -> str:
    """The answer as an option letter: an option index, the option's own text (checked first
    when ``candidates`` are the raw option texts, as in MLVU) or a letter ("B", "(B)", "B.")."""
    letters = OPTION_LETTERS[: len(options)]
    if isinstance(answer, bool):
        raise ValueError(f"answer {answer!r} is neither a letter, an index nor an option")
    if isinstance(answer, int):
        if not 0 <= answer < len(options):
            raise ValueError(f"answer index {answer} is outside the {len(options)} options")
        return letters[answer]
    text = str(answer).strip()
    if candidates is not None:
        texts = [c.strip() for c in candidates]
        if text in texts:
            return letters[texts.index(text)]
    bare = text.strip("().: ")
    if len(bare) == 1 and bare.upper() in letters:
        return bare.upper()
    raise ValueError(f"answer {text[:60]!r} is neither an option letter nor an option text")


def _collect_items(
    path: Path, entries: Iterable[tuple[str, Any]], make: Callable[[Any], QAItem]
) -> list[QAItem]:
    """Build items one entry at a time, naming the file and entry in any error; ids unique."""
    items: list[QAItem] = []
    seen: set[str] = set()
    for label, entry in entries:
        try:
            if not isinstance(entry, dict):
                raise ValueError("entry is not a JSON object")
            item = make(entry)
        except (ValueError, TypeError, KeyError) as exc:
            reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise DatasetError(f"{path}: {label}: {reason}") from None
        if item.id in seen:
            raise DatasetError(f"{path}: {label}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    return items


def _question(entry: dict[str, Any], key: str = "question") -> str:
    question = str(entry[key]).strip()
    if not question:
        raise ValueError("empty question")
    return question


def _read_records(path: Path) -> list[Any]:
    """Rows of a JSON list, a JSON-lines file (also when named .json) or a parquet file."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DatasetError(
                f"{path}: reading parquet needs pyarrow (`pip install pyarrow`); or pass the "
                "annotations as JSON"
            ) from None
        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
            raise DatasetError(f"{path}: not a readable parquet file ({exc})") from None
    if path.suffix == ".jsonl" or _holds_json_lines(path):
        rows = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read ({exc})") from None
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}: line {number} is not JSON ({exc})") from None
        return rows
    data = read_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of questions")
    return data


def _holds_json_lines(path: Path) -> bool:
    """A ``.json`` file written as JSON lines (as ``datasets``' ``to_json`` writes by default):
    its first non-blank line is a whole JSON object."""
    try:
        with path.open(encoding="utf-8") as handle:
            lines = [line for line in (handle.readline() for _ in range(64)) if line.strip()]
    except (OSError, UnicodeDecodeError):
        return False
    if not lines or not lines[0].lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(lines[0]), dict)
    except json.JSONDecodeError:
        return False


def _first_existing(folder: Path, patterns: Iterable[str], what: str) -> Path:
    """The first file matching one of ``patterns`` under ``folder`` (sorted), or a clear error."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    patterns = list(patterns)
    for pattern in patterns:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    raise DatasetError(f"{folder}: no {what} found (looked for {', '.join(patterns)})")


def load_videomme(folder: str | Path, annotations: str | Path | None = None) -> list[QAItem]:
    """VideoMME as distributed on the hub: ``videomme/test-*.parquet`` (or a JSON/JSON-lines
    export of it) with videos in ``data/`` (or ``videos/``) named ``<videoID>.mp4``.

    Categories: ``duration`` (short/medium/long), ``domain``, ``sub_category``, ``task_type``.
    Subtitles: ``subtitle/<videoID>.srt`` (the hub's subtitle.zip unpacked), where a video has any.
    """
    folder = Path(folder)
    path = (
        Path(annotations)
        if annotations
        else _first_existing(
            folder,
            ["videomme/*.parquet", "*.parquet", "videomme/*.json", "*.json", "*.jsonl"],
            "VideoMME annotation file",
        )
    )
    video_dirs = [folder / "data", folder / "videos", folder]
    subtitle_dirs = [folder / "subtitle", folder / "subtitles"]

    def make(row: dict[str, Any]) -> QAItem:
        raw = row["options"]
        options = lettered_options(list(raw))
        if len(options) < 2:
            raise ValueError("needs at least two options")
        return QAItem(
            id=str(row["question_id"]),
            video=_find_video(video_dirs, str(row["videoID"])),
            subtitles=find_subtitles(subtitle_dirs, str(row["videoID"])),
            question=_question(row),
            options=options,
            answer=_letter_of(row["answer"], options) if row.get("answer") else None,
            categories={
                key: str(row[key])
                for key in ("duration", "domain", "sub_category", "task_type")
                if row.get(key) is not None
            },
            extra={"video_id": row.get("video_id"), "url": row.get("url")},
        )

    rows = _read_records(path)
    return _collect_items(path, ((f"row {i}", r) for i, r in enumerate(rows)), make)


def _mlvu_item(entry: dict[str, Any], item_id: str, task: str, video_dirs: list[Path]) -> QAItem:
    candidates = [str(c) for c in entry["candidates"]]
    options = lettered_options(candidates)
    if len(options) < 2:
        raise ValueError("needs at least two candidates")
    answer = entry.get("answer")
    duration = entry.get("duration")
    return QAItem(
        id=item_id,
        video=_find_video(video_dirs, str(entry["video"])),
        question=_question(entry),
        options=options,
        answer=_letter_of(answer, options, candidates) if answer not in (None, "") else None,
        categories={"task_type": task},
        duration=float(duration) if duration is not None else None,
    )


def load_mlvu_dev(folder: str | Path) -> list[QAItem]:
    """MLVU dev as distributed: ``json/<n>_<task>.json`` per task type, videos in
    ``video/<n>_<task>/``; each entry has video, duration, question, candidates, answer (the
    option text) and question_type. Only the seven multiple-choice task types are loaded."""
    folder = Path(folder)
    json_dir = folder / "json" if (folder / "json").is_dir() else folder
    files = sorted(json_dir.glob("*.json"), key=lambda p: _task_order(p.stem))
    if not files:
        raise DatasetError(f"{json_dir}: no MLVU task files (*.json) found")
    items: list[QAItem] = []
    for path in files:
        entries = read_json(path)
        if not isinstance(entries, list):
            raise DatasetError(f"{path}: expected a JSON list of questions")
        if entries and isinstance(entries[0], dict) and "candidates" not in entries[0]:
            continue  # a generation task (sub_scene, summary): no options to score by letter
        video_dirs = [folder / "video" / path.stem, folder / "video", folder / "videos"]

        def make(entry: dict[str, Any], path: Path = path, dirs: list[Path] = video_dirs) -> QAItem:
            task = str(entry.get("question_type") or re.sub(r"^\d+_", "", path.stem))
            position = entry["_position"]
            return _mlvu_item(entry, f"{path.stem}/{position}", task, dirs)

        labelled = (
            (f"item {i}", {**e, "_position": i} if isinstance(e, dict) else e)
            for i, e in enumerate(entries)
        )
        items.extend(_collect_items(path, labelled, make))
    return items


def _task_order(stem: str) -> tuple[int, str]:
    match = re.match(r"^(\d+)_", stem)
    return (int(match.group(1)) if match else 10**6, stem)


def load_mlvu_test(folder: str | Path) -> list[QAItem]:
    """MLVU test: ``test_multi_choice_tasks.json`` (entries with question_id, video, duration,
    question, candidates, question_type) and videos in ``video/``. Answers come from the entries'
    own ``answer`` or from ``test-ground-truth/test_mcq_gt.json`` (a list of {question_id,
    answer} or a {question_id: answer} map); without either the items are unscored."""
    folder = Path(folder)
    path = _first_existing(
        folder,
        ["test_multi_choice_tasks.json", "*/test_multi_choice_tasks.json", "*multi_choice*.json"],
        "MLVU test file",
    )
    truth = _mlvu_truth(folder)
    video_dirs = [folder / "video", folder / "videos", folder]

    def make(entry: dict[str, Any]) -> QAItem:
        qid = str(entry["question_id"])
        if qid in truth and entry.get("answer") in (None, ""):
            entry = {**entry, "answer": truth[qid]}
        return _mlvu_item(entry, qid, str(entry["question_type"]), video_dirs)

    entries = read_json(path)
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: expected a JSON list of questions")
    return _collect_items(path, ((f"item {i}", e) for i, e in enumerate(entries)), make)


def _mlvu_truth(folder: Path) -> dict[str, Any]:
    found = sorted(folder.glob("test-ground-truth/*mcq*.json")) + sorted(
        folder.glob("*mcq_gt*.json")
    )
    if not found:
        return {}
    data = read_json(found[0])
    if isinstance(data, dict):
        return {str(k): v for k, v in data.items()}
    if isinstance(data, list):
        return {
            str(row["question_id"]): row.get("answer")
            for row in data
            if isinstance(row, dict) and "question_id" in row
        }
    raise DatasetError(f"{found[0]}: expected a list or an object of answers")


def load_egoschema_subset(folder: str | Path) -> list[QAItem]:
    """The EgoSchema 500-question subset: ``questions.json`` (q_uid, question, option 0..4) and
    ``subset_answers.json`` ({q_uid: index}); videos ``videos/<q_uid>.mp4``. Only the subset has
    public answers, so only its questions are loaded."""
    folder = Path(folder)
    questions_path = folder / "questions.json"
    answers_path = folder / "subset_answers.json"
    answers = read_json(answers_path)
    if not isinstance(answers, dict):
        raise DatasetError(f"{answers_path}: expected an object mapping q_uid to answer index")
    questions = read_json(questions_path)
    if not isinstance(questions, list):
        raise DatasetError(f"{questions_path}: expected a JSON list of questions")
    video_dirs = [folder / "videos", folder / "good_clips_git", folder]

    def make(entry: dict[str, Any]) -> QAItem:
        uid = str(entry["q_uid"])
        texts = [str(entry[f"option {i}"]) for i in range(5)]
        options = lettered_options(texts)
        return QAItem(
            id=uid,
            video=_find_video(video_dirs, uid),
            question=_question(entry),
            options=options,
            answer=_letter_of(int(answers[uid]), options),
        )

    subset = [(f"q_uid {e.get('q_uid')!r}", e) for e in questions if isinstance(e, dict)]
    subset = [(label, e) for label, e in subset if str(e.get("q_uid")) in answers]
    items = _collect_items(questions_path, subset, make)
    missing = len(answers) - len(items)
    if missing:
        raise DatasetError(f"{answers_path}: {missing} answered q_uid(s) are not in questions.json")
    return items


def load_longvideobench(folder: str | Path, split: str = "lvb_val.json") -> list[QAItem]:
    """LongVideoBench validation: ``lvb_val.json`` (id, video_path, question, candidates,
    correct_choice index, duration, duration_group, question_category, topic_category, level)
    with videos in ``videos/``. Categories: duration_group, question_category, topic_category,
    level."""
    folder = Path(folder)
    path = folder / split
    video_dirs = [folder / "videos", folder]

    def make(entry: dict[str, Any]) -> QAItem:
        candidates = [str(c) for c in entry["candidates"]]
        options = lettered_options(candidates)
        if len(options) < 2:
            raise ValueError("needs at least two candidates")
        correct = entry.get("correct_choice")
        duration = entry.get("duration")
        return QAItem(
            id=str(entry["id"]),
            video=_find_video(video_dirs, str(entry["video_path"])),
            question=_question(entry),
            options=options,
            answer=_letter_of(int(correct), options) if correct is not None else None,
            categories={
                key: str(entry[key])
                for key in ("duration_group", "question_category", "topic_category", "level")
                if entry.get(key) is not None
            },
            duration=float(duration) if duration is not None else None,
        )

    entries = read_json(path)
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: expected a JSON list of questions")
    return _collect_items(path, ((f"item {i}", e) for i, e in enumerate(entries)), make)


VIDEOMATHQA_CONFIGS = {
    "mcq": (("mcq",), ("videomathqa_mcq_test", "*mcq*")),
    "multi_binary": (
        ("multi_binary", "mbin"),
        ("videomathqa_mbin_test", "*mbin*", "*multi_binary*"),
    ),
}
"""VideoMathQA config -> (its folder names, its file names at the top of the data folder)."""

ANNOTATION_SUFFIXES = (".parquet", ".jsonl", ".json")
_VMQA_LETTER = re.compile(r"^\s*\(([A-Z])\)\s*|^\s*([A-Z])\s*(?:[):]\s*|\.(?:\s+|$))")


def _config_files(folder: Path, config: str) -> list[Path]:
    """The row files of one VideoMathQA config: every parquet/JSON/JSON-lines file in its folder
    (``mcq/``, ``multi_binary/``: the hub's shards, in name order), else the hub's file at the top
    (``videomathqa_mcq_test.parquet``, ``videomathqa_mbin_test.parquet``)."""
    dirs, stems = VIDEOMATHQA_CONFIGS[config]
    for name in dirs:
        if (folder / name).is_dir():
            found = sorted(p for p in (folder / name).rglob("*") if p.suffix in ANNOTATION_SUFFIXES)
            if not found:
                raise DatasetError(f"{folder / name}: no parquet, JSON or JSON-lines files")
            return found
    for stem in stems:
        for suffix in ANNOTATION_SUFFIXES:
            found = sorted(p for p in folder.glob(stem + suffix) if p.is_file())
            if found:
                return found[:1]
    wanted = " or ".join(f"{d}/" for d in dirs)
    raise DatasetError(
        f"{folder}: no VideoMathQA {config} rows (looked for {wanted} and {stems[0]}.parquet)"
    )


def _videomathqa_options(raw: Any) -> tuple[list[str], list[str]]:
    """(options as "A. text", their texts): the release's options carry their letters, as in
    "(A) 12 cm"; "A. 12 cm", "A) 12 cm", "A:12 cm" and unlettered texts are read too ("A.5" is
    a text, not a letter)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raw = [line for line in raw.splitlines() if line.strip()]
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"options must be a list, got {type(raw).__name__}")
    texts = [str(o).strip() for o in raw]
    found = [_VMQA_LETTER.match(t) for t in texts]
    if any(found):
        letters = [(m.group(1) or m.group(2)) if m else None for m in found]
        if letters != list(OPTION_LETTERS[: len(texts)]):
            raise ValueError(f"options must be lettered A, B, ... in order, got {letters}")
        texts = [t[m.end() :].strip() for m, t in zip(found, texts, strict=True) if m]
    if len(texts) < 2:
        raise ValueError("needs at least two options")
    return [f"{OPTION_LETTERS[i]}. {t}" for i, t in enumerate(texts)], texts


def load_videomathqa(folder: str | Path, config: str = "mcq") -> list[QAItem]:
    """VideoMathQA (MBZUAI) as released: ``videos/<videoID>.mp4``, ``subtitles/<videoID>.srt``
    and the rows of the ``mcq`` or ``multi_binary`` config, each with question_id, videoID,
    question, options (lettered), answer (the letter), category, length (short/medium/long).

    ``mcq`` is the 5-way multiple choice, one item per question. ``multi_binary`` has one row per
    distractor, pairing it with the right option; the rows of a question share its question_id,
    so each becomes an item ``<question_id>/<n>`` with ``group`` the question_id, and a question
    counts as right only when every pair is (`vmtr.eval.scoring`). Categories: ``category``,
    ``length``.
    """
    if config not in VIDEOMATHQA_CONFIGS:
        raise DatasetError(f"unknown VideoMathQA config {config!r}")
    folder = Path(folder)
    video_dirs = [folder / "videos", folder / "data", folder]
    subtitle_dirs = [folder / "subtitles", folder / "subtitle"]
    pairs: dict[str, int] = {}

    def make(row: dict[str, Any]) -> QAItem:
        qid = str(row["question_id"]).strip()
        if not qid:
            raise ValueError("empty question_id")
        options, texts = _videomathqa_options(row["options"])
        answer = row.get("answer")
        lettered = _VMQA_LETTER.match(answer) if isinstance(answer, str) else None
        if lettered and answer[lettered.end() :].strip():  # "(B) 12 cm": the letter decides
            answer = lettered.group(1) or lettered.group(2)
        video_id = str(row["videoID"]).strip()
        item_id, group = qid, None
        if config == "multi_binary":
            pairs[qid] = pairs.get(qid, 0) + 1
            item_id, group = f"{qid}/{pairs[qid]}", qid
        return QAItem(
            id=item_id,
            video=_find_video(video_dirs, video_id),
            question=_question(row),
            options=options,
            answer=_letter_of(answer, options, texts) if answer not in (None, "") else None,
            categories={
                key: str(row[key]) for key in ("category", "length") if row.get(key) is not None
            },
            extra={"video_id": video_id},
            subtitles=find_subtitles(subtitle_dirs, video_id),
            group=group,
        )

    items: list[QAItem] = []
    for path in _config_files(folder, config):
        rows = _read_records(path)
        offset = len(items)
        labelled = ((f"row {i}", r) for i, r in enumerate(rows))
        found = _collect_items(path, labelled, make)
        clash = {i.id for i in items[:offset]} & {i.id for i in found}
        if clash:
            raise DatasetError(f"{path}: question_id {sorted(clash)[0]!r} is also in another file")
        items.extend(found)
    if not items:
        raise DatasetError(f"{folder}: the VideoMathQA {config} files hold no rows")
    return items


def load_synthetic(folder: str | Path) -> list[QAItem]:
    """A split written by `vmtr.eval.synthetic.generate`: ``annotations.json`` in the folder
    (the folder may also be the JSON file itself)."""
    folder = Path(folder)
    return load_video_mtr_json(folder if folder.suffix == ".json" else folder / "annotations.json")


LOADERS: dict[str, Callable[[Path], list[QAItem]]] = {
    "videomme": load_videomme,
    "mlvu-dev": load_mlvu_dev,
    "mlvu-test": load_mlvu_test,
    "egoschema-subset": load_egoschema_subset,
    "longvideobench": load_longvideobench,
    "videomathqa": lambda folder: load_videomathqa(folder, "mcq"),
    "videomathqa-mbin": lambda folder: load_videomathqa(folder, "multi_binary"),
    "synthetic": load_synthetic,
}
"""Benchmark name (as `vmtr eval` spells it) -> loader of its data folder."""


def first_questions(items: Sequence[QAItem], limit: int | None) -> list[QAItem]:
    """The items of the first ``limit`` questions (all for None): rows sharing a ``group`` are
    one question, so a limit never cuts a multi-binary question short."""
    if limit is None:
        return list(items)
    kept: list[QAItem] = []
    seen: set[str] = set()
    for item in items:
        key = item.group if item.group is not None else f"\0{item.id}"
        if key not in seen:
            if len(seen) == limit:
                break
            seen.add(key)
        kept.append(item)
    return kept


def load_benchmark(name: str, folder: str | Path) -> list[QAItem]:
    """The items of benchmark ``name`` from its data folder, in the file's order."""
    if name not in LOADERS:
        raise DatasetError(f"unknown benchmark {name!r}; choose from {', '.join(LOADERS)}")
    if not Path(folder).exists():
        raise DatasetError(f"{folder}: data folder not found")
    return LOADERS[name](Path(folder))
