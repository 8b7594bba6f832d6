"""One curriculum stage: schedule, checkpoints and resume, guesses, the held-out check, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from recipes.tiny.curriculum import __main__ as curriculum_cli
from recipes.tiny.curriculum import config, drills, trainer
from vmtr.eval.runner import read_rows, read_runs
from vmtr.models.gta import GTAAttention, decoder_layers
from vmtr.models.weights import load_pretrained
from vmtr.policies import conversation


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    assert trainer.lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert trainer.lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert trainer.lr_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert trainer.lr_factor(55, 100, 10, 0.1) == pytest.approx(0.55)
    assert trainer.lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def _config(data_dir: Path, out: Path, steps: int) -> config.CurriculumConfig:
    return config.CurriculumConfig(
        data=[data_dir],
        out=out,
        steps=steps,
        batch_size=1,
        warmup=1,
        save_every=1,
        eval_items=1,
        single_turn_share=1.0,
        tiny_sizes={},
        lr=1e-3,
    )


def test_checkpoint_save_and_resume(data_dir: Path, tmp_path: Path) -> None:
    first = trainer.Curriculum(_config(data_dir, tmp_path, steps=2), log=lambda _: None)
    first.setup()
    first.train()
    assert first.last_checkpoint() == tmp_path / "checkpoints" / "step-000002"
    weights = {k: v.clone() for k, v in first.model.state_dict().items()}

    second = trainer.Curriculum(_config(data_dir, tmp_path, steps=3), log=lambda _: None)
    second.setup(resume=True)
    assert second.step == 2
    for key, value in second.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert second.optimizer.state_dict()["state"], "optimizer state was not restored"
    second.train()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert kept == ["step-000002", "step-000003"]
    assert (second.save() / "config.json").exists()


@pytest.mark.parametrize("mode", ["random", "masked"])
def test_needle_guesses_carry_loss_on_their_random_letter(
    data_dir: Path, tmp_path: Path, mode: str
) -> None:
    """Needle-form guesses are random letters and trained; ``masked`` keeps the other forms'
    rule (the answer's letter, no loss), as the bundled model's first needle stage ran."""
    config = _config(data_dir, tmp_path, steps=1).model_copy(
        update={"answer_form": "needle", "needle_guess": mode}
    )
    recipe = trainer.Curriculum(config, log=lambda _: None)
    recipe.setup()
    tok = recipe.processor.tokenizer
    open_id, close_id = tok.convert_tokens_to_ids(["<answer>", "</answer>"])
    guesses = 0
    for step in range(12):
        examples, trajectories = recipe.batch_at(step)
        for example, traj in zip(examples, trajectories, strict=True):
            if not (traj.guesses and traj.guesses[-1]):
                continue
            guesses += 1
            ids, labels = example["input_ids"], example["labels"]
            inside = drills.between_tags(ids, open_id, close_id)
            last = int(inside.nonzero()[-1])  # the last reply's answer: the guessed letter
            assert tok.decode(ids[last : last + 1]) == traj.actions[-1].answer
            if mode == "random":
                assert labels[last] == ids[last]
            else:
                assert labels[last] == conversation.IGNORE
    assert guesses


def test_periodic_eval_keeps_the_best_model(data_dir: Path, tmp_path: Path) -> None:
    config = _config(data_dir, tmp_path, steps=2).model_copy(update={"eval_every": 1})
    recipe = trainer.Curriculum(config, log=lambda _: None)
    recipe.setup()
    scores = iter([0.5, 0.25])
    recipe.evaluate = lambda: {"accuracy": next(scores)}  # type: ignore[method-assign]
    recipe.train()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["eval"]["accuracy"] for r in log if "eval" in r] == [0.5, 0.25]
    best = json.loads((tmp_path / "best" / "vmtr_best.json").read_text())
    assert best["step"] == 1  # the dip at step 2 did not replace it
    assert (tmp_path / "best" / "config.json").exists()


def test_the_held_out_check_runs_through_the_evaluation_runner(
    data_dir: Path, tmp_path: Path
) -> None:
    recipe = trainer.Curriculum(_config(data_dir, tmp_path, steps=1), log=lambda _: None)
    recipe.setup()
    recipe.train()
    result = recipe.evaluate()
    assert result["items"] == 1 and 0.0 <= result["accuracy"] <= 1.0
    assert result["mean_turns"] >= 1 and result["mean_frames"] >= 16
    # one run of the evaluation runner, keyed by the weights' step, its rows in heldout/
    runs = read_runs(tmp_path / "heldout")
    assert [r["model"]["model"] for r in runs.values()] == [f"{tmp_path.name}@step1"]
    assert len(read_rows(tmp_path / "heldout")) == 1
    assert recipe.evaluate() == result  # the same weights are read back, not asked again
    assert len(read_rows(tmp_path / "heldout")) == 1


def _cli(args: list[str]):
    return CliRunner().invoke(curriculum_cli.app, args)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    result = _cli(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "error:" in result.output and "annotations.json" in result.output
    assert "Traceback" not in result.output

    result = _cli(["--data", str(tmp_path), "--out", str(tmp_path), "--resume"])
    assert result.exit_code == 1 and "error:" in result.output

    result = _cli(["--data", str(tmp_path), "--out", str(tmp_path), "--answer-form", "bridge"])
    assert result.exit_code == 1 and "answer_form" in result.output
    assert "Traceback" not in result.output


def test_attention_gta_trains_fresh_gta_from_the_same_initial_weights(
    data_dir: Path, tmp_path: Path
) -> None:
    """`--attention gta`: the recipe's fresh model with only its attention replaced; the trained
    checkpoint reloads as GTA, resume keeps it GTA."""
    gqa = trainer.Curriculum(
        _config(data_dir, tmp_path / "gqa", steps=1).model_copy(update={"model": "tiny-init"}),
        log=lambda _: None,
    )
    gqa.setup()
    cfg = _config(data_dir, tmp_path / "gta", steps=1).model_copy(
        update={"model": "tiny-init", "attention": "gta"}
    )
    gta = trainer.Curriculum(cfg, log=lambda _: None)
    gta.setup()
    assert isinstance(decoder_layers(gta.model)[0].self_attn, GTAAttention)
    assert not isinstance(decoder_layers(gqa.model)[0].self_attn, GTAAttention)
    gqa_weights = gqa.model.state_dict()
    shared = [k for k in gta.model.state_dict() if ".self_attn." not in k]
    assert shared and all(torch.equal(gta.model.state_dict()[k], gqa_weights[k]) for k in shared)
    gta.train()
    final = load_pretrained(gta.save())
    assert isinstance(decoder_layers(final)[0].self_attn, GTAAttention)
    resumed = trainer.Curriculum(cfg.model_copy(update={"steps": 2}), log=lambda _: None)
    resumed.setup(resume=True)
    assert isinstance(decoder_layers(resumed.model)[0].self_attn, GTAAttention)
