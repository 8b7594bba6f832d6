"""`vmtr eval videomme --subtitles`: VideoMME's font-tagged subtitle files reach the prompts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer
from typer.testing import CliRunner

from vmtr.cli_eval import eval_command
from vmtr.models.scripted import ScriptedVideoLM

FIXTURES = Path(__file__).parent / "fixtures"


def test_videomme_subtitles_reach_the_prompt(tmp_path: Path, make_video, monkeypatch) -> None:
    folder = Path(shutil.copytree(FIXTURES / "videomme", tmp_path / "Video-MME"))
    (folder / "data").mkdir()
    shutil.move(make_video("v.mp4", seconds=10.0, fps=2.0), folder / "data" / "fFjv93ACGo8.mp4")
    scripted = ScriptedVideoLM(lambda messages: "<think>x</think><answer>C</answer>")
    monkeypatch.setattr("vmtr.models.loading.load_video_lm", lambda settings: scripted)
    app = typer.Typer()
    app.command()(eval_command)
    args = ["videomme", "--data", str(folder), "--output", str(tmp_path / "o"), "--limit", "2"]
    result = CliRunner().invoke(app, [*args, "--frames", "4", "--subtitles", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert (payload["n"], payload["correct"]) == (2, 1)
    assert payload["config"]["subtitles"] == {"window_s": 2.0}
    prompt = "".join(part.get("text", "") for part in scripted.calls[0][-1]["content"])
    assert "were hung with apples, candles and berries." in prompt
    assert "<font" not in prompt
