"""The synthetic benchmark: deterministic, well-formed, and its needles are where it says.

One short split (1.1 minutes, so the pool has the full 64 frames) is generated once per module
and decoded through the same `vmtr.tools.video` calls the agent uses, so a needle that the
protocol could not see, or could see in two pool frames, fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from vmtr.eval.datasets import DatasetError, QAItem, load_video_mtr_json
from vmtr.eval.synthetic import (
    COLOURS,
    SyntheticSettings,
    first_turn_set,
    generate,
    plan_item,
    pool_times,
    relevant_needles,
)
from vmtr.tools.select import first_turn_frames
from vmtr.tools.video import decode_at, pool_timestamps, probe

SMALL = SyntheticSettings(n_items=4, seed=7, minutes=1.1)
REQUIRED = {
    "problem_id",
    "problem",
    "options",
    "solution",
    "problem_type",
    "path",
    "duration",
    "relevant_windows",
    "data_source",
}


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("syn"), SMALL)


@pytest.fixture(scope="module")
def entries(split: Path) -> list[dict]:
    return json.loads(split.read_text())


@pytest.fixture(scope="module")
def pools(split: Path, entries: list[dict]) -> dict[str, np.ndarray]:
    """Each video's decoded pool frames, as the protocol samples them."""
    frames = {}
    for entry in entries:
        video = split.parent / entry["path"]
        times = pool_timestamps(probe(video))
        frames[entry["problem_id"]] = np.stack([np.asarray(im) for im in decode_at(video, times)])
    return frames


def nearest_colour(rgb: np.ndarray) -> str:
    return min(COLOURS, key=lambda name: float(np.abs(rgb - np.array(COLOURS[name])).sum()))


def centre_patch(frame: np.ndarray, box: list[int], radius: int = 3) -> np.ndarray:
    cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
    return frame[cy - radius : cy + radius, cx - radius : cx + radius].reshape(-1, 3).mean(0)


# ---------------------------------------------------------------------------------------------
# Settings and planning (no video needed)


@pytest.mark.parametrize(
    "bad",
    [{"frame_size": 111}, {"fps": 2.0}, {"colours": ("red", "teal")}, {"minutes": 0.1}],
)
def test_settings_reject_unusable_values(bad: dict) -> None:
    with pytest.raises(ValidationError):
        SyntheticSettings(**bad)


def test_item_depends_only_on_seed_and_index() -> None:
    few, many = SyntheticSettings(n_items=3), SyntheticSettings(n_items=500)
    assert [plan_item(i, few) for i in range(3)] == [plan_item(i, many) for i in range(3)]
    assert plan_item(0, few) != plan_item(0, SyntheticSettings(n_items=3, seed=1))


@pytest.mark.parametrize("minutes", [0.5, 1.1, 2.0, 10.0])
def test_cue_catches_a_first_turn_frame_and_holds_the_needles(minutes: float) -> None:
    settings = SyntheticSettings(minutes=minutes)
    n = settings.pool_count
    shown = set(first_turn_frames(n, settings.first_turn_frames))
    assert shown == first_turn_set(n, settings.first_turn_frames)
    times = pool_times(settings.duration, n)
    for index in range(100):
        plan = plan_item(index, settings)
        cue = set(range(plan.cue_first, plan.cue_last + 1))
        assert len(cue) == settings.cue_width and cue & shown
        for needle in plan.needles:
            assert needle.pool_index in cue
            inside = np.flatnonzero((times >= needle.start) & (times <= needle.end))
            assert inside.tolist() == [needle.pool_index]
        assert plan.first_turn_needles == sum(n.pool_index in shown for n in plan.needles)


def test_needles_hide_from_the_first_turn_about_three_times_in_four() -> None:
    settings = SyntheticSettings(kinds=("colour",))
    seen = [plan_item(i, settings).first_turn_needles for i in range(400)]
    assert 0.15 < np.mean(seen) < 0.35  # 16 of 64 frames: about a quarter
    hard = SyntheticSettings(kinds=("count",), avoid_first_turn=True)
    assert all(plan_item(i, hard).first_turn_needles == 0 for i in range(100))


def test_answers_match_the_needles() -> None:
    settings = SyntheticSettings()
    for index in range(200):
        plan = plan_item(index, settings)
        texts = {o[0]: o[3:] for o in plan.options}
        assert list(texts) == ["A", "B", "C", "D"] and len(set(texts.values())) == 4
        right, first = texts[plan.answer], plan.needles[0]
        expected = {
            "colour": first.colour,
            "shape": first.shape,
            "order": f"{first.label()} came first",
            "count": str(len(plan.needles)),
        }[plan.kind]
        assert right == expected
        if plan.kind == "order":
            second = plan.needles[1]
            assert first.colour != second.colour and first.shape != second.shape
        pairs = [(n.colour, n.shape) for n in plan.needles]
        assert len(set(pairs)) == len(pairs)


def test_colour_items_with_several_needles_ask_one_that_colour_alone_finds() -> None:
    settings = SyntheticSettings(kinds=("colour",), colour_needles=3, seed=3)
    counts = []
    for index in range(150):
        plan = plan_item(index, settings)
        counts.append(len(plan.needles))
        texts = [o[3:] for o in plan.options]
        asked = relevant_needles(plan)
        assert len(asked) == 1 and asked[0].colour == texts["ABCD".index(plan.answer)]
        others = [n for n in plan.needles if n is not asked[0]]
        assert not {n.colour for n in others} & set(texts)  # no option names another needle
        assert len({n.shape for n in plan.needles}) == len(plan.needles)
        assert len({n.colour for n in plan.needles}) == len(plan.needles)
        if len(plan.needles) > 1:
            assert plan.question.endswith(f"What colour was the {asked[0].shape}?")
    assert set(counts) == {1, 2, 3}
    # the asked needle is not always the first in time
    plans = [plan_item(i, settings) for i in range(150)]
    firsts = [relevant_needles(p)[0] == p.needles[0] for p in plans if len(p.needles) > 1]
    assert 0 < sum(firsts) < len(firsts)


def test_one_colour_needle_keeps_the_items_and_one_window_per_needle_asked(
    tmp_path: Path,
) -> None:
    # item 0 of seed 5000, the held-out set's first question, as it has always been drawn
    plan = plan_item(0, SyntheticSettings(seed=5000))
    assert (plan.kind, plan.answer, plan.options[3]) == ("colour", "D", "D. magenta")
    assert [(n.colour, n.shape, n.pool_index) for n in plan.needles] == [
        ("magenta", "triangle", 24)
    ]
    many = SyntheticSettings(n_items=6, seed=3, kinds=("colour",), colour_needles=3, minutes=0.5)
    entries = json.loads(generate(tmp_path, many).read_text())
    for entry in entries:
        assert len(entry["relevant_windows"]) == 1
        asked = [n for n in entry["needles"] if n["window"] == entry["relevant_windows"][0]]
        assert [n["colour"] for n in asked] == [
            entry["options"]["ABCD".index(entry["solution"][8])][3:]
        ]


@pytest.mark.parametrize(
    "bad",
    [
        {"colour_needles": 4},  # 6 colours cannot give 4 options and 3 other needles
        {"colour_needles": 3, "colours": ("red", "green", "blue", "yellow", "cyan")},
        {"colour_needles": 0},
    ],
)
def test_colour_needles_need_enough_colours(bad: dict) -> None:
    with pytest.raises(ValidationError):
        SyntheticSettings(kinds=("colour",), **bad)


# ---------------------------------------------------------------------------------------------
# The written split


def test_annotation_shape(split: Path, entries: list[dict]) -> None:
    assert len(entries) == SMALL.n_items
    assert {e["kind"] for e in entries} == {"colour", "shape", "order", "count"}
    for entry in entries:
        assert REQUIRED <= set(entry)
        assert (split.parent / entry["path"]).is_file()
        assert entry["problem_type"] == "multiple choice"
        assert entry["data_source"] == "vmtr-synthetic"
        letter = re.fullmatch(r"<answer>([A-D])</answer>", entry["solution"]).group(1)
        assert [o[:3] for o in entry["options"]] == ["A. ", "B. ", "C. ", "D. "]
        assert letter in "ABCD"
        duration = entry["duration"]
        cue_start, cue_end = entry["cue_window"]
        assert 0 <= cue_start < cue_end <= duration
        for start, end in entry["relevant_windows"]:
            assert cue_start <= start < end <= cue_end
        assert [n["pool_index"] for n in entry["needles"]] == entry["needle_pool_indices"]
    assert not list(split.parent.glob("**/*.tmp*"))


def test_probe_agrees_with_the_planned_pool(split: Path, entries: list[dict]) -> None:
    for entry in entries:
        info = probe(split.parent / entry["path"])
        assert info.duration == pytest.approx(entry["duration"], abs=1e-3)
        assert (info.width, info.height) == (SMALL.frame_size, SMALL.frame_size)
        planned = pool_times(entry["duration"], entry["pool_count"])
        assert np.allclose(pool_timestamps(info), planned, atol=1e-3)


def test_needle_visible_in_its_pool_frame_only(
    entries: list[dict], pools: dict[str, np.ndarray]
) -> None:
    for entry in entries:
        frames = pools[entry["problem_id"]]
        slots = set(entry["needle_pool_indices"])
        for needle in entry["needles"]:
            i = needle["pool_index"]
            patch = centre_patch(frames[i], needle["box"])
            assert nearest_colour(patch) == needle["colour"], (entry["problem_id"], patch)
            assert np.ptp(patch) > 150  # saturated: not a grey distractor
            for j in (i - 1, i + 1):
                if 0 <= j < len(frames) and j not in slots:
                    assert np.ptp(centre_patch(frames[j], needle["box"])) < 60, (entry, j)


def test_border_marks_exactly_the_cue(entries: list[dict], pools: dict[str, np.ndarray]) -> None:
    for entry in entries:
        frames = pools[entry["problem_id"]]
        first, last = entry["cue_pool_indices"]
        top_rows = frames[:, :3].reshape(len(frames), -1).mean(1)
        white = np.flatnonzero(top_rows > 235).tolist()
        assert white == list(range(first, last + 1))


def test_same_seed_same_split(tmp_path: Path, split: Path, pools: dict[str, np.ndarray]) -> None:
    again = generate(tmp_path, SMALL.model_copy(update={"n_items": 2}))
    first_two = json.loads(split.read_text())[:2]
    assert json.loads(again.read_text()) == first_two  # paths are relative to the split
    for entry in first_two:
        video = tmp_path / entry["path"]
        frames = np.stack(
            [np.asarray(im) for im in decode_at(video, pool_timestamps(probe(video)))]
        )
        assert np.array_equal(frames, pools[entry["problem_id"]])


def test_worker_processes_give_the_same_split(tmp_path: Path) -> None:
    settings = SyntheticSettings(n_items=3, minutes=0.5, seed=3)
    one = generate(tmp_path / "one", settings)
    two = generate(tmp_path / "two", settings, workers=2)
    assert json.loads(one.read_text()) == json.loads(two.read_text())


# ---------------------------------------------------------------------------------------------
# Loader


def test_loader_round_trip(split: Path, entries: list[dict]) -> None:
    items = load_video_mtr_json(split)
    assert [i.id for i in items] == [e["problem_id"] for e in entries]
    for item, entry in zip(items, entries, strict=True):
        assert isinstance(item, QAItem)
        assert item.video == split.parent / entry["path"] and item.video.is_file()
        assert item.options == entry["options"]
        assert f"<answer>{item.answer}</answer>" == entry["solution"]
        assert item.categories == {
            "problem_type": "multiple choice",
            "data_source": "vmtr-synthetic",
            "kind": entry["kind"],
        }
        assert item.relevant_windows == [tuple(w) for w in entry["relevant_windows"]]
        assert item.duration == entry["duration"]
        assert item.extra["cue_window"] == entry["cue_window"]


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "items.json"
    path.write_text(json.dumps(data))
    return path


GOOD = {
    "problem_id": 12,
    "problem": "What happens?",
    "options": ["one", "two", "three"],
    "solution": "<answer> b </answer>",
    "path": "/abs/clip.mp4",
}


def test_loader_accepts_unlettered_options_and_absolute_paths(tmp_path: Path) -> None:
    (item,) = load_video_mtr_json(_write(tmp_path, [GOOD]))
    assert item.id == "12" and item.answer == "B"
    assert item.options == ["A. one", "B. two", "C. three"]
    assert item.video == Path("/abs/clip.mp4")
    assert item.relevant_windows == [] and item.duration is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"not": "a list"}, "expected a JSON list"),
        ([{**GOOD, "solution": "<answer>E</answer>"}], r"item 0 \(problem_id 12\).*option letters"),
        ([{k: v for k, v in GOOD.items() if k != "path"}], "item 0.*missing field"),
        ([GOOD, GOOD], "item 1.*duplicate"),
        ([{**GOOD, "relevant_windows": [[5, 1]]}], "item 0.*start <= end"),
        ([{**GOOD, "options": ["A. x", "C. y"]}], "item 0.*lettered"),
    ],
)
def test_loader_errors_name_file_and_item(tmp_path: Path, data: object, message: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(DatasetError, match=message) as caught:
        load_video_mtr_json(path)
    assert str(path) in str(caught.value)


def test_loader_reports_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_video_mtr_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_video_mtr_json(bad)
