"""The held-out check of a curriculum stage: the agent on items kept out of training, through
the evaluation runner (`vmtr.eval.runner`, as `vmtr eval` runs them), plus a direct check of
reading on the first reply."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recipes.tiny.curriculum.episodes import MULTI_TURN, reads_first_turn
from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings
from vmtr.eval.datasets import QAItem
from vmtr.eval.runner import EvalSettings, collect, run
from vmtr.models.vlm import VideoLM


def evaluate_items(
    lm: VideoLM,
    items: Sequence[QAItem],
    folder: Path,
    tag: str,
    settings: ProtocolSettings = MULTI_TURN,
    max_new_tokens: int = 96,
) -> dict[str, Any]:
    """Greedy accuracy, mean turns, frames seen, invalid replies and first-reply reading of the
    agent on ``items``. Rows go to ``folder`` under a run keyed by ``tag`` (name the weights,
    for example by step), so a check asked again of the same weights is read back, not rerun."""
    eval_settings = EvalSettings(
        benchmark="synthetic",
        model=ModelSettings(model=tag),
        frames=settings.first_turn_frames,
        protocol=settings,
        generation=GenerationSettings(temperature=0, max_new_tokens=max_new_tokens),
    )
    run(items, eval_settings, folder, lm)
    samples = {s["id"]: s for s in collect(folder, items, eval_settings.run_key())}
    rows = []
    for item in items:
        sample = samples.get(item.id, {})
        turns = sample.get("turns") or []
        rows.append(
            {
                "correct": bool(sample.get("correct")),
                "turns": len(turns),
                "frames": int(sample.get("n_frames") or 0),
                "invalid": sum(t.get("action") == "invalid" for t in turns),
                "reads": reads_first_turn(item, turns),
            }
        )
    read = [r["reads"] for r in rows if r["reads"] is not None]
    n = max(1, len(rows))
    return {
        "items": len(rows),
        "accuracy": sum(r["correct"] for r in rows) / n,
        "mean_turns": sum(r["turns"] for r in rows) / n,
        "mean_frames": sum(r["frames"] for r in rows) / n,
        "invalid_turns": sum(r["invalid"] for r in rows),
        "needle_shown_items": len(read),
        "reads_shown_needles": sum(read) / len(read) if read else None,
    }
