"""The command line end to end: the tiny model through `vmtr ask`, and every bad input a user
can hand it ending in one line on stderr and exit code 1, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vmtr.cli import app

runner = CliRunner()
FAST = ["--model", "tiny", "--device", "cpu", "--max-new-tokens", "6"]


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:"), result.stderr
    return lines[-1]


@pytest.fixture
def clip(make_video) -> Path:
    return make_video("clip.mp4", seconds=30.0, fps=2.0)


def test_ask_json_with_tiny_model(clip):
    result = runner.invoke(
        app, ["ask", str(clip), "What colour?", "-o", "red", "-o", "green", *FAST, "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "answer" in data and data["options"] == ["A. red", "B. green"]
    assert 1 <= len(data["turns"]) <= 3
    first = data["turns"][0]
    assert len(first["frames"]) == 16 and len(first["timestamps"]) == 16
    assert first["action"] in {"answer", "retrieve", "invalid"}
    assert all(0 <= t <= 30 for t in first["timestamps"])


def test_ask_human_output_has_turn_table(clip):
    result = runner.invoke(app, ["ask", str(clip), "What happens?", *FAST, "--max-turns", "1"])
    assert result.exit_code == 0, result.output
    assert "Answer:" in result.stdout and "turn" in result.stdout


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("missing", "not found"),
        ("text", "not a readable video"),
        ("empty", "empty"),
        ("truncated", ""),
        ("directory", ""),
    ],
)
def test_bad_videos_fail_cleanly(tmp_path, clip, case, expect):
    if case == "missing":
        path = tmp_path / "nope.mp4"
    elif case == "text":
        path = _write(tmp_path, "notes.mp4", b"just some text, not a video\n" * 20)
    elif case == "empty":
        path = _write(tmp_path, "zero.mp4", b"")
    elif case == "truncated":
        data = clip.read_bytes()
        path = _write(tmp_path, "cut.mp4", data[: len(data) // 3])
    else:
        path = tmp_path
    result = runner.invoke(app, ["ask", str(path), "What colour?", *FAST])
    line = _one_line_error(result)
    assert expect.lower() in line.lower()


def test_empty_question(clip):
    line = _one_line_error(runner.invoke(app, ["ask", str(clip), "   ", *FAST]))
    assert "question is empty" in line


def test_bad_model_path(clip, tmp_path):
    result = runner.invoke(app, ["ask", str(clip), "Q?", "--model", str(tmp_path)])
    assert "not a checkpoint" in _one_line_error(result)


def test_usage_error_exit_code_two():
    result = runner.invoke(app, ["ask"])
    assert result.exit_code == 2


def test_console_script_never_prints_a_traceback(tmp_path):
    bad = _write(tmp_path, "bad.mkv", b"\x00\x01garbage" * 100)
    proc = subprocess.run(
        [sys.executable, "-m", "vmtr.cli", "ask", str(bad), "Q?", "--model", "tiny"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:")


def test_synth_writes_a_split(tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "s"), "--n", "2", "--minutes", "0.5"])
    assert result.exit_code == 0, result.output
    items = json.loads((tmp_path / "s" / "annotations.json").read_text())
    assert len(items) == 2


def test_synth_kinds_and_colour_needles(tmp_path):
    args = ["synth", str(tmp_path / "s"), "--n", "4", "--minutes", "0.5", "--kinds", "colour"]
    result = runner.invoke(app, [*args, "--colour-needles", "3", "--seed", "3"])
    assert result.exit_code == 0, result.output
    items = json.loads((tmp_path / "s" / "annotations.json").read_text())
    assert {item["kind"] for item in items} == {"colour"}
    assert max(len(item["needles"]) for item in items) > 1
    settings = json.loads((tmp_path / "s" / "settings.json").read_text())
    assert settings["kinds"] == ["colour"] and settings["colour_needles"] == 3
    result = runner.invoke(app, [*args[:6], "--kinds", "count, colour"])
    assert result.exit_code == 0, result.output
    items = json.loads((tmp_path / "s" / "annotations.json").read_text())
    assert [item["kind"] for item in items] == ["count", "colour", "count", "colour"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kinds", "colour,size"], "unknown kind"),
        (["--kinds", "colour,colour"], "twice"),
        (["--colour-needles", "5"], "colour_needles"),
    ],
)
def test_synth_refuses_bad_settings_in_one_line(tmp_path, flags, message):
    result = runner.invoke(app, ["synth", str(tmp_path / "s"), "--n", "1", *flags])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_demo_runs_offline():
    result = runner.invoke(app, ["demo", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["turns"] and data["video"].endswith(".mp4")


def test_ask_kv_sparse_labels_groups_of_frames(clip):
    args = ["ask", str(clip), "What colour?", *FAST, "--max-turns", "1", "--json"]
    kv = {}
    for per_label in ("1", "3"):
        result = runner.invoke(
            app,
            [*args, "--encoder", "kv-sparse", "--frames", "12", "--frames-per-label", per_label],
        )
        assert result.exit_code == 0, result.output
        first = json.loads(result.stdout)["turns"][0]
        assert first["frames"] == list(range(12))
        kv[per_label] = first["kv"]["kv_bytes"]
    assert kv["3"] < kv["1"]  # 4 labels instead of 12 in the pooled cache


def test_train_rl_maps_its_flags_onto_the_settings(monkeypatch, tmp_path):
    """The reward and protocol flags reach the recipe; a combination that would do nothing
    (PPO with GRPO's --no-group-std) is one line, not a traceback."""
    seen = {}

    class FakeRecipe:
        def __init__(self, data, out, model, settings):
            seen["settings"] = settings
            self.step = 0

        def setup(self):
            pass

        def train(self, progress=None):
            pass

    monkeypatch.setattr("vmtr.policies.trainer.RLRecipe", FakeRecipe)
    base = ["train", "rl", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    result = runner.invoke(
        app,
        [
            *base,
            *("--max-turns", "2", "--no-gate", "--gate-format", "--turn-decay", "0.2"),
            *("--branch-first", "4", "--branch-first-temperature", "1.0"),
        ],
    )
    assert result.exit_code == 0, result.output
    settings = seen["settings"]
    assert settings.protocol.max_turns == 2
    assert (settings.reward.gate, settings.reward.gate_format) == (False, True)
    assert settings.reward.turn_decay == 0.2
    assert (settings.branch_first, settings.branch_first_temperature) == (4, 1.0)
    assert seen["settings"].branch == 0
    line = _one_line_error(runner.invoke(app, [*base, "--algo", "ppo", "--no-group-std"]))
    assert (
        line == "error: --no-group-std is GRPO's; PPO whitens its advantages over the whole batch"
    )
