"""VideoMathQA as released (the mcq and multi_binary configs, videos/, subtitles/), its two
scores (5-way choice; multi-binary, a question right only when every pair is) and
`vmtr eval videomathqa --subtitles` end to end on generated videos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vmtr.cli_eval import eval_command
from vmtr.eval.datasets import (
    DatasetError,
    first_questions,
    load_benchmark,
    load_videomathqa,
    load_videomme,
)
from vmtr.eval.report import summarize
from vmtr.eval.scoring import accuracy, by_question
from vmtr.models.scripted import ScriptedVideoLM

FIXTURES = Path(__file__).parent / "fixtures"
VIDEOS = {"kT3a9bXqL2w": 12.0, "Zp0f7Qm3nVc": 20.0}  # seconds of each fixture video


@pytest.fixture
def release(tmp_path: Path, make_video) -> Path:
    """The fixture snapshot with its two videos generated (PyAV) under videos/."""
    folder = Path(shutil.copytree(FIXTURES / "videomathqa", tmp_path / "VideoMathQA"))
    (folder / "videos").mkdir()
    for video_id, seconds in VIDEOS.items():
        made = make_video(f"{video_id}.mp4", seconds=seconds, fps=2.0, size=(48, 48))
        shutil.move(made, folder / "videos" / f"{video_id}.mp4")
    return folder


def _rows(config: str) -> list[dict]:
    name = {"mcq": "mcq/videomathqa_mcq_test", "multi_binary": "multi_binary/videomathqa_mbin_test"}
    path = FIXTURES / "videomathqa" / f"{name[config]}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mcq_fields_options_answers_and_files(release: Path) -> None:
    items = load_videomathqa(release, "mcq")
    assert [i.id for i in items] == ["101", "102", "203"]
    first = items[0]
    assert first.options == ["A. 30°", "B. 45°", "C. 60°", "D. 90°", "E. 120°"]
    assert first.answer == "C" and [i.answer for i in items] == ["C", "A", "E"]
    assert first.categories == {"category": "Geometry Angle", "length": "short"}
    assert items[2].categories == {"category": "Chart", "length": "medium"}
    assert first.video == release / "videos/kT3a9bXqL2w.mp4" and first.video.is_file()
    assert first.subtitles == release / "subtitles/kT3a9bXqL2w.srt"
    assert first.group is None
    assert load_benchmark("videomathqa", release) == items


def test_multi_binary_rows_share_their_question(release: Path) -> None:
    items = load_benchmark("videomathqa-mbin", release)
    assert len(items) == 12
    assert [i.id for i in items[:5]] == ["101/1", "101/2", "101/3", "101/4", "102/1"]
    assert {i.group for i in items} == {"101", "102", "203"}
    assert items[0].options == ["A. 60°", "B. 30°"] and items[0].answer == "A"
    assert items[1].options == ["A. 45°", "B. 60°"] and items[1].answer == "B"
    assert all(len(i.options) == 2 for i in items)
    # --limit counts questions: two questions are all eight of their pairs
    assert [i.id for i in first_questions(items, 2)][-1] == "102/4"
    assert len(first_questions(items, 2)) == 8 and first_questions(items, None) == items
    assert [i.id for i in first_questions(load_videomathqa(release), 2)] == ["101", "102"]


def test_the_hubs_parquet_files_at_the_top(tmp_path: Path) -> None:
    """The hub's own layout: videomathqa_mcq_test.parquet / videomathqa_mbin_test.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for config, name in (
        ("mcq", "videomathqa_mcq_test"),
        ("multi_binary", "videomathqa_mbin_test"),
    ):
        pq.write_table(pa.Table.from_pylist(_rows(config)), tmp_path / f"{name}.parquet")
    mcq = load_videomathqa(tmp_path, "mcq")
    assert [i.answer for i in mcq] == ["C", "A", "E"] and mcq[0].options[2] == "C. 60°"
    assert mcq[0].video == tmp_path / "videos/kT3a9bXqL2w.mp4"  # expected there, not yet present
    assert mcq[0].subtitles is None  # no subtitles/ folder in this snapshot
    assert len(load_videomathqa(tmp_path, "multi_binary")) == 12


def test_other_option_and_answer_forms(tmp_path: Path) -> None:
    rows = _rows("mcq")
    rows[0]["options"] = [
        f"{letter}. {text}" for letter, text in zip("ABCDE", "12345", strict=True)
    ]
    rows[0]["answer"] = "(C) 3"
    rows[1]["options"] = ["one", "two", "three"]
    rows[1]["answer"] = "two"
    rows[2]["options"] = ["A)5", "B: 10", "C.  15", "(D)20", "E) 25"]  # mixed forms, in order
    (tmp_path / "mcq").mkdir()
    (tmp_path / "mcq" / "test.json").write_text(json.dumps(rows))  # a JSON list, too
    items = load_videomathqa(tmp_path, "mcq")
    assert items[0].options[2] == "C. 3" and items[0].answer == "C"
    assert items[1].options == ["A. one", "B. two", "C. three"] and items[1].answer == "B"
    assert items[2].options == ["A. 5", "B. 10", "C. 15", "D. 20", "E. 25"]
    rows[0].update(options=["A.5", "B.6"], answer="B")  # decimals, not letters: texts
    (tmp_path / "mcq" / "test.json").write_text(json.dumps(rows[:1]))
    assert load_videomathqa(tmp_path, "mcq")[0].options == ["A. A.5", "B. B.6"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r.pop("videoID"),
            r"videomathqa_mcq_test\.jsonl: row 1: missing field 'videoID'",
        ),
        (lambda r: r.update(answer="F"), r"row 1: answer 'F' is neither"),
        (
            lambda r: r.update(options=["(A) 1", "(C) 2"]),
            r"row 1: options must be lettered A, B, \.\.\. in order",
        ),
        (lambda r: r.update(question_id=101), r"row 1: duplicate id '101'"),
    ],
)
def test_bad_rows_name_the_file_and_row(tmp_path: Path, change, message) -> None:
    rows = _rows("mcq")
    change(rows[1])
    (tmp_path / "mcq").mkdir()
    path = tmp_path / "mcq" / "videomathqa_mcq_test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetError, match=message):
        load_videomathqa(tmp_path, "mcq")


def test_missing_config_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no VideoMathQA multi_binary rows"):
        load_videomathqa(tmp_path, "multi_binary")
    (tmp_path / "mcq").mkdir()
    with pytest.raises(DatasetError, match=r"mcq: no parquet, JSON or JSON-lines files"):
        load_videomathqa(tmp_path, "mcq")


def test_videomme_items_name_their_subtitle_file() -> None:
    items = load_videomme(FIXTURES / "videomme")
    assert items[0].subtitles == FIXTURES / "videomme/subtitle/fFjv93ACGo8.srt"
    assert items[2].subtitles is None  # the long video ships no subtitles


def _sample(item_id: str, group: str | None, correct: bool | None, status: str = "ok") -> dict:
    return {
        "id": item_id,
        "group": group,
        "status": status,
        "correct": correct,
        "answer": "A",
        "prediction": "A" if correct else "B",
        "categories": {"category": "Chart", "length": "short" if group != "q2" else "long"},
    }


def test_multi_binary_scores_questions_not_pairs() -> None:
    samples = [
        _sample("q1/1", "q1", True),
        _sample("q1/2", "q1", True),
        _sample("q2/1", "q2", True),
        _sample("q2/2", "q2", False),  # one wrong pair sinks q2
        _sample("q3/1", "q3", True),
        _sample("q3/2", "q3", None, status="error"),  # a broken row makes q3 an error
    ]
    merged = by_question(samples)
    assert [(q["id"], q["status"], q.get("correct")) for q in merged] == [
        ("q1", "ok", True),
        ("q2", "ok", False),
        ("q3", "error", None),
    ]
    headline = accuracy(samples, "videomathqa-mbin")
    assert (headline["accuracy"], headline["correct"], headline["n"]) == (0.5, 1, 2)
    assert headline["convention"] == "micro over questions, every pair right"
    # the same rows read as separate questions
    assert accuracy(samples, "videomathqa")["accuracy"] == pytest.approx(4 / 5)
    results = summarize(samples, "videomathqa-mbin", total=6)
    assert results["pairs"] == {"accuracy": pytest.approx(4 / 5), "correct": 4, "n": 5}
    assert results["by_category"]["length"] == {
        "long": {"accuracy": 0.0, "correct": 0, "n": 1},
        "short": {"accuracy": 1.0, "correct": 1, "n": 1},
    }
    assert (results["errors"], results["total"]) == (1, 6)


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(eval_command)
    return app


def _always(letter: str) -> ScriptedVideoLM:
    return ScriptedVideoLM(lambda messages: f"<think>sure</think><answer>{letter}</answer>")


def test_eval_videomathqa_with_subtitles(cli, release, tmp_path, monkeypatch) -> None:
    scripted = _always("C")
    monkeypatch.setattr("vmtr.models.loading.load_video_lm", lambda settings: scripted)
    out = tmp_path / "out"
    args = ["videomathqa", "--data", str(release), "--output", str(out), "--frames", "4"]
    result = CliRunner().invoke(cli, [*args, "--subtitles", "--subtitle-window", "1", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert (payload["accuracy"], payload["n"], payload["errors"]) == (pytest.approx(1 / 3), 3, 0)
    assert payload["config"]["subtitles"] == {"window_s": 1.0}
    assert payload["by_category"]["category"]["Geometry Angle"]["correct"] == 1
    assert set(payload["by_category"]["length"]) == {"short", "medium"}
    prompts = ["".join(p.get("text", "") for p in call[-1]["content"]) for call in scripted.calls]
    assert all("Subtitles spoken near these frames:" in p for p in prompts)
    assert "monthly sales" in prompts[2]  # the chart video's own subtitles
    summary = (out / "summary.md").read_text()
    assert "## By category" in summary and "## By length" in summary
    # the same command without --subtitles is another run, shown no subtitle lines
    plain = CliRunner().invoke(cli, args)
    assert plain.exit_code == 0, plain.output
    assert "videomathqa: accuracy 33.3% (micro) on 3 questions" in plain.stdout
    assert all("ubtitle" not in str(call[-1]) for call in scripted.calls[3:])
    assert len(list((out / "runs").iterdir())) == 2


def test_eval_videomathqa_mbin(cli, release, tmp_path, monkeypatch) -> None:
    scripted = _always("A")  # right on every pair whose answer is A: half of each question's pairs
    monkeypatch.setattr("vmtr.models.loading.load_video_lm", lambda settings: scripted)
    args = ["videomathqa-mbin", "--data", str(release), "--output", str(tmp_path / "o")]
    result = CliRunner().invoke(cli, [*args, "--frames", "4"])
    assert result.exit_code == 0, result.output
    assert "videomathqa-mbin: accuracy 0.0% (micro over questions, every pair right) on 3" in (
        result.stdout
    )
    assert "answered right: 50.0% of 12" in result.stdout
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["pairs"]["correct"] == 6 and results["total"] == 12


def test_cli_errors_are_one_line(cli, release, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("vmtr.models.loading.load_video_lm", lambda settings: _always("A"))
    out = ["--output", str(tmp_path / "o")]
    missing = CliRunner().invoke(cli, ["videomathqa", "--data", str(tmp_path / "nope"), *out])
    assert missing.exit_code == 1 and missing.stderr.startswith("error: ")
    assert "data folder not found" in missing.stderr and "Traceback" not in missing.output
    shutil.rmtree(release / "subtitles")
    bare = CliRunner().invoke(cli, ["videomathqa", "--data", str(release), *out, "--subtitles"])
    assert bare.exit_code == 1
    assert bare.stderr.strip().splitlines() == [
        f"error: --subtitles: no subtitle files found for videomathqa under {release}"
    ]
    (release / "mcq" / "videomathqa_mcq_test.jsonl").write_text('{"question_id": 1}\n')
    broken = CliRunner().invoke(cli, ["videomathqa", "--data", str(release), *out])
    assert broken.exit_code == 1 and "missing field" in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1


def test_a_broken_subtitle_file_is_that_questions_error(
    cli, release, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr("vmtr.models.loading.load_video_lm", lambda settings: _always("C"))
    (release / "subtitles" / "Zp0f7Qm3nVc.srt").write_text("garbled\n")
    args = ["videomathqa", "--data", str(release), "--output", str(tmp_path / "o"), "--subtitles"]
    result = CliRunner().invoke(cli, [*args, "--frames", "4", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert (payload["n"], payload["errors"], payload["errors_by_kind"]) == (2, 1, {"item": 1})
    rows = [json.loads(line) for line in (tmp_path / "o" / "samples.jsonl").open()]
    assert "Zp0f7Qm3nVc.srt: no timed subtitle lines" in rows[2]["error"]
