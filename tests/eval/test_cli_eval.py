"""`vmtr eval` end to end: the command on a throwaway Typer app, a SIGKILLed run resumed, and
two processes under `accelerate launch` merged into exactly the single-process result."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vmtr.cli_eval import eval_command, parse_shard
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.models.scripted import ScriptedVideoLM

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(eval_command)
    return app


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve short generated questions (seed unseen by training)."""
    folder = tmp_path_factory.mktemp("syn")
    generate(folder, SyntheticSettings(n_items=12, seed=9091, minutes=0.2))
    return folder


def test_scripted_run_through_the_command(cli, synthetic, tmp_path, monkeypatch) -> None:
    scripted = ScriptedVideoLM(lambda m: "<think>x</think><answer>A</answer>")
    monkeypatch.setattr("vmtr.models.loading.load_video_lm", lambda settings: scripted)
    args = ["synthetic", "--data", str(synthetic), "--output", str(tmp_path / "o")]
    result = CliRunner().invoke(cli, [*args, "--limit", "3", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert (payload["n"], payload["errors"], payload["total"]) == (3, 0, 3)
    assert payload["config"]["protocol"]["first_turn_frames"] == 16
    # 12-second videos: the first turn shows the whole pool, so every needle was on screen
    assert (payload["evidence"]["n"], payload["evidence"]["seen_rate"]) == (3, 1.0)
    # always "A": a constant answer, which balanced accuracy puts at 1/k of the letters present
    letters = payload["letters"]
    assert (letters["top_answer"], letters["top_answer_share"]) == ("A", 1.0)
    gold = {json.loads(line)["answer"] for line in (tmp_path / "o" / "samples.jsonl").open()}
    expected = (1 if "A" in gold else 0) / len(gold)
    assert letters["balanced_accuracy"] == pytest.approx(expected)
    again = CliRunner().invoke(cli, [*args, "--limit", "4"])
    assert again.exit_code == 0
    assert "resumed: 3 question(s)" in again.stderr
    assert "accuracy" in again.stdout and len(scripted.calls) == 4
    assert "covered every relevant window in 100.0% of 4 questions" in again.stdout
    assert "the most common answer, A, was given 100% of the time" in again.stdout


def test_single_turn_mode_and_frames(cli, synthetic, tmp_path, monkeypatch) -> None:
    scripted = ScriptedVideoLM(lambda m: "<answer>B</answer>")
    monkeypatch.setattr("vmtr.models.loading.load_video_lm", lambda settings: scripted)
    args = ["synthetic", "--data", str(synthetic), "--output", str(tmp_path / "o"), "--limit", "2"]
    result = CliRunner().invoke(cli, [*args, "--mode", "single-turn", "--frames", "8", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["config"]["protocol"]["max_turns"] == 1
    assert payload["mean_frames"] == 8 and payload["mean_turns"] == 1
    assert payload["parsed_by"] == {"answer_tag": 2}  # no think tag: read from the answer tag


def test_oracle_aim_through_the_command(cli, synthetic, tmp_path, monkeypatch) -> None:
    scripted = ScriptedVideoLM(
        lambda m: (
            "<think>x</think>"
            + ("<retrieve>0, 1</retrieve>" if len(m) == 2 else "<answer>A</answer>")
        )
    )
    monkeypatch.setattr("vmtr.models.loading.load_video_lm", lambda settings: scripted)
    args = ["synthetic", "--data", str(synthetic), "--output", str(tmp_path / "o"), "--limit", "2"]
    result = CliRunner().invoke(cli, [*args, "--oracle-aim", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["config"]["oracle_aim"] is True
    samples = [json.loads(line) for line in (tmp_path / "o" / "samples.jsonl").open()]
    # the script always asks for 0..1; the oracle asks for 8 frames around the needles
    ranges = [s["turns"][0]["retrieve"] for s in samples]
    assert all(end - start == 7 for start, end in ranges) and [0, 1] not in ranges, ranges
    # a benchmark whose questions carry no relevant windows cannot be aimed at them
    bare = CliRunner().invoke(
        cli,
        [
            "videomme",
            "--data",
            str(FIXTURES / "videomme"),
            "-o",
            str(tmp_path / "v"),
            "--oracle-aim",
        ],
    )
    assert bare.exit_code == 1 and "needs relevant windows" in bare.stderr
    assert bare.stderr.strip().count("\n") == 0


def test_user_errors_are_one_line(cli, tmp_path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["videomme", "--data", str(tmp_path / "x"), "--output", "o"])
    assert missing.exit_code == 1
    assert missing.stderr.strip().count("\n") == 0 and "data folder not found" in missing.stderr
    bad = runner.invoke(cli, ["nonsense", "--data", str(tmp_path), "--output", "o"])
    assert bad.exit_code == 2
    shard = runner.invoke(
        cli,
        ["longvideobench", "--data", str(FIXTURES / "longvideobench"), "-o", "o"]
        + ["--shard", "3/2"],
    )
    assert shard.exit_code == 1 and "need 0 <= i < n" in shard.stderr
    assert parse_shard("1/4") == (1, 4)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


TINY_ARGS = ["--model", "tiny", "--device", "cpu", "--temperature", "0", "--max-new-tokens", "4"]
TINY_ARGS += ["--mode", "single-turn", "--frames", "4"]


def _rows(db: Path) -> list[str]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return [r[0] for r in conn.execute("SELECT item_id FROM samples")]
    except sqlite3.OperationalError:
        return []


@pytest.mark.slow
def test_sigkill_then_resume_loses_only_questions_in_flight(synthetic, tmp_path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vmtr.eval", "synthetic", "--data", str(synthetic)]
    command += ["--output", str(out), *TINY_ARGS]
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: list[str] = []
    deadline = time.monotonic() + 240
    while len(seen) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        seen = _rows(out / "results.sqlite")
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    survived = _rows(out / "results.sqlite")
    assert set(seen) <= set(survived) and len(survived) < 12  # every committed row survived
    done = subprocess.run(command + ["--json"], env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resumed: {len(survived)} question(s)" in done.stderr
    ids = [json.loads(line)["id"] for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 12
    assert sorted(_rows(out / "results.sqlite")) == sorted(ids)
    assert json.loads(done.stdout)["complete"] is True


@pytest.mark.slow
def test_two_accelerate_processes_merge_to_the_single_process_run(synthetic, tmp_path) -> None:
    args = ["synthetic", "--data", str(synthetic), "--limit", "4", *TINY_ARGS]
    single = subprocess.run(
        [sys.executable, "-m", "vmtr.eval", *args, "--output", str(tmp_path / "one")],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, single.stderr
    # On a machine without GPUs `--multi_gpu` starts torchrun workers that run on the CPU.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    both = subprocess.run(
        [*launch, "-m", "vmtr.eval", *args, "--output", str(tmp_path / "two")],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert both.returncode == 0, both.stderr[-3000:]
    files = sorted(p.name for p in (tmp_path / "two").glob("*.sqlite"))
    assert files == ["results.shard-0-of-2.sqlite", "results.shard-1-of-2.sqlite"]

    def load(folder: Path) -> tuple[dict, list[dict]]:
        results = json.loads((folder / "results.json").read_text())
        samples = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
        for sample in samples:
            sample.pop("seconds")
            for turn in sample["turns"]:
                turn.pop("seconds")
        volatile = ("mean_seconds",)
        return {k: v for k, v in results.items() if k not in volatile}, samples

    assert load(tmp_path / "one") == load(tmp_path / "two")
