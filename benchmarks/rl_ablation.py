"""The Video-MTR ablation in miniature: single-turn, warm start, and RL with three reward designs.

    python benchmarks/rl_ablation.py --start runs/tiny/16-aim/final \\
        --train runs/tiny/data/train-s1001 [--heldout runs/table/heldout-s5000] [--n 200] \\
        [--steps 30] [--lr 3e-5] [--parallel 3] [--out runs/ablation] [--seed 0 [1 2 ...]] \\
        [--arms answer-reward-only gated-bi-level-reward ...] [--max-turns 2]

Every arm starts from the same warm-started checkpoint and runs the same `vmtr train rl` recipe
(GRPO, same seed, same steps, same data), differing only in the reward:
- answer only: ``--no-frame-reward`` (format + answer terms);
- gated bi-level: the released code's reward (frame terms only count with a right answer);
- bi-level without the gate: ``--no-gate``;
- and, not among the paper's arms (``--arms`` picks them), the code's frame term under the
  paper's gate (``--gate-format``: a wrong answer keeps only its final format term), and the
  gated reward with turn-level GRPO credit (``--credit turn``), scaled or only centred
  (``--no-group-std``).
The warm start is asked single-turn (16 and 32 uniform frames) and multi-turn, each RL checkpoint
multi-turn; the warm start and every checkpoint also with oracle aim (every retrieve rewritten to
the needles' frames, `vmtr.eval.oracle`), which splits a policy's accuracy into what its aim
costs it and what its reading caps it at. All greedy on the same held-out set through `benchmarks/synthetic_table.py`'s
evaluation (the evaluation runner, `vmtr.eval.runner`, in worker processes). It prints a Markdown
table of accuracy, mean turns, retrieve rate and mean frames seen, and under it each row's right
answers by whether the needles were shown, by question kind and by turns taken. Per-item results
are the runner's results folders beside each checkpoint (the warm start's beside the held-out
set), and RL runs resume from their checkpoints, so an interrupted ablation picks up where it
stopped. Each arm's run with the best held-out accuracy is named in
``OUT/best-ARM-HELDOUT.txt`` (its last checkpoint's path). The held-out set and the warm start's
rows are the ones `synthetic_table.py --model START` makes, so the two
tables share them.

With several ``--seed`` values every arm runs once per seed (the prompts drawn and the sampling
differ; ``OUT/seed-S/rl-ARM``) and a second table gives each arm's accuracy per seed, its mean,
standard deviation and balanced mean: one RL seed moves an arm by more than the arms differ, so
a claim needs the spread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, get_args

from vmtr.policies.loss_agg import LossAgg
from vmtr.policies.rl_settings import RLSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_table import (  # noqa: E402
    MULTI,
    ORACLE,
    SETTINGS,
    TWO_TURNS,
    TWO_TURNS_ORACLE,
    breakdown_line,
    chance_row,
    evaluate_model,
    evidence_line,
    item_kinds,
    load_items,
    markdown,
    model_tag,
    summary_row,
)

ARMS = {
    "RL, answer reward only": ["--no-frame-reward"],
    "RL, gated bi-level reward": [],
    "RL, bi-level reward, no gate": ["--no-gate"],
    # not one of the paper's arms: the code's frame term under the paper's gate, which leaves a
    # wrong answer nothing for taking more turns (see vmtr.policies.rewards)
    "RL, gated bi-level reward, format gated too": ["--gate-format"],
    # nor this: the same reward as the gated arm, each turn judged by its own reward-to-go
    "RL, gated bi-level reward, turn-level credit": ["--credit", "turn"],
    # and the same, centred only (Dr. GRPO): a group's small format-only gaps stay small
    "RL, gated bi-level reward, turn-level credit, centred": [
        "--credit",
        "turn",
        "--no-group-std",
    ],
}
PAPER_ARMS = list(ARMS)[:3]
ASKED = {3: (MULTI, ORACLE), 2: (TWO_TURNS, TWO_TURNS_ORACLE)}
"""Per turn budget: the held-out settings an arm is asked under (its own aim, oracle aim)."""


def rl_command(args: argparse.Namespace, run_dir: Path, flags: list[str], seed: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vmtr.cli",
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
        "--temperature",
        str(args.temperature),
        "--top-p",
        "1.0",
        "--kl-coef",
        str(args.kl_coef),
        "--ppo-epochs",
        str(args.ppo_epochs),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--save-every",
        str(args.save_every),
        "--seed",
        str(seed),
        "--max-turns",
        str(args.max_turns),
        *(["--freeze-vision"] if args.freeze_vision else []),
        "--train-tokens",
        args.train_tokens,
        "--kl-tokens",
        args.kl_tokens,
        "--loss-agg",
        args.loss_agg,
        *(["--skip-solved", str(args.skip_solved)] if args.skip_solved else []),
        *flags,
    ]


def seed_counts(reached: Any) -> str:
    """How many seeds each stretch of steps averages: "3 seeds", or "2 seeds to step 35, 1 to
    200" while some runs are behind (``reached``: seeds x steps, whether a run got there)."""
    counts = reached.sum(0)
    parts, start = [], 0
    for i in range(1, len(counts) + 1):
        if i == len(counts) or counts[i] != counts[start]:
            parts.append((int(counts[start]), i))
            start = i
    if len(parts) == 1:
        n = parts[0][0]
        return f"{n} seed{'s' if n > 1 else ''}"
    first = f"{parts[0][0]} seeds to step {parts[0][1]}"
    return ", ".join([first] + [f"{n} to {end}" for n, end in parts[1:]])


def plot_curves(args: argparse.Namespace, png: Path, window: int = 10) -> None:
    """Accuracy and needles shown (``relevant_seen``) against RL step, one line per arm: the mean
    over RL seeds of each run's moving average (``window`` steps), with the seeds' spread as a
    band. Read from each run's ``metrics.jsonl``, so it draws whatever has been trained so far,
    up to ``args.steps`` (a run carried on past the ablation's length is cut there); each step
    averages the seeds that reached it, and the legend says how many."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [("accuracy", "rollout accuracy"), ("relevant_seen", "needles shown")]
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4))
    for name in args.arms:
        curves = []
        for seed in args.seed:
            log = arm_dir(args.out, name, seed, len(args.seed) > 1) / "metrics.jsonl"
            if not log.exists():
                continue
            rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            curves.append([r for r in rows if r["step"] <= args.steps])
        if not curves:
            continue
        # runs of one arm may stand at different steps mid-ablation: each step averages the
        # seeds that reached it, so no run's later steps are hidden by a shorter one
        steps = max(len(rows) for rows in curves)
        reached = np.array([[len(rows) > i for i in range(steps)] for rows in curves])
        for ax, (key, title) in zip(axes, keys, strict=True):
            smooth = np.full((len(curves), steps), np.nan)
            for row, rows in enumerate(curves):
                values = np.array([np.nan if r.get(key) is None else r[key] for r in rows], float)
                size = min(window, len(values))
                kernel = np.ones(size) / size
                averaged = np.convolve(np.nan_to_num(values), kernel, mode="valid")
                smooth[row, size - 1 : size - 1 + len(averaged)] = averaged
            x = np.arange(1, steps + 1)
            shown = ~np.isnan(smooth).all(0)
            with np.errstate(all="ignore"):
                mean = np.nanmean(smooth[:, shown], 0)
            line = ax.plot(x[shown], mean, label=f"{name} ({seed_counts(reached)})")[0]
            band = shown & (np.sum(~np.isnan(smooth), 0) > 1)
            ax.fill_between(
                x[band],
                np.nanmin(smooth[:, band], 0),
                np.nanmax(smooth[:, band], 0),
                alpha=0.2,
                color=line.get_color(),
            )
            ax.set_title(f"{title} ({window}-step mean)")
            ax.set_xlabel("RL step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)


def arm_slug(name: str) -> str:
    """An arm's short name, as its folder and ``--arms`` spell it: "answer-reward-only"."""
    return name.split(",", 1)[1].strip().replace(" ", "-").replace(",", "")


def arm_dir(out: Path, name: str, seed: int, several: bool) -> Path:
    """Where an arm's run lives: ``OUT/rl-ARM``, under ``seed-S/`` when several seeds run."""
    return (out / f"seed-{seed}" if several else out) / f"rl-{arm_slug(name)}"


def train_arms(args: argparse.Namespace) -> dict[tuple[str, int], Path]:
    """Run the RL arms of every seed (``--parallel`` at a time, one thread each); return their
    checkpoints by (arm, seed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    checkpoints, pending = {}, []
    for seed in args.seed:
        for name in args.arms:
            flags = ARMS[name]
            run_dir = arm_dir(args.out, name, seed, len(args.seed) > 1)
            checkpoints[name, seed] = run_dir / f"checkpoint-{args.steps}"
            if not (checkpoints[name, seed] / "config.json").exists():
                pending.append((name, run_dir, flags, seed))
    running: list[tuple[str, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < args.parallel:
            name, run_dir, flags, seed = pending.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            print(f"training arm: {name} (seed {seed})", file=sys.stderr, flush=True)
            log = (run_dir / "train.log").open("a")
            running.append(
                (
                    name,
                    subprocess.Popen(
                        rl_command(args, run_dir, flags, seed), env=env, stdout=log, stderr=log
                    ),
                )
            )
        time.sleep(5)
        for entry in list(running):
            name, proc = entry
            if proc.poll() is not None:
                running.remove(entry)
                if proc.returncode:
                    sys.exit(
                        f"error: RL arm '{name}' failed (exit {proc.returncode}); see its train.log"
                    )
    return checkpoints


def seeds_markdown(warm: dict[str, Any], arms: dict[str, dict[int, dict[str, Any]]]) -> str:
    """Each arm's multi-turn accuracy per RL seed, with mean, standard deviation and balanced
    mean; the warm start (no RL, greedy) scores the same under every seed."""
    seeds = sorted({seed for per_seed in arms.values() for seed in per_seed})
    head = " | ".join(f"seed {seed}" for seed in seeds)
    lines = [
        f"| Arm | {head} | Mean | SD | Balanced, mean |",
        "|---|" + "---:|" * (len(seeds) + 3),
    ]
    rows = {"warm start, multi-turn (no RL)": dict.fromkeys(seeds, warm), **arms}
    for label, per_seed in rows.items():
        ran = [seed for seed in seeds if seed in per_seed]
        accuracy = [per_seed[seed]["accuracy"] for seed in ran]
        balanced = [per_seed[seed]["letters"]["balanced_accuracy"] for seed in ran]
        spread = statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
        cells = " | ".join(
            f"{per_seed[seed]['accuracy']:.1%}" if seed in per_seed else "–" for seed in seeds
        )
        lines.append(
            f"| {label} | {cells} | {statistics.mean(accuracy):.1%} | {spread:.1%} "
            f"| {statistics.mean(balanced):.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--start",
        required=True,
        help="The supervised warm start (train_tiny.sh leaves it in RUN/10-mixed/final; the "
        "bundled `tiny` is already RL-trained).",
    )
    parser.add_argument("--train", type=Path, required=True, help="RL training split folder.")
    parser.add_argument("--heldout", type=Path, default=Path("runs/table/heldout-s5000"))
    parser.add_argument("--heldout-seed", type=int, default=5000)
    parser.add_argument("--heldout-minutes", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--kl-coef", type=float, default=0.0)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument(
        "--seed", type=int, nargs="+", default=[0], help="RL seed(s); each runs every arm."
    )
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, help="Reply limit of the RL rollouts."
    )
    parser.add_argument(
        "--eval-max-new-tokens",
        type=int,
        default=96,
        help="Reply limit of the held-out questions (96, synthetic_table.py's, so the warm "
        "start's rows and the README's table agree).",
    )
    parser.add_argument("--parallel", type=int, default=2, help="RL arms trained at once.")
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=[arm_slug(name) for name in ARMS],
        default=[arm_slug(name) for name in PAPER_ARMS],
        help="Arms to train and ask (default: the paper's three).",
    )
    parser.add_argument("--workers", type=int, default=2, help="Evaluation processes.")
    parser.add_argument(
        "--freeze-vision", action="store_true", help="Train the arms with a fixed vision tower."
    )
    parser.add_argument(
        "--train-tokens",
        choices=get_args(RLSettings.model_fields["train_tokens"].annotation),
        default="reply",
        help="What every arm's policy gradient moves (`vmtr train rl --train-tokens`).",
    )
    parser.add_argument(
        "--kl-tokens",
        choices=get_args(RLSettings.model_fields["kl_tokens"].annotation),
        default="reply",
        help="Which sampled tokens every arm's KL term covers (`vmtr train rl --kl-tokens`; "
        "`untrained` with --train-tokens action|decision and --kl-coef > 0).",
    )
    parser.add_argument(
        "--loss-agg",
        choices=get_args(LossAgg),
        default="seq-mean-token-mean",
        help="How every arm's update weighs its tokens (`vmtr train rl --loss-agg`).",
    )
    parser.add_argument(
        "--skip-solved",
        type=float,
        default=0.0,
        help="The chance every arm passes over a question its last group solved "
        "(`vmtr train rl --skip-solved`).",
    )
    parser.add_argument(
        "--plot", type=Path, help="Also draw accuracy and needles shown against RL step (PNG)."
    )
    parser.add_argument(
        "--plot-only", action="store_true", help="Draw --plot from the runs so far and stop."
    )
    parser.add_argument(
        "--max-turns",
        type=int,
        choices=sorted(ASKED),
        default=3,
        help="Turn budget of the RL rollouts and of the arms' held-out runs (Video-MTR: 3).",
    )
    args = parser.parse_args()
    args.arms = [name for name in ARMS if arm_slug(name) in args.arms]
    if args.plot_only:
        if args.plot is None:
            parser.error("--plot-only needs --plot PNG")
        plot_curves(args, args.plot)
        return

    started = time.perf_counter()
    # training first: the arms' runs are the long part, and they resume if stopped
    checkpoints = train_arms(args)
    items = load_items(args.heldout, args.n, args.heldout_seed, args.heldout_minutes)
    tag = model_tag(args.start)
    kinds = item_kinds(items)
    warm, _ = evaluate_model(
        args.start,
        items,
        list(SETTINGS),
        args.heldout / f"results-{tag}",
        args.workers,
        args.eval_max_new_tokens,
    )
    warm_rows = {
        setting: summary_row(
            [r for r in warm if r["setting"] == setting], f"warm start, {setting}", kinds
        )
        for setting in SETTINGS
    }
    table = [chance_row(items), *warm_rows.values()]
    by_seed: dict[str, dict[int, dict[str, Any]]] = {}
    own, oracle = ASKED[args.max_turns]
    for (name, seed), checkpoint in checkpoints.items():
        rows, _ = evaluate_model(
            str(checkpoint),
            items,
            [own, oracle],
            checkpoint.parent / f"heldout-{checkpoint.name}",
            args.workers,
            args.eval_max_new_tokens,
        )
        suffix = f", seed {seed}" if len(args.seed) > 1 else ""
        for setting in (own, oracle):
            mine = [r for r in rows if r["setting"] == setting]
            table.append(summary_row(mine, f"{name}, {setting}{suffix}", kinds))
        by_seed.setdefault(name, {})[seed] = table[-2]
    print(
        f"Held-out synthetic set: {len(items)} items ({args.heldout}); warm start {args.start}; "
        f"RL: GRPO, {args.steps} steps x {args.prompts} prompts x {args.samples} samples, "
        f"lr {args.lr}, temperature {args.temperature}, "
        f"seed{'s' if len(args.seed) > 1 else ''} {', '.join(map(str, args.seed))}; "
        f"{time.perf_counter() - started:.0f} s.\n"
    )
    print(markdown(table))
    print()
    if args.plot is not None:
        plot_curves(args, args.plot)
    if len(args.seed) > 1:
        print(seeds_markdown(warm_rows[own], by_seed))
        print()
    for row in table:
        for line in (evidence_line(row), breakdown_line(row)):
            if line:
                print(line)
    for name, per_seed in by_seed.items():
        # each arm's best run by held-out accuracy, for a recipe that bundles one
        seed = max(per_seed, key=lambda s: per_seed[s]["accuracy"])
        best = args.out / f"best-{arm_slug(name)}-{args.heldout.name}.txt"
        best.write_text(f"{checkpoints[name, seed]}\n")


if __name__ == "__main__":
    main()
