"""Each public benchmark's loader reads its official shape (fixtures in tests/eval/fixtures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vmtr.eval.datasets import (
    LOADERS,
    DatasetError,
    load_benchmark,
    load_egoschema_subset,
    load_longvideobench,
    load_mlvu_dev,
    load_mlvu_test,
    load_synthetic,
    load_video_mtr_json,
    load_videomme,
)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def copy_of(tmp_path: Path):
    """A writable copy of one fixture folder (to add videos or break files)."""

    def copy(name: str) -> Path:
        return Path(shutil.copytree(FIXTURES / name, tmp_path / name))

    return copy


def test_videomme_fields_categories_and_video_paths(copy_of) -> None:
    folder = copy_of("videomme")
    (folder / "data").mkdir()
    (folder / "data" / "fFjv93ACGo8.mp4").write_bytes(b"")
    items = load_videomme(folder)
    assert [i.id for i in items] == ["001-1", "001-2", "601-1"]
    first = items[0]
    assert first.options[2] == "C. Berries." and first.answer == "C"
    assert first.categories == {
        "duration": "short",
        "domain": "Knowledge",
        "sub_category": "Humanity & History",
        "task_type": "Counting Problem",
    }
    assert first.video == folder / "data" / "fFjv93ACGo8.mp4"
    # A video that is not there still gets its expected path; the runner records the error.
    assert items[2].video == folder / "data" / "xyz123abc45.mp4"
    assert items[2].categories["duration"] == "long"


def test_videomme_jsonl_export(tmp_path: Path) -> None:
    rows = json.loads((FIXTURES / "videomme/videomme/test-00000-of-00001.json").read_text())
    (tmp_path / "videomme.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [i.answer for i in load_videomme(tmp_path)] == ["C", "A", "B"]


def test_videomme_bad_answer_names_file_and_row(copy_of) -> None:
    folder = copy_of("videomme")
    path = folder / "videomme/test-00000-of-00001.json"
    rows = json.loads(path.read_text())
    rows[1]["answer"] = "F"
    path.write_text(json.dumps(rows))
    with pytest.raises(DatasetError, match=r"test-00000-of-00001.json: row 1: answer 'F'"):
        load_videomme(folder)


def test_mlvu_dev_multiple_choice_tasks_only() -> None:
    items = load_mlvu_dev(FIXTURES / "mlvu_dev")
    assert [i.categories["task_type"] for i in items] == ["plotQA", "plotQA", "needle", "count"]
    assert [i.answer for i in items] == ["A", "C", "C", "C"]
    assert items[0].options == ["A. Yellow", "B. Red", "C. Green", "D. Blue"]
    assert items[0].video == FIXTURES / "mlvu_dev/video/1_plotQA/movie101_66.mp4"
    assert items[2].duration == pytest.approx(467.98)
    assert len({i.id for i in items}) == 4  # summary (generation) task skipped, ids unique


def test_mlvu_test_answers_from_ground_truth_file() -> None:
    items = load_mlvu_test(FIXTURES / "mlvu_test")
    assert [i.id for i in items] == ["sportsQA_1", "tutorialQA_2", "ego_3"]
    assert [i.answer for i in items] == ["B", "C", None]  # text answer, letter answer, unknown
    assert items[0].categories == {"task_type": "sportsQA"}
    assert items[0].video == FIXTURES / "mlvu_test/video/test_sports_1.mp4"


def test_egoschema_subset_only_answered_questions() -> None:
    items = load_egoschema_subset(FIXTURES / "egoschema")
    assert [i.answer for i in items] == ["D", "A"]
    assert len(items[0].options) == 5 and items[0].options[4] == "E. C is cleaning the bathroom."
    assert items[1].video.name == "00b9a0de-c59e-49cb-a127-6081e2fb8c8e.mp4"


def test_egoschema_answer_without_question_is_an_error(copy_of) -> None:
    folder = copy_of("egoschema")
    answers = json.loads((folder / "subset_answers.json").read_text())
    answers["ffffffff-not-there"] = 1
    (folder / "subset_answers.json").write_text(json.dumps(answers))
    with pytest.raises(DatasetError, match="not in questions.json"):
        load_egoschema_subset(folder)


def test_longvideobench_choice_index_and_categories() -> None:
    items = load_longvideobench(FIXTURES / "longvideobench")
    assert [i.answer for i in items] == ["B", "E"]
    assert items[1].categories == {
        "duration_group": "15",
        "question_category": "S2O",
        "topic_category": "LC-Life-Cooking",
        "level": "L1-Perception",
    }
    assert items[0].video == FIXTURES / "longvideobench/videos/86CxyhFV9MI.mp4"


def test_synthetic_folder_loads_annotations(tmp_path: Path) -> None:
    entry = {
        "problem_id": "s-1",
        "problem": "What colour?",
        "options": ["A. red", "B. blue"],
        "solution": "<answer>B</answer>",
        "path": "videos/s-1.mp4",
        "kind": "colour",
    }
    (tmp_path / "annotations.json").write_text(json.dumps([entry]))
    (item,) = load_synthetic(tmp_path)
    assert item.answer == "B" and item.video == tmp_path / "videos/s-1.mp4"
    # The training-file loader (`vmtr train rl --data`) takes the folder as well as the file.
    assert load_video_mtr_json(tmp_path) == load_video_mtr_json(tmp_path / "annotations.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="without annotations.json"):
        load_video_mtr_json(empty)


def test_load_benchmark_front_door(tmp_path: Path) -> None:
    assert set(LOADERS) == {
        "videomme",
        "mlvu-dev",
        "mlvu-test",
        "egoschema-subset",
        "longvideobench",
        "videomathqa",
        "videomathqa-mbin",
        "synthetic",
    }
    assert len(load_benchmark("longvideobench", FIXTURES / "longvideobench")) == 2
    with pytest.raises(DatasetError, match="unknown benchmark"):
        load_benchmark("nope", tmp_path)
    with pytest.raises(DatasetError, match="data folder not found"):
        load_benchmark("videomme", tmp_path / "missing")
    with pytest.raises(DatasetError, match="no VideoMME annotation file"):
        load_benchmark("videomme", tmp_path)
    (tmp_path / "lvb_val.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_benchmark("longvideobench", tmp_path)
