"""Copy a trained tiny model into vmtr/assets/tiny with a vmtr_tiny.json that says how it was
made and what it scored (the last step of recipes/tiny/train_tiny.sh).

    python recipes/tiny/bundle_tiny.py FINAL WARM [--aimed]

FINAL is the model to bundle, holding the ``heldout.json`` that `benchmarks/synthetic_table.py
--json-out` wrote for it; WARM is the supervised warm start it was trained from (a ``best/``
folder's ``vmtr_best.json``, or a ``final/`` folder's run ``report.json``, gives its step and
held-out check); ``--aimed`` says the warm start's last stages scripted aimed retrieves
(`python -m recipes.tiny.curriculum --retrieve-aim`). The description is written from those measurements,
so it never states a figure the bundled weights did not score.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from transformers import AutoModelForImageTextToText

from vmtr.eval.report import evidence_sentence
from vmtr.models.tiny import TINY_DIR

LEFT_BEHIND = ("trainer_state.pt", "heldout.json", "vmtr_best.json")


ANSWER_FORMS = {
    "needle": " Two more supervised stages then taught it to answer with the needle it read "
    '("blue cross", or a number for counts; the parser maps that to the one option it names, '
    "and it guesses a letter when it saw none).",
}
"""What the model card adds for a model trained with the curriculum's ``--answer-form``."""


AIMED = (
    " Three more supervised stages then scripted its retrieves from the border frames its "
    "reply named (the first-turn labels around them, never the needles' frames), and GRPO ran "
    "once more, with the answer reward only at lr 3e-5 (from that warm start the gated reward, "
    "and lr 1e-4, lost accuracy)."
)
"""What the model card adds for a warm start trained with the curriculum's ``--retrieve-aim`` (the
last RL stage of recipes/tiny/train_tiny.sh)."""

NOT_AIMED = " GRPO with the gated bi-level reward then ran again."
"""The last step of a needle-answer model without aimed stages."""


def describe(params: int, report: dict[str, Any], aimed: bool = False) -> str:
    """The model card's one paragraph, from the held-out table and reading check."""
    rows = {row["setting"].split(" (")[0]: row for row in report["rows"]}
    multi, single = rows["multi-turn"], rows["single-turn, 16 uniform frames"]
    reading = report["reading"]
    held = report["heldout"]
    weak = reading["colour_accuracy"] < 0.5
    letter = reading.get("answer_accuracy")
    form = report.get("answer_form", "letter")
    return (
        f"tiny Qwen2.5-VL ({params / 1e6:.1f} M parameters) trained from scratch on CPU by "
        "recipes/tiny/train_tiny.sh: a supervised warm start (random aligned retrieve blocks, never "
        "the oracle's; protocol episodes, reading drills, protocol episodes with the loss on "
        "what replies read weighted up, and an auxiliary needle loss on the vision tower), then "
        "GRPO with the gated bi-level reward."
        + ANSWER_FORMS.get(form, "")
        + (AIMED if aimed else NOT_AIMED if form == "needle" else "")
        + " On "
        f"{multi['n']} held-out {held['minutes']:g}-minute videos (seed {held['seed']}) it "
        f"answers {multi['accuracy']:.0%} multi-turn ({multi['turns']:.1f} turns, retrieving in "
        f"{multi['retrieve_rate']:.0%} of episodes) and {single['accuracy']:.0%} from 16 uniform "
        "frames (chance 25 %)."
        + seen_sentence(multi)
        + " Teacher-forced on scripted episodes of the same videos it names "
        f"the border's frame digits {reading['border_digits_accuracy']:.0%} of the time and a "
        f"needle's colour {reading['colour_accuracy']:.0%} (chance 17 %)."
        + (" Reading the needle is what it has not learned." if weak else "")
        + (
            f" Given a correct reading, it names the matching option {letter:.0%} of the time "
            "(chance 25 %): that step is what it has not learned."
            if letter is not None and letter < 0.5 and not weak and form != "needle"
            else ""
        )
        + (
            f" It does not read shapes (teacher-forced {reading['shape_accuracy']:.0%}, chance "
            "25 %), so shape and order questions stay near chance."
            if reading.get("shape_accuracy", 1.0) < 0.5
            else ""
        )
        + " It knows nothing of real videos."
    )


def seen_sentence(row: dict[str, Any]) -> str:
    """How the row's answers depend on whether its frames held the needles, in the evaluation's
    own wording (empty without a split, as in tables from before it)."""
    sentence = evidence_sentence(row.get("evidence"))
    return f" Multi-turn: {sentence}" if sentence else ""


def warm_check(warm: Path) -> dict[str, Any]:
    """The warm start's step and last held-out check, from a best/ or a final/ folder."""
    best = warm / "vmtr_best.json"
    if best.exists():
        return json.loads(best.read_text())
    run = json.loads((warm.parent / "report.json").read_text())
    return {"step": run["steps"], "eval": run["eval"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("final", type=Path)
    parser.add_argument("warm", type=Path)
    parser.add_argument("--aimed", action="store_true")
    args = parser.parse_args()
    final, warm, aimed = args.final, args.warm, args.aimed
    report = json.loads((final / "heldout.json").read_text())
    warm_best = warm_check(warm)
    shutil.rmtree(TINY_DIR, ignore_errors=True)
    shutil.copytree(final, TINY_DIR, ignore=shutil.ignore_patterns(*LEFT_BEHIND))
    model = AutoModelForImageTextToText.from_pretrained(TINY_DIR)
    params = sum(p.numel() for p in model.parameters())
    reading = report["reading"]
    info = {
        "trained": True,
        "description": describe(params, report, aimed),
        "recipe": "recipes/tiny/train_tiny.sh",
        "answer_form": report.get("answer_form", "letter"),
        "warm_start": {
            "path": str(warm),
            "step": warm_best["step"],
            "eval": warm_best["eval"],
        },
        "heldout": report,
        "teacher_forced_reading": {
            k.removesuffix("_accuracy"): round(v, 3)
            for k, v in reading.items()
            if k.endswith("_accuracy")
        },
    }
    (TINY_DIR / "vmtr_tiny.json").write_text(json.dumps(info, indent=2) + "\n")
    print(info["description"])


if __name__ == "__main__":
    main()
