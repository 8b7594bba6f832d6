"""How often can aiming from the named border show the needle? The ceiling of fixed aiming rules.

    python recipes/tiny/aim_ceiling.py --train runs/colour/data/train-s1000 \\
        --heldout runs/colour/data/heldout-s5000 [runs/colour/data/heldout-s7000 ...]

A colour item's first turn shows 16 uniform pool frames; those inside the border (the cue) are
what a reply can name ("Border: frames 21 to 25"). A retrieve of ``start..end`` shows 8 frames
spread over the range (`vmtr.tools.spread.uniform_indices`), so a range wider than 8 frames has
gaps a one-frame needle can fall into. This script fits, on the training split, the best rule
"retrieve (first named + a, last named + b)" and then the best second retrieve for the items the
first one missed, and reports how often each shows the needle on the held-out sets (a needle on a
first-turn frame counts as shown). It says what an RL policy that aims from its own border text
can reach with one retrieve and with two -- the bar the RL arms are measured against.

The same for a policy whose retrieves are aligned 8-frame blocks (``[8k, 8k+7]``, all eight
frames shown), the repertoire the un-aimed warm start was trained on (`recipes/tiny/unaimed_start.sh`,
``--retrieve-block 8``): rules "the block holding the first (or last) named frame, shifted by d";
for 8-frame windows from a named frame + d; and for ranges between first-turn labels (the label
before the first named frame, or that frame, to the last named frame or the label after it), whose
numbers a reply can copy from its prompt.

Last, the curriculum's scripted aim (`--retrieve-aim 1`, `recipes.tiny.curriculum.episodes.
aimed_range`, as its episodes follow it): what a policy that imitates that script can show, the
bar `recipes/tiny/aim_imitation.sh` measures a student against.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vmtr.tools.spread import uniform_indices

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `recipes`

from recipes.tiny.curriculum.episodes import aimed_range, border_frames  # noqa: E402

FIRST_TURN = uniform_indices(0, 63, 16)
"""The protocol's first-turn frames on the synthetic 64-frame pool."""

OFFSETS = [(a, b) for a in range(-8, 5) for b in range(-4, 9)]
"""Candidate rules: range start relative to the first named frame, end to the last."""

BLOCK = 8
BLOCK_RULES = [(end, d) for end in ("first", "last") for d in (-1, 0, 1)]
"""Candidate block rules: which named frame's block, shifted by d blocks."""

WINDOW_RULES = [(f"window-{end}", d) for end in ("first", "last") for d in range(-8, 5)]
"""Candidate window rules: the 8 frames from a named frame + d (all shown)."""

LABEL_RULES = [("labels", a, b) for a in (-1, 0) for b in (0, 1)]
"""Candidate label rules: from the first-turn label a places before (or at) the first named
frame to the one b places after (or at) the last, 8 frames spread over it: every number copied
from the prompt."""


def named_border(item: dict[str, Any]) -> tuple[int, int]:
    """The first and last first-turn frames inside the item's cue (what a right reply names)."""
    first, last = item["cue_pool_indices"]
    inside = [f for f in FIRST_TURN if first <= f <= last]
    return inside[0], inside[-1]


def retrieved(item: dict[str, Any], rule: tuple[Any, int]) -> set[int]:
    """The frames a rule's retrieve shows: a range of offsets from the named border (8 frames
    spread over it), or an aligned block."""
    first, last = named_border(item)
    if rule[0] == "labels":
        start = FIRST_TURN[max(0, FIRST_TURN.index(first) + rule[1])]
        end = FIRST_TURN[min(len(FIRST_TURN) - 1, FIRST_TURN.index(last) + rule[2])]
        return set(uniform_indices(start, end, 8))
    if isinstance(rule[0], str) and rule[0].startswith("window-"):
        start = min(63 - 7, max(0, (first if rule[0] == "window-first" else last) + rule[1]))
        return set(range(start, start + 8))
    if isinstance(rule[0], str):
        k = (first if rule[0] == "first" else last) // BLOCK + rule[1]
        return set(range(k * BLOCK, (k + 1) * BLOCK))
    a, b = rule
    return set(uniform_indices(max(0, first + a), min(63, last + b), 8))


def shown(item: dict[str, Any], rules: list[tuple[Any, int]]) -> bool:
    """Whether turn 1 or one of the retrieves made by ``rules`` (in turn) shows a needle."""
    needles = set(item["needle_pool_indices"])
    if needles & set(FIRST_TURN):
        return True
    return any(needles & retrieved(item, rule) for rule in rules)


def rate(items: list[dict[str, Any]], rules: list[tuple[Any, int]]) -> float:
    return sum(shown(item, rules) for item in items) / len(items)


def scripted_shows(item: dict[str, Any], retrieves: int) -> bool:
    """Whether the curriculum's scripted aim shows a needle within ``retrieves`` retrieves (its
    second aims from every border frame seen by then, as `plan_trajectory` does)."""
    needles = set(item["needle_pool_indices"])
    seen = set(FIRST_TURN)
    for done in range(retrieves):
        if needles & seen:
            break
        target = aimed_range(FIRST_TURN, border_frames(item["cue_pool_indices"], seen), done)
        if target is None:
            break
        seen |= set(uniform_indices(target[0], target[1], 8))
    return bool(needles & seen)


def load(folder: Path) -> list[dict[str, Any]]:
    items = json.loads((folder / "annotations.json").read_text())
    return [item for item in items if item.get("kind") == "colour"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="Split the rules are fitted on.")
    parser.add_argument("--heldout", type=Path, nargs="+", required=True)
    args = parser.parse_args()
    train = load(args.train)
    heldout = [load(folder) for folder in args.heldout]
    names = " | ".join(folder.name for folder in args.heldout)
    print(f"| retrieves | rule | train | {names} |")
    print("|---|---|---:|" + "---:|" * len(args.heldout))
    kinds = (
        ("range", OFFSETS),
        ("block", BLOCK_RULES),
        ("window", WINDOW_RULES),
        ("labels", LABEL_RULES),
    )
    for kind, candidates in kinds:
        rules: list[tuple[Any, int]] = []
        for k in (1, 2):
            best = max(candidates, key=lambda rule: rate(train, [*rules, rule]))
            rules.append(best)
            cells = " | ".join(f"{rate(items, rules):.1%}" for items in heldout)
            print(f"| {k} | {kind} {best} | {rate(train, rules):.1%} | {cells} |")
    for k in (1, 2):
        cells = " | ".join(
            f"{sum(scripted_shows(item, k) for item in items) / len(items):.1%}"
            for items in [train, *heldout]
        )
        print(f"| {k} | scripted aim (--retrieve-aim 1) | {cells} |")


if __name__ == "__main__":
    main()
