"""The runner with a scripted model: rows, error rows, resume, run identity, shards and reports."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from vmtr.config import GenerationSettings, ModelSettings
from vmtr.eval.datasets import QAItem
from vmtr.eval.runner import EvalSettings, collect, merge, read_rows, run
from vmtr.models.scripted import ScriptedVideoLM

OPTIONS = ["A. red", "B. green", "C. blue", "D. white"]


def _reply(messages) -> str:
    """Answers the letter the question names; 'think' questions retrieve first; 'mumble' fails."""
    question = next(p["text"] for p in messages[1]["content"] if "Question:" in p.get("text", ""))
    if "mumble" in question:
        return "I am not sure, perhaps (C)."
    if "think" in question and len(messages) == 2:
        return "<think>need more</think><retrieve>2, 6</retrieve>"
    letter = question.split("pick ")[1][0]
    return f"<think>easy</think><answer>{letter}</answer>"


@pytest.fixture
def items(make_video, tmp_path: Path) -> list[QAItem]:
    video = make_video("clip.mp4", seconds=10.0, fps=5.0)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 50)
    specs = [
        ("q0", video, "pick A", "A", "count"),
        ("q1", video, "think, then pick B", "B", "count"),
        ("q2", tmp_path / "missing.mp4", "pick C", "C", "needle"),
        ("q3", broken, "pick D", "D", "needle"),
        ("q4", video, "pick C", "D", "needle"),  # answered wrongly
        ("q5", video, "mumble", "C", "order"),  # no protocol answer; letter fallback finds C
    ]
    return [
        QAItem(id=i, video=v, question=q, options=OPTIONS, answer=a, categories={"task_type": t})
        for i, v, q, a, t in specs
    ]


def _settings(**changes) -> EvalSettings:
    base = {
        "benchmark": "mlvu-dev",
        "model": ModelSettings(model="scripted"),
        "generation": GenerationSettings(temperature=0, max_new_tokens=8),
        "frames": 4,
    }
    return EvalSettings(**{**base, **changes})


def test_rows_errors_and_report(items: list[QAItem], tmp_path: Path) -> None:
    out = tmp_path / "out"
    lm = ScriptedVideoLM(_reply)
    outcome = run(items, _settings(), out, lm)
    assert (outcome.done, outcome.errors, outcome.unexpected) == (6, 2, [])
    results = merge(out, items, _settings())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples] == [i.id for i in items]
    by_id = {s["id"]: s for s in samples}
    assert by_id["q2"]["status"] == "error" and "video not found" in by_id["q2"]["error"]
    assert by_id["q3"]["status"] == "error" and by_id["q3"]["error_kind"] == "video"
    assert by_id["q3"]["prediction"] is None  # never a made-up answer
    assert by_id["q1"]["n_turns"] == 2 and by_id["q1"]["n_frames"] > 4
    assert (by_id["q5"]["prediction"], by_id["q5"]["parsed_by"]) == ("C", "letter")
    # task types: count 2/2, needle 0/1 (q4), order 1/1 -> macro (1 + 0 + 1) / 3
    assert results["accuracy"] == pytest.approx(2 / 3)
    assert (results["n"], results["errors"], results["correct"]) == (4, 2, 3)
    assert results["by_category"]["task_type"]["needle"] == {"accuracy": 0.0, "correct": 0, "n": 1}
    on_disk = json.loads((out / "results.json").read_text())
    for key in ("accuracy", "n", "errors", "by_category", "mean_turns", "mean_frames"):
        assert key in on_disk
    assert {"mean_seconds", "mean_prompt_tokens", "mean_completion_tokens"} <= set(on_disk)
    assert (out / "summary.md").read_text().startswith("# mlvu-dev: 66.7%")
    for plot in ("accuracy_by_category.png", "accuracy_vs_frames.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"


def test_rerun_skips_finished_and_keeps_error_rows(items: list[QAItem], tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(items[:3], _settings(), out, ScriptedVideoLM(_reply))
    again = ScriptedVideoLM(_reply)
    outcome = run(items, _settings(), out, again)
    assert (outcome.skipped, outcome.done) == (3, 3)
    asked = " ".join(p.get("text", "") for c in again.calls for p in c[1]["content"])
    assert "Question: pick A" not in asked and "Question: think" not in asked  # q0, q1 done
    retried = run(items, _settings(), out, ScriptedVideoLM(_reply), retry_errors=True)
    assert retried.done == 2  # only the two video errors are redone
    rows = read_rows(out)
    assert len(rows) == len({r["item_id"] for r in rows}) == 6
    with sqlite3.connect(out / "results.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_changed_settings_start_a_new_run(items: list[QAItem], tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = _settings()
    run(items[:2], base, out, ScriptedVideoLM(_reply))
    same = [
        _settings(model=ModelSettings(model="scripted", device="cuda:3")),  # device: same answers
    ]
    changed = [
        _settings(frames=8),
        _settings(mode="single-turn"),
        _settings(model=ModelSettings(model="other")),
        _settings(generation=GenerationSettings(temperature=0.7)),
        _settings(benchmark="videomme"),
    ]
    assert all(s.run_key() == base.run_key() for s in same)
    assert len({s.run_key() for s in changed} | {base.run_key()}) == len(changed) + 1
    outcome = run(items[:2], _settings(frames=8), out, ScriptedVideoLM(_reply))
    assert (outcome.skipped, outcome.done) == (0, 2)
    assert len(collect(out, items, base.run_key())) == 2
    assert len(read_rows(out)) == 4  # both runs kept side by side, never mixed
    results = merge(out, items[:2], _settings(frames=8))
    assert "frames seen" in (out / "summary.md").read_text()
    assert results["mean_frames"] > 0


def test_shards_merge_to_the_single_process_result(items: list[QAItem], tmp_path: Path) -> None:
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    run(items, _settings(), single, ScriptedVideoLM(_reply))
    for index in range(3):
        run(items, _settings(), sharded, ScriptedVideoLM(_reply), shard=(index, 3))
    assert sorted(p.name for p in sharded.glob("*.sqlite")) == [
        f"results.shard-{i}-of-3.sqlite" for i in range(3)
    ]
    one, merged = merge(single, items, _settings()), merge(sharded, items, _settings())
    volatile = {"seconds", "turns"}
    strip = [
        {k: v for k, v in s.items() if k not in volatile}
        for s in collect(single, items, _settings().run_key())
    ]
    strip_m = [
        {k: v for k, v in s.items() if k not in volatile}
        for s in collect(sharded, items, _settings().run_key())
    ]
    assert strip == strip_m
    for key in ("accuracy", "n", "errors", "by_category", "mean_turns", "mean_frames"):
        assert one[key] == merged[key]


def test_batch_size_runs_questions_concurrently(items: list[QAItem], tmp_path: Path) -> None:
    out = tmp_path / "out"
    outcome = run(items, _settings(), out, ScriptedVideoLM(_reply), batch_size=3)
    assert outcome.done == 6
    results = merge(out, items, _settings())
    assert (results["n"], results["correct"], results["errors"]) == (4, 3, 2)


def test_rows_say_whether_the_relevant_window_was_on_screen(make_video, tmp_path: Path) -> None:
    video = make_video("clip.mp4", seconds=10.0, fps=5.0)
    specs = [("wide", "pick A", [(0.0, 10.0)]), ("narrow", "pick B", [(0.001, 0.002)])]
    items = [
        QAItem(id=i, video=video, question=q, options=OPTIONS, answer=q[-1], relevant_windows=w)
        for i, q, w in specs
    ]
    out = tmp_path / "out"
    run(items, _settings(benchmark="synthetic"), out, ScriptedVideoLM(_reply))
    results = merge(out, items, _settings(benchmark="synthetic"))
    rows = {r["id"]: r for r in map(json.loads, (out / "samples.jsonl").read_text().splitlines())}
    assert (rows["wide"]["saw_evidence"], rows["narrow"]["saw_evidence"]) == (True, False)
    assert results["evidence"] == {
        "n": 2,
        "seen_rate": 0.5,
        "accuracy_seen": 1.0,
        "accuracy_missed": 1.0,
    }
    assert "covered every relevant window in 50.0%" in (out / "summary.md").read_text()


def test_oracle_aim_runs_aim_at_each_questions_windows(make_video, tmp_path: Path) -> None:
    """Every retrieve of an oracle-aim run shows the question's own relevant frames (10-frame
    pool at 1 fps; the script always asks for 2..6); the run keeps its own key, and runs made
    without it keep theirs."""
    video = make_video("clip.mp4", seconds=10.0, fps=5.0)
    specs = [("early", [(0.0, 1.2)]), ("late", [(8.2, 9.0)]), ("none", [])]
    items = [
        QAItem(
            id=i,
            video=video,
            question="think, then pick B",
            options=OPTIONS,
            answer="B",
            relevant_windows=w,
        )
        for i, w in specs
    ]
    plain, oracle = (
        _settings(benchmark="synthetic"),
        _settings(benchmark="synthetic", oracle_aim=True),
    )
    assert "oracle_aim" not in plain.identity() and oracle.identity()["oracle_aim"] is True
    assert plain.run_key() != oracle.run_key()
    out = tmp_path / "out"
    for batch_size in (1, 2):
        run(
            items,
            oracle,
            tmp_path / f"b{batch_size}",
            ScriptedVideoLM(_reply),
            batch_size=batch_size,
        )
        rows = collect(tmp_path / f"b{batch_size}", items, oracle.run_key())
        retrieved = {r["id"]: r["turns"][0]["retrieve"] for r in rows}
        second = {r["id"]: r["turns"][1]["frames"] for r in rows}
        # 8 frames a retrieve, so a retrieve-wide range around the windows' frames
        assert retrieved == {"early": [0, 7], "late": [2, 9], "none": [2, 6]}, retrieved
        assert {r["id"]: r["saw_evidence"] for r in rows} == {
            "early": True,
            "late": True,
            "none": None,
        }
        assert second["none"] == [2, 3, 4, 5, 6]
    run(items, plain, out, ScriptedVideoLM(_reply))
    assert [r["turns"][0]["retrieve"] for r in collect(out, items, plain.run_key())] == [[2, 6]] * 3
