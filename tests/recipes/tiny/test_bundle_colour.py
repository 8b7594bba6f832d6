"""Bundling a colour RL checkpoint: the card is written from the held-out runs it finds, in four
short lines, and only a `vmtr train rl` checkpoint folder is accepted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from recipes.tiny import bundle_colour


def fake_heldout(root: Path, seed: int) -> Path:
    folder = root / f"heldout-s{seed}"
    folder.mkdir(parents=True)
    (folder / "annotations.json").write_text(json.dumps([{"problem_id": 0, "seed": seed}]))
    return folder


def fake_results(folder: Path, accuracy: float, turns: float, seen: float) -> None:
    folder.mkdir(parents=True)
    result = {"n": 200, "accuracy": accuracy, "mean_turns": turns, "evidence": {"seen_rate": seen}}
    (folder / "results.json").write_text(json.dumps(result))


def test_card_from_existing_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = tmp_path / "seed-1" / "rl-gated-bi-level-reward" / "checkpoint-200"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "trainer_state.pt").write_bytes(b"optimiser")
    evals = tmp_path / "evals"
    heldouts = [fake_heldout(tmp_path / "data", seed) for seed in (5000, 7000)]
    for heldout, multi in zip(heldouts, (0.675, 0.66), strict=True):
        fake_results(evals / heldout.name / "multi-turn", multi, 2.2, 0.6)
        fake_results(evals / heldout.name / "single-16", 0.405, 1.0, 0.3)
    target = tmp_path / "tiny"
    argv = ["bundle_colour.py", str(checkpoint), "--heldout", *map(str, heldouts)]
    argv += ["--evals", str(evals), "--target", str(target)]
    monkeypatch.setattr(sys, "argv", argv)

    bundle_colour.main()

    card = json.loads((target / "vmtr_tiny.json").read_text())
    lines = card["description"].splitlines()
    assert len(lines) == 4 and all(len(line) <= 100 for line in lines)
    assert "200 GRPO steps (gated bi-level reward)" in lines[1]
    assert "68% / 66% multi-turn in 2.2 turns" in lines[2] and "(seeds 5000 / 7000)" in lines[2]
    assert card["heldout"]["7000"]["multi-turn"]["needles_shown"] == 0.6
    assert card["provenance"]["step"] == 200
    assert (target / "config.json").exists() and not (target / "trainer_state.pt").exists()


def test_a_carried_on_run_counts_the_earlier_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "colour-rl-on" / "anchored" / "checkpoint-150"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    evals = tmp_path / "evals"
    heldout = fake_heldout(tmp_path / "data", 5000)
    fake_results(evals / heldout.name / "multi-turn", 0.9, 2.1, 0.85)
    fake_results(evals / heldout.name / "single-16", 0.45, 1.0, 0.3)
    # a chain: the arm's run, carried on once before this run carried it on again
    chain = [
        "runs/colour-rl/seed-1/rl-gated-bi-level-reward/checkpoint-200",
        "runs/colour-rl-on/recipe/checkpoint-100",
    ]
    argv = ["bundle_colour.py", str(checkpoint), "--heldout", str(heldout), "--evals", str(evals)]
    argv += ["--target", str(tmp_path / "tiny"), "--continues", *chain, "--arm", "gated"]
    monkeypatch.setattr(sys, "argv", argv)

    bundle_colour.main()

    card = json.loads((tmp_path / "tiny" / "vmtr_tiny.json").read_text())
    assert "450 GRPO steps (gated)" in card["description"].splitlines()[1]
    assert card["provenance"]["step"] == 450
    assert card["provenance"]["continues"] == chain


def test_refuses_a_folder_that_is_no_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["bundle_colour.py", str(tmp_path), "--heldout", "x"])
    with pytest.raises(SystemExit, match="error: .* is not a `vmtr train rl` checkpoint"):
        bundle_colour.main()
