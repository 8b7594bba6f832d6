"""The Video-MTR ablation in miniature: warm start vs RL with three reward designs.

    python benchmarks/rl_ablation.py --start runs/tiny/sft/final --train runs/tiny/data/train-s1000 \
        --heldout runs/heldout-s5000 [--steps 30] [--n 200] [--out runs/ablation]

Every arm starts from the same warm-started checkpoint and runs the same `vmtr train rl` recipe
(GRPO, same seed, same steps), differing only in the reward:
- answer only: ``--no-frame-reward`` (format + answer terms);
- gated bi-level: the released code's reward (frame terms only count with a right answer);
- bi-level without the gate: ``--no-gate``.
Then each checkpoint, and the warm start (single-turn 16 frames and multi-turn), is evaluated
with `vmtr eval synthetic` (greedy) on the held-out set. It prints a Markdown table of accuracy,
mean turns, retrieve rate and mean frames seen. Everything goes through the CLI, so each row can
be re-run by hand; both commands resume, so an interrupted ablation picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ARMS = {
    "RL, answer reward only": ["--no-frame-reward"],
    "RL, gated bi-level reward": [],
    "RL, bi-level reward, no gate": ["--no-gate"],
}


def vmtr(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "vmtr.cli", *args]
    print("$ vmtr " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=env)


def evaluate(model: str, heldout: Path, out: Path, n: int, extra: list[str]) -> dict:
    vmtr(
        "eval",
        "synthetic",
        "--data",
        str(heldout),
        "--output",
        str(out),
        "--model",
        model,
        "--limit",
        str(n),
        "--batch-size",
        "4",
        "--json",
        *extra,
    )
    results = json.loads((out / "results.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    scored = [s for s in samples if s.get("status") != "error"]
    retrieved = [any(t["action"] == "retrieve" for t in s.get("turns", [])) for s in scored]
    results["retrieve_rate"] = sum(retrieved) / max(len(scored), 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", required=True, help="Warm-started checkpoint folder.")
    parser.add_argument("--train", type=Path, required=True, help="Training split folder.")
    parser.add_argument("--heldout", type=Path, required=True, help="Held-out split folder.")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()

    if not (args.heldout / "annotations.json").exists():
        vmtr(
            "synth",
            str(args.heldout),
            "--n",
            str(args.n),
            "--seed",
            "5000",
            "--minutes",
            "1",
            "--workers",
            "2",
        )
    rows = []
    base = evaluate(
        args.start,
        args.heldout,
        args.out / "eval-warm-single",
        args.n,
        ["--mode", "single-turn", "--frames", "16"],
    )
    rows.append(("warm start, single-turn 16 frames", base))
    rows.append(
        (
            "warm start, multi-turn",
            evaluate(args.start, args.heldout, args.out / "eval-warm-multi", args.n, []),
        )
    )
    for name, flags in ARMS.items():
        slug = name.split(",", 1)[1].strip().replace(" ", "-").replace(",", "")
        run_dir = args.out / f"rl-{slug}"
        vmtr(
            "train",
            "rl",
            "--data",
            str(args.train / "annotations.json"),
            "--out",
            str(run_dir),
            "--model",
            args.start,
            "--algo",
            "grpo",
            "--steps",
            str(args.steps),
            "--prompts-per-step",
            str(args.prompts),
            "--samples-per-prompt",
            str(args.samples),
            "--actor-lr",
            str(args.lr),
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--save-every",
            str(args.steps),
            *flags,
        )
        checkpoint = run_dir / f"checkpoint-{args.steps}"
        rows.append(
            (name, evaluate(str(checkpoint), args.heldout, args.out / f"eval-{slug}", args.n, []))
        )
    print(
        f"\nHeld-out synthetic set: {args.n} items; RL: GRPO, {args.steps} steps x "
        f"{args.prompts} prompts x {args.samples} samples, lr {args.lr}\n"
    )
    print("| setting | accuracy | mean turns | retrieve rate | mean frames |")
    print("|---|---|---|---|---|")
    print("| chance | 25.0 % | - | - | 0 |")
    for name, r in rows:
        print(
            f"| {name} | {100 * r['accuracy']:.1f} % | {r['mean_turns']:.2f} | "
            f"{100 * r['retrieve_rate']:.0f} % | {r['mean_frames']:.1f} |"
        )


if __name__ == "__main__":
    main()
