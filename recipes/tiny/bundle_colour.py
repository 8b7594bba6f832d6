"""Bundle a colour RL checkpoint as `--model tiny`, with a model card written from what it scored.

    python recipes/tiny/bundle_colour.py CHECKPOINT --heldout DIR [DIR ...] [--evals DIR]
        [--continues EARLIER/checkpoint-K [LATER/checkpoint-K ...]] [--arm NAME]

CHECKPOINT is a `vmtr train rl` checkpoint folder (recipes/tiny/colour_rl.sh writes them under
``runs/colour-rl/seed-S/rl-ARM/checkpoint-N``; recipes/tiny/colour_rl_on.sh, which carries one on
from its checkpoint-K, under ``runs/colour-rl-on/ARM/checkpoint-N``: the card then counts K + N
steps, and the K of every checkpoint in a longer chain). Each ``--heldout`` folder is a colour split of
`vmtr synth --kinds colour` (seeds 5000 and 7000 in the recipe); the checkpoint is asked every
question there multi-turn and from 16 uniform frames in one turn (greedy, 96 new tokens a
reply, as the recipe's tables), each run kept under ``--evals`` and reused when present. Then
the model, processor and tokenizer are copied into ``vmtr/assets/tiny`` (the optimiser state
left behind) beside a ``vmtr_tiny.json`` whose description, four lines, is written from
those runs' ``results.json`` files, so it never states a figure the bundled weights did not
score.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from vmtr.models.tiny import TINY_DIR

SETTINGS = {
    "multi-turn": [],
    "single-16": ["--mode", "single-turn", "--frames", "16"],
}
"""The two ways the card reports: the protocol's turns, and 16 uniform frames in one turn."""

LEFT_BEHIND = ("trainer_state.pt",)
"""What a `vmtr train rl` checkpoint holds beside the model: the optimiser and step state."""


def evaluate(checkpoint: Path, heldout: Path, folder: Path) -> dict[str, dict[str, Any]]:
    """`vmtr eval synthetic` of ``checkpoint`` on ``heldout`` in each setting (run unless its
    ``results.json`` is there); returns the results by setting."""
    results = {}
    for name, flags in SETTINGS.items():
        out = folder / name
        if not (out / "results.json").exists():
            subprocess.run(
                ["vmtr", "eval", "synthetic", "--data", str(heldout), "-o", str(out)]
                + ["--model", str(checkpoint), "--temperature", "0", "--max-new-tokens", "96"]
                + flags,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        results[name] = json.loads((out / "results.json").read_text())
    return results


def checkpoint_step(folder: Path) -> int | None:
    """K of a `vmtr train rl` ``checkpoint-K`` folder; None for any other name."""
    match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
    return int(match.group(1)) if match else None


def seed_of(heldout: Path) -> str:
    """The generator seed of a `vmtr synth` split (its items' ``seed`` field)."""
    items = json.loads((heldout / "annotations.json").read_text())
    return str(items[0].get("seed", heldout.name))


def description(step: int, arm: str, scores: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The card's text, four lines of at most 100 characters (what `vmtr demo` prints): what the
    model is, how it was trained, its held-out figures, what it cannot do."""
    seeds = " / ".join(scores)
    multi = " / ".join(f"{s['multi-turn']['accuracy']:.0%}" for s in scores.values())
    single = " / ".join(f"{s['single-16']['accuracy']:.0%}" for s in scores.values())
    turns = sum(s["multi-turn"]["mean_turns"] for s in scores.values()) / len(scores)
    return "\n".join(
        [
            "Tiny Qwen2.5-VL (2.2 M parameters) that reads colours in vmtr's synthetic videos "
            "(chance 25%).",
            f"Trained on CPU: supervised with un-aimed retrieves, then {step} GRPO steps ({arm}).",
            f"Held-out colour (seeds {seeds}): {multi} multi-turn in {turns:.1f} turns; "
            f"16 frames {single}.",
            "It does not read shapes, order or counts, nor real videos. Recipe: recipes/tiny/colour.sh",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--heldout", type=Path, nargs="+", required=True)
    parser.add_argument("--evals", type=Path, help="Where the eval runs go (default: beside it).")
    parser.add_argument(
        "--start",
        default="runs/colour/unaimed-2/final",
        help="The warm start the RL run began from, for the card's provenance.",
    )
    parser.add_argument(
        "--continues",
        type=Path,
        nargs="+",
        default=[],
        help="The `vmtr train rl` checkpoint-K folders the run was carried on from, earliest "
        "first (recipes/tiny/colour_rl_on.sh, once or more): their K steps count in, their paths "
        "go in the provenance.",
    )
    parser.add_argument(
        "--arm", help="The reward arm's name on the card (default: from the run's folder)."
    )
    parser.add_argument("--target", type=Path, default=TINY_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args()
    checkpoint = args.checkpoint.resolve()
    step = checkpoint_step(checkpoint)
    if step is None or not (checkpoint / "config.json").exists():
        raise SystemExit(f"error: {checkpoint} is not a `vmtr train rl` checkpoint folder")
    arm_slug = checkpoint.parent.name.removeprefix("rl-")
    arm = args.arm or arm_slug.replace("-", " ").replace("bi level", "bi-level")
    before = 0
    for earlier in args.continues:
        k = checkpoint_step(earlier)
        if k is None:
            raise SystemExit(f"error: --continues {earlier} is not a checkpoint-K folder")
        before += k
    evals = args.evals or checkpoint.parent / f"bundle-{checkpoint.name}"
    scores = {
        seed_of(heldout): evaluate(checkpoint, heldout, evals / heldout.name)
        for heldout in args.heldout
    }
    target = args.target
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(checkpoint, target, ignore=shutil.ignore_patterns(*LEFT_BEHIND))
    figures = {
        seed: {
            setting: {k: result[k] for k in ("n", "accuracy", "mean_turns")}
            | {"needles_shown": result["evidence"]["seen_rate"]}
            for setting, result in by_setting.items()
        }
        for seed, by_setting in scores.items()
    }
    card = {
        "trained": True,
        "description": description(before + step, arm, scores),
        "recipe": "recipes/tiny/colour.sh",
        "answer_form": "needle",
        "provenance": {
            "start": args.start,
            **({"continues": [str(p) for p in args.continues]} if args.continues else {}),
            "checkpoint": os.path.relpath(checkpoint),
            "step": before + step,
        },
        "heldout": figures,
    }
    (target / "vmtr_tiny.json").write_text(json.dumps(card, indent=2) + "\n")
    print(card["description"])


if __name__ == "__main__":
    main()
