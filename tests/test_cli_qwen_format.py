"""`vmtr ask` and `vmtr eval` on a checkpoint folder of the real Qwen2.5-VL format (random small
weights, `--model DIR`): the trace, the stop rule and the parser hold whatever the model says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vmtr import protocol
from vmtr.cli import app
from vmtr.eval.synthetic import SyntheticSettings, generate

runner = CliRunner()
OPTIONS = ["-o", "red", "-o", "green"]


@pytest.fixture
def clip(make_video) -> Path:
    return make_video("clip.mp4", seconds=30.0, fps=2.0)


def _model_args(folder: Path, max_new_tokens: int) -> list[str]:
    return ["--model", str(folder), "--device", "cpu", "--max-new-tokens", str(max_new_tokens)]


def test_ask_returns_a_full_trace_of_noise(clip, qwen_format_dir) -> None:
    args = ["ask", str(clip), "What colour?", *OPTIONS, *_model_args(qwen_format_dir, 6)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    turns = data["turns"]
    assert len(turns) == 3 and data["answer"] is None  # noise never parses: the budget ends it
    assert data["stop_reason"] == "budget_exhausted"
    assert len(turns[0]["frames"]) == 16
    max_index = len(data["pool"]) - 1
    for k, turn in enumerate(turns):
        assert turn["completion_tokens"] <= 6  # the length limit is a stop
        parsed = protocol.parse_reply(
            turn["raw"], max_index=max_index, options=data["options"], last_turn=k == 2
        )
        assert parsed.kind == turn["action"] == "invalid"
    # later turns reuse the cache: only the new user message is prefilled
    assert all(t["new_prompt_tokens"] < t["prompt_tokens"] for t in turns[1:])


def test_ask_follows_retrieve_then_answer(clip, qwen_format_dir, force_replies, monkeypatch):
    from vmtr.models import loading as vlm

    load = vlm.load_video_lm

    def scripted(settings):
        lm = load(settings)
        force_replies(
            lm.model,
            lm.processor.tokenizer,
            [
                "<think>I need frames 12 to 20.</think><retrieve>12, 20</retrieve>",
                "<think>Frame 14 shows green.</think><answer>B</answer>",
            ],
        )
        return lm

    monkeypatch.setattr(vlm, "load_video_lm", scripted)
    args = ["ask", str(clip), "What colour?", *OPTIONS, *_model_args(qwen_format_dir, 64)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    first, second = data["turns"]
    assert first["action"] == "retrieve" and second["action"] == "answer"
    assert data["answer"] == "B"
    assert second["frames"] and all(12 <= f <= 20 for f in second["frames"])
    # the sampled <|im_end|> ends each reply and is counted
    assert first["completion_tokens"] == 26 + 1  # its 26 ids (test_qwen_format) + im_end


def test_eval_runs_on_synthetic_items_batched_as_one_at_a_time(tmp_path, qwen_format_dir) -> None:
    data = generate(tmp_path / "syn", SyntheticSettings(n_items=2, seed=5, minutes=0.2))
    folder = data.parent if data.is_file() else data
    replies = []
    for batch in ("1", "2"):
        out = tmp_path / f"out{batch}"
        args = ["eval", "synthetic", "--data", str(folder), "--output", str(out)]
        args += [*_model_args(qwen_format_dir, 4), "--temperature", "0", "--batch-size", batch]
        result = runner.invoke(app, [*args, "--json"])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        assert (payload["n"], payload["errors"]) == (2, 0)
        samples = sorted(
            (json.loads(line) for line in (out / "samples.jsonl").open()), key=lambda s: s["id"]
        )
        assert all(len(s["turns"]) == 3 for s in samples)  # noise: the turn budget ends each
        replies.append([[t["raw"] for t in s["turns"]] for s in samples])
    assert replies[0] == replies[1]  # batched greedy says what one-at-a-time says
