"""How a model's sampled episodes look: first actions, retrieve ranges, needles shown.

    python recipes/tiny/sample_probe.py MODEL DATA [--temperature 1.0] [--items 60] [--seeds 3]

RL samples its episodes, so a warm start's greedy figures can hide a format that breaks under
sampling; this runs the agent at ``--temperature`` over the first ``--items`` items of DATA,
``--seeds`` times each, and counts the first reply's action (answer, retrieve, invalid), the
retrieve ranges written, how often a first retrieve's range holds the first frame the reply
named as the border (the rule that aims; one aligned 8-frame block in eight holds it by chance)
and how often the frames shown held the needle asked about.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from vmtr.agent.ask import ask
from vmtr.config import ModelSettings
from vmtr.eval.datasets import load_synthetic
from vmtr.eval.runner import shown_times
from vmtr.eval.scoring import saw_evidence
from vmtr.models.qwen import QwenVideoLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aim_probe import named_and_range  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data", help="A `vmtr synth` folder.")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    lm = QwenVideoLM.load(ModelSettings(model=args.model, device="cpu"))
    items = load_synthetic(args.data)[: args.items]
    first: collections.Counter[str] = collections.Counter()
    ranges: collections.Counter[str] = collections.Counter()
    shown, correct, turns, copies = [], [], [], []
    for seed in range(args.seeds):
        for index, item in enumerate(items):
            result = ask(
                item.video,
                item.question,
                item.options,
                model=lm,
                temperature=args.temperature,
                seed=seed * 7919 + index,
                max_new_tokens=96,
            )
            first[result.turns[0]["action"]] += 1
            got = named_and_range(result.turns[0]["raw"] or "")
            if result.turns[0]["action"] == "retrieve" and got is not None:
                copies.append(got[1] <= got[0] <= got[2])
            for turn in result.turns:
                if turn["action"] == "retrieve":
                    ranges[turn["raw"].split("<retrieve>")[1].split("<")[0]] += 1
            shown.append(bool(saw_evidence(item.relevant_windows, shown_times(result.turns))))
            correct.append(result.answer == item.answer)
            turns.append(len(result.turns))
    n = len(shown)
    print(f"first actions: {dict(first)}")
    print(f"retrieve ranges: {ranges.most_common(12)}")
    if copies:
        print(
            f"first retrieves holding the first border frame named: {sum(copies) / len(copies):.3f}"
        )
    print(
        f"episodes {n}: accuracy {sum(correct) / n:.3f}, needles shown {sum(shown) / n:.3f}, "
        f"mean turns {sum(turns) / n:.2f}"
    )


if __name__ == "__main__":
    main()
