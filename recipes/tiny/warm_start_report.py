"""The warm start's held-out figures, one row per `vmtr eval` folder, and the random-retrieve bar.

    python recipes/tiny/warm_start_report.py --data HELDOUT NAME=EVAL_DIR [NAME=EVAL_DIR ...]

Each EVAL_DIR is the output folder of a `vmtr eval synthetic` run on HELDOUT (`results.json`
and `samples.jsonl`). A row gives accuracy, balanced accuracy, the share of items whose frames
showed the needle asked about (needles shown), mean turns, the share of episodes that
retrieved at least once (retrieve rate), invalid replies per item and the share of first replies that name exactly the
first-turn frames the border was on (border named).

The last row is what retrieves that never aim give: the scripted episodes the warm start was
trained on (`recipes.tiny.curriculum.episodes.plan_trajectory` with random aligned blocks, or random
first-turn-label ranges with ``--retrieve-block 0``), run on the same items without a model,
several draws each. A warm start that does not aim should
show the needles about as often as that row; more would mean it learned to aim.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

from vmtr import protocol
from vmtr.eval.datasets import load_video_mtr_json
from vmtr.tools.video import pool_timestamps, probe

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `recipes`

from recipes.tiny.curriculum import episodes  # noqa: E402

BORDER = re.compile(r"Border: frames? (\d+)(?: to (\d+))?")


def border_named(samples: list[dict[str, Any]], cues: dict[str, list[int]]) -> float | None:
    """Share of items whose first reply names exactly the first-turn frames that showed the
    border ("Border: frames 17 to 21."): reading where the border is, the evidence to aim from."""
    right = total = 0
    for s in samples:
        cue = cues.get(s["id"])
        if not cue or not s.get("turns"):
            continue
        first = s["turns"][0]
        inside = [f for f in first["frames"] if cue[0] <= f <= cue[1]]
        match = BORDER.search(first.get("raw") or "")
        total += 1
        if match and inside:
            low, high = int(match.group(1)), int(match.group(2) or match.group(1))
            right += (low, high) == (min(inside), max(inside))
    return right / total if total else None


def eval_row(name: str, folder: Path, cues: dict[str, list[int]]) -> dict[str, Any]:
    """The figures of one `vmtr eval` output folder."""
    results = json.loads((folder / "results.json").read_text())
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    ok = [s for s in samples if s.get("status") == "ok"]
    retrieved = [any(t.get("action") == "retrieve" for t in s.get("turns", [])) for s in ok]
    invalid = [sum(t.get("action") == "invalid" for t in s.get("turns", [])) for s in ok]
    return {
        "setting": name,
        "n": results["n"],
        "accuracy": results["accuracy"],
        "balanced_accuracy": (results.get("letters") or {}).get("balanced_accuracy"),
        "needles_shown": results["evidence"]["seen_rate"],
        "mean_turns": results["mean_turns"],
        "retrieve_rate": sum(retrieved) / max(1, len(ok)),
        "invalid_per_item": sum(invalid) / max(1, len(ok)),
        "border_named": border_named(ok, cues),
    }


def scripted_row(data: Path, draws: int, retrieve_again: float, block: int) -> dict[str, Any]:
    """Needles shown, turns and retrieve rate of the non-aiming scripted episodes."""
    items = load_video_mtr_json(data / "annotations.json")
    shown, turns, retrieved = [], [], []
    for index, item in enumerate(items):
        pool = pool_timestamps(
            probe(item.video),
            max_frames=episodes.MULTI_TURN.pool_size,
            max_fps=episodes.MULTI_TURN.pool_max_fps,
        )
        needed = {n["pool_index"] for n in episodes.needed_needles(item)}
        for draw in range(draws):
            traj = episodes.plan_trajectory(
                item,
                pool,
                episodes.MULTI_TURN,
                random.Random(index * 1_000 + draw),
                retrieve_block=block,
                retrieve_labels=block == 0,
                retrieve_again=retrieve_again,
            )
            shown.append(needed <= set(traj.frames))
            turns.append(len(traj.actions))
            retrieved.append(any(isinstance(a, protocol.Retrieve) for a in traj.actions))
    n = len(shown)
    ranges = f"{block}-frame blocks" if block else "first-turn label ranges"
    return {
        "setting": f"scripted, random {ranges} ({draws} draws per item)",
        "n": len(items),
        "accuracy": None,
        "balanced_accuracy": None,
        "needles_shown": sum(shown) / n,
        "mean_turns": sum(turns) / n,
        "retrieve_rate": sum(retrieved) / n,
        "invalid_per_item": 0.0,
        "border_named": None,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""

    def pct(value: float | None) -> str:
        return "–" if value is None else f"{value:.1%}"

    lines = [
        "| Setting | n | Accuracy | Balanced | Needles shown | Mean turns | Retrieve rate "
        "| Invalid / item | Border named |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['n']} | {pct(r['accuracy'])} | {pct(r['balanced_accuracy'])} "
            f"| {pct(r['needles_shown'])} | {r['mean_turns']:.2f} | {pct(r['retrieve_rate'])} "
            f"| {r['invalid_per_item']:.2f} | {pct(r.get('border_named'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="The held-out split.")
    parser.add_argument("runs", nargs="*", help="NAME=EVAL_DIR of `vmtr eval synthetic` runs.")
    parser.add_argument("--draws", type=int, default=10, help="Scripted draws per item.")
    parser.add_argument("--retrieve-again", type=float, default=0.5)
    parser.add_argument(
        "--retrieve-block", type=int, default=8, help="Block width (0: first-turn label ranges)."
    )
    parser.add_argument("--json-out", type=Path, help="Also write the rows here.")
    args = parser.parse_args()
    items = load_video_mtr_json(args.data / "annotations.json")
    cues = {item.id: item.extra.get("cue_pool_indices") for item in items}
    rows = []
    for spec in args.runs:
        name, _, folder = spec.rpartition("=")
        rows.append(eval_row(name, Path(folder), cues))
    rows.append(scripted_row(args.data, args.draws, args.retrieve_again, args.retrieve_block))
    print(markdown(rows))
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
