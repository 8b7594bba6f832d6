"""How much of an RL run's rollouts taught anything? GRPO groups by outcome, and how outcomes
persist from one visit of a question to the next.

    python recipes/tiny/group_outcomes.py RUN_DIR [RUN_DIR ...] [--window 50] [--after 50]

Reads each `vmtr train rl` run's ``rollouts.jsonl``. A group (one question's samples in one step)
is **varied** when its episodes' rewards differ (only then does GRPO have an advantage), **flat
right** or **flat wrong** when they all scored the same. Per window of steps: the share of each,
the share of groups that were flat although their episodes took different numbers of turns (a
tie the reward makes, e.g. a first retrieve that showed the needle beside a miss a second retrieve
made good, under the released code's reward), how many distinct first two actions (with the
frames they showed) a group's samples took, and how many distinct first retrieves (by the frames
they showed; a group whose samples all answered at once has none): GRPO can only compare first
aims a group actually tried. Only sampled groups count: a `--branch` run's
continuations (episodes marked ``replayed``) and a `--branch-first` run's branches (``prefixed``)
are left out.
Then, over the visits after step ``--after``: given a question's group was flat or varied, what
its next group was. That persistence is what `vmtr train rl --skip-solved` bets on.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from vmtr.policies.prompt_picker import TIE

OUTCOMES = ("varied", "flat right", "flat wrong")


def groups_of(rollouts: Path) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """The run's sampled episodes by (step, group); branch continuations are left out."""
    groups: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for line in rollouts.read_text().splitlines():
        if line.strip():
            episode = json.loads(line)
            if not (episode.get("replayed") or episode.get("prefixed")):
                groups[(episode["step"], episode["group"])].append(episode)
    return groups


def outcome(episodes: list[dict[str, Any]]) -> str:
    """Varied, flat right or flat wrong, with the tie `vmtr train rl --skip-solved` uses."""
    totals = [sum(e["reward"]) for e in episodes]
    if max(totals) - min(totals) >= TIE:
        return "varied"
    return "flat right" if episodes[0]["correct"] else "flat wrong"


def opening(episode: dict[str, Any]) -> tuple[Any, ...]:
    """The first two actions and the frames each showed."""
    return tuple((t["action"], tuple(t["frames"])) for t in episode["turns"][:2])


def first_retrieve(episode: dict[str, Any]) -> tuple[int, ...] | None:
    """The frames the episode's first retrieve showed, if its first action retrieved."""
    turns = episode["turns"]
    if len(turns) < 2 or turns[0]["action"] != "retrieve":
        return None
    return tuple(turns[1]["frames"])


def window_table(groups: dict[tuple[int, int], list[dict[str, Any]]], window: int) -> list[str]:
    rows: dict[int, Counter] = defaultdict(Counter)
    for (step, _), episodes in groups.items():
        row = rows[(step - 1) // window]
        row["groups"] += 1
        result = outcome(episodes)
        row[result] += 1
        if result != "varied" and len({len(e["turns"]) for e in episodes}) > 1:
            row["flat, turns differ"] += 1
        row["openings"] += len({opening(e) for e in episodes})
        row["first retrieves"] += len({first_retrieve(e) for e in episodes} - {None})
    lines = [
        "| steps | groups | varied | flat right | flat wrong | flat, turns differ "
        "| distinct openings a group | distinct first retrieves a group |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w, row in sorted(rows.items()):
        n = row["groups"]
        shares = " | ".join(f"{row[o] / n:.0%}" for o in (*OUTCOMES, "flat, turns differ"))
        lines.append(
            f"| {w * window + 1}-{(w + 1) * window} | {n} | {shares} | {row['openings'] / n:.2f} "
            f"| {row['first retrieves'] / n:.2f} |"
        )
    return lines


def persistence_table(groups: dict[tuple[int, int], list[dict[str, Any]]], after: int) -> list[str]:
    visits: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for (step, _), episodes in sorted(groups.items()):
        visits[episodes[0]["item"]].append((step, outcome(episodes)))
    moves: Counter = Counter()
    for history in visits.values():
        for (step, before), (_, then) in zip(history, history[1:], strict=False):
            if step > after:
                moves[(before, then)] += 1
    lines = [
        "| this visit | next visits | then varied | then flat right | then flat wrong |",
        "|---|---:|---:|---:|---:|",
    ]
    for before in OUTCOMES:
        n = sum(moves[(before, then)] for then in OUTCOMES)
        shares = " | ".join(f"{moves[(before, then)] / n:.0%}" if n else "–" for then in OUTCOMES)
        lines.append(f"| {before} | {n} | {shares} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--after", type=int, default=50, help="Persistence counts visits after it.")
    args = parser.parse_args()
    for run in args.runs:
        groups = groups_of(run / "rollouts.jsonl")
        print(f"\n{run}\n")
        print("\n".join(window_table(groups, args.window)))
        print()
        print("\n".join(persistence_table(groups, args.after)))


if __name__ == "__main__":
    main()
