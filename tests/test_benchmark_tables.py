"""The RL ablation's multi-seed table: per-seed cells, mean, spread and balanced mean."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import rl_ablation  # noqa: E402
import synthetic_table  # noqa: E402


def row(accuracy: float, balanced: float) -> dict:
    return {"accuracy": accuracy, "letters": {"balanced_accuracy": balanced}}


def test_seeds_table_gives_each_arm_its_seeds_mean_and_spread() -> None:
    arms = {"RL, gated": {2: row(0.20, 0.30), 0: row(0.30, 0.20), 1: row(0.25, 0.25)}}
    lines = rl_ablation.seeds_markdown(row(0.255, 0.258), arms).splitlines()
    assert lines[0] == "| Arm | seed 0 | seed 1 | seed 2 | Mean | SD | Balanced, mean |"
    # the warm start takes no RL seed: the same figure under each, no spread
    assert (
        lines[2]
        == "| warm start, multi-turn (no RL) | 25.5% | 25.5% | 25.5% | 25.5% | 0.0% | 25.8% |"
    )
    # seeds in order whatever order they finished in; sample SD of 30, 25, 20 is 5
    assert lines[3] == "| RL, gated | 30.0% | 25.0% | 20.0% | 25.0% | 5.0% | 25.0% |"


def test_an_arm_missing_a_seed_is_averaged_over_the_seeds_it_ran() -> None:
    arms = {
        "RL, gated": {0: row(0.30, 0.20), 1: row(0.20, 0.30)},
        "RL, new arm": {1: row(0.40, 0.40)},
    }
    lines = rl_ablation.seeds_markdown(row(0.25, 0.25), arms).splitlines()
    assert lines[4] == "| RL, new arm | – | 40.0% | 40.0% | 0.0% | 40.0% |"


def test_arms_are_picked_by_their_folder_names() -> None:
    assert rl_ablation.arm_slug("RL, answer reward only") == "answer-reward-only"
    # the default arms are the paper's three; every arm has a folder of its own
    assert [rl_ablation.arm_slug(name) for name in rl_ablation.PAPER_ARMS] == [
        "answer-reward-only",
        "gated-bi-level-reward",
        "bi-level-reward-no-gate",
    ]
    slugs = [rl_ablation.arm_slug(name) for name in rl_ablation.ARMS]
    assert len(set(slugs)) == len(slugs)


def test_several_seeds_put_each_seed_in_its_own_folder() -> None:
    out = Path("runs/x")
    name = "RL, gated bi-level reward"
    assert rl_ablation.arm_dir(out, name, 0, False) == out / "rl-gated-bi-level-reward"
    assert rl_ablation.arm_dir(out, name, 3, True) == out / "seed-3" / "rl-gated-bi-level-reward"


def test_results_tags_tell_models_apart() -> None:
    # two checkpoints with the same last folder name get their own files
    assert synthetic_table.model_tag("runs/a/best") != synthetic_table.model_tag("runs/b/best")
    # the bundled model's tag carries its weights' fingerprint, not just the word "tiny"
    tag = synthetic_table.model_tag("tiny")
    assert tag.startswith("tiny-") and len(tag) == len("tiny-") + 10
    assert tag == synthetic_table.model_tag("tiny")


def test_breakdown_line_counts_right_answers_per_kind_and_turns_taken() -> None:
    def result(item: str, turns: int, correct: bool) -> dict:
        return {
            "id": item,
            "status": "ok",
            "turns": turns,
            "correct": correct,
            "frames": 16,
            "invalid": 0,
            "answer": "A",
            "truth": "A" if correct else "B",
            "saw_evidence": True,
        }

    rows = [result("a", 2, True), result("b", 3, False), result("c", 3, True)]
    kinds = {"a": "colour", "b": "count", "c": "count"}
    line = synthetic_table.breakdown_line(synthetic_table.summary_row(rows, "multi", kinds))
    assert (
        line == "- multi: right answers by kind colour 1/1, count 1/2; by turns taken 2 1/1, 3 1/2"
    )
    # without kinds (an old results file), the turns still split
    line = synthetic_table.breakdown_line(synthetic_table.summary_row(rows, "multi"))
    assert line == "- multi: right answers by turns taken 2 1/1, 3 1/2"


def test_seed_counts_say_how_many_runs_each_stretch_averages() -> None:
    import numpy as np

    everyone = np.ones((3, 5), bool)
    assert rl_ablation.seed_counts(everyone) == "3 seeds"
    assert rl_ablation.seed_counts(np.ones((1, 5), bool)) == "1 seed"
    behind = np.array([[True] * 5, [True, True, False, False, False]])
    assert rl_ablation.seed_counts(behind) == "2 seeds to step 2, 1 to 5"


def test_curves_draw_every_step_of_a_run_ahead_of_its_arm_s_other_seeds(tmp_path, monkeypatch):
    """Mid-ablation one seed stands at step 6, another at 2: the arm's line runs to step 6 (the
    later steps from the one seed that reached them), and the PNG is written. A third seed
    carried on past the ablation's 6 steps is drawn only to step 6."""
    import argparse
    import json

    import matplotlib.axes

    name = "RL, answer reward only"
    for seed, steps in ((0, 6), (1, 2), (2, 9)):
        run = rl_ablation.arm_dir(tmp_path, name, seed, several=True)
        run.mkdir(parents=True)
        needles = 0.1 * seed if seed < 2 else 0.0
        rows = [{"step": i + 1, "accuracy": 0.5, "relevant_seen": needles} for i in range(steps)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    drawn: list = []
    real_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "plot",
        lambda self, x, y, **kw: (
            drawn.append((list(x), list(y), kw)) or real_plot(self, x, y, **kw)
        ),
    )
    args = argparse.Namespace(arms=[name], seed=[0, 1, 2], out=tmp_path, steps=6)
    rl_ablation.plot_curves(args, tmp_path / "curves.png", window=2)
    assert (tmp_path / "curves.png").stat().st_size > 0
    x, needles, kw = drawn[1]
    assert x == [2, 3, 4, 5, 6]
    # seeds 0-2 at step 2 (needles 0, 0.1, 0), then seeds 0 and 2
    assert needles[0] == pytest.approx(0.1 / 3) and needles[1:] == [0.0] * 4
    assert kw["label"] == f"{name} (3 seeds to step 2, 2 to 6)"


def test_an_arm_s_command_is_one_the_real_train_rl_accepts(tmp_path, monkeypatch) -> None:
    """The ablation passes its credit and KL flags through to `vmtr train rl`: the settings the
    CLI builds from an arm's command carry them (the trainer itself is replaced)."""
    import argparse

    from typer.testing import CliRunner

    import vmtr.policies.trainer as trainer
    from vmtr.cli import app

    built: list = []

    class Recipe:
        step = 0

        def __init__(self, data, out, model, settings) -> None:
            built.append(settings)

        def setup(self) -> None: ...

        def train(self, progress) -> None: ...

    monkeypatch.setattr(trainer, "RLRecipe", Recipe)
    args = argparse.Namespace(
        train=tmp_path, start="tiny", steps=5, prompts=8, samples=4, lr=3e-5, temperature=0.6,
        kl_coef=0.1, ppo_epochs=2, max_new_tokens=64, save_every=10, max_turns=3,
        freeze_vision=True, train_tokens="decision", kl_tokens="untrained", loss_agg="token-mean",
        skip_solved=0.8,
    )  # fmt: skip
    command = rl_ablation.rl_command(args, tmp_path / "run", ["--no-gate"], seed=2)
    assert command[1:4] == ["-m", "vmtr.cli", "train"]
    result = CliRunner().invoke(app, command[3:])
    assert result.exit_code == 0, result.output
    (settings,) = built
    assert (settings.train_tokens, settings.kl_tokens, settings.kl_coef) == (
        "decision",
        "untrained",
        0.1,
    )
    assert (settings.loss_agg, settings.seed, settings.reward.gate) == ("token-mean", 2, False)
    assert settings.freeze_vision and settings.samples_per_prompt == 4
    assert settings.skip_solved == 0.8
