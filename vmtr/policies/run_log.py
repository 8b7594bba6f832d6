"""What an RL run writes as it goes: one JSON line per episode (``rollouts.jsonl``), the trimming
that keeps a resumed run's logs free of the steps it repeats, and the metrics plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vmtr.policies.rollout import Trajectory


def rollout_record(step: int, traj: Trajectory) -> dict[str, Any]:
    """An episode as `rollouts.jsonl` keeps it (no tensors)."""
    reward = traj.reward
    return {
        "step": step,
        "item": traj.item_id,
        "group": traj.group,
        "replayed": traj.replayed,
        "prefixed": traj.prefixed,
        "answer": traj.answer,
        "correct": traj.correct,
        "turns": [
            {"action": t["action"], "reply": t["raw"], "frames": t["frames"]} for t in traj.turns
        ],
        "reward": reward.per_turn if reward else None,
        "reward_answer": reward.answer if reward else None,
        "reward_format": reward.format if reward else None,
        "reward_frames": reward.frames if reward else None,
        "reward_bonus": reward.bonus if reward else None,
    }


def trim_log(path: Path, step: int) -> None:
    """Drop the JSONL rows of steps after ``step`` (a run that stopped between checkpoints
    logged steps the resumed run repeats); the file is replaced whole, never left half written."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) == len(lines):
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def plot_metrics(log_path: Path, png: Path) -> None:
    """Reward, accuracy, turns and KL curves from the JSONL log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    keys = ["reward", "accuracy", "turns", "retrieve_rate", "relevant_seen", "kl", "entropy"]
    if any(r.get("branch_episodes") for r in rows):  # `--branch`: how the searches after a miss do
        keys += ["branch_relevant_seen", "branch_accuracy"]
    cols = 3
    rows_n = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(12, 3 * rows_n))
    steps = [r["step"] for r in rows]
    for ax, key in zip(axes.flat, keys, strict=False):
        values = [r.get(key) for r in rows]
        ax.plot(steps, [float("nan") if v is None else v for v in values])
        ax.set_title(key)
        ax.set_xlabel("step")
    for ax in axes.flat[len(keys) :]:  # the grid's spare panels
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
