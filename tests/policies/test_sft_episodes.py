"""SFT on recorded episodes: evaluate, fine-tune on the samples, reload, ask."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vmtr.cli import app
from vmtr.config import ProtocolSettings
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.models.gta import GTAAttention, decoder_layers, gta_settings
from vmtr.models.weights import load_pretrained
from vmtr.policies.episodes import EpisodeError, read_episodes, replay


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    data = generate(root / "data", SyntheticSettings(n_items=4, seed=17, minutes=0.5))
    result = CliRunner().invoke(
        app,
        ["eval", "synthetic", "--data", str(data), "--output", str(root / "run")]
        + ["--model", "tiny", "--max-new-tokens", "48", "--temperature", "0"],
    )
    assert result.exit_code == 0, result.output
    return root / "run" / "samples.jsonl"


def test_replay_rebuilds_the_recorded_conversation(samples):
    episodes = read_episodes([samples])
    assert len(episodes) == 4
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    for episode, row in zip(episodes, rows, strict=True):
        conversation = replay(episode, ProtocolSettings())
        replies = [m for m in conversation.messages if m["role"] == "assistant"]
        said = ["".join(part["text"] for part in m["content"]) for m in replies]
        assert said == [t["raw"] for t in row["turns"]]
    right = read_episodes([samples], only_correct=True)
    assert len(right) == sum(r["correct"] is True for r in rows)


def test_replay_refuses_other_protocol_settings(samples):
    episode = read_episodes([samples])[0]
    with pytest.raises(EpisodeError, match="frames"):
        replay(episode, ProtocolSettings(first_turn_frames=8))


def test_bad_episode_files_fail_in_one_line(tmp_path):
    bad = tmp_path / "samples.jsonl"
    bad.write_text('{"id": "x", "status": "ok", "turns": [{"frames": []}]}\n')
    result = CliRunner().invoke(
        app, ["train", "sft", "--episodes", str(bad), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.parametrize("lora", [0, 4])
def test_fine_tune_on_samples_then_ask(samples, tmp_path, lora):
    out = tmp_path / "sft"
    args = ["train", "sft", "--episodes", str(samples), "--out", str(out), "--model", "tiny"]
    args += ["--steps", "2", "--batch-size", "2", "--lr", "1e-4", "--warmup", "1"]
    args += ["--heldout", "1", "--eval-every", "2", "--lora-rank", str(lora), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["steps"] == 2 and 0.0 <= report["heldout_accuracy"] <= 1.0
    assert (out / "best" / "config.json").exists()
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] > 0 for r in rows)
    video = json.loads(samples.read_text().splitlines()[0])["video"]
    asked = CliRunner().invoke(
        app,
        ["ask", video, "What colour?", "--model", str(out / "final"), "--json"]
        + ["--max-new-tokens", "8", "--max-turns", "1"],
    )
    assert asked.exit_code == 0, asked.output
    assert json.loads(asked.stdout)["turns"]


def test_attention_gta_trains_fresh_gta_that_reloads(samples, tmp_path):
    """`--attention gta` swaps in fresh grouped-tied attention, trains it and saves a GTA model
    that `vmtr ask` loads; LoRA cannot train the new layers, so that combination is refused."""
    out = tmp_path / "gta"
    args = ["train", "sft", "--episodes", str(samples), "--out", str(out), "--model", "tiny"]
    args += ["--steps", "1", "--batch-size", "2", "--lr", "1e-3", "--warmup", "0"]
    result = CliRunner().invoke(
        app, [*args, "--attention", "gta", "--gta-settings", '{"groups": 2}']
    )
    assert result.exit_code == 0, result.output
    model = load_pretrained(out / "final")
    assert isinstance(decoder_layers(model)[0].self_attn, GTAAttention)
    assert gta_settings(model).groups == 2
    refused = CliRunner().invoke(
        app,
        ["train", "sft", "--episodes", str(samples), "--out", str(tmp_path / "x")]
        + ["--attention", "gta", "--lora-rank", "4"],
    )
    assert refused.exit_code == 1 and "drop --lora-rank" in refused.output, refused.output
