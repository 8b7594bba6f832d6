"""Is an RL run learning to aim? Its first retrieves against the border its own replies named.

    python recipes/tiny/aim_probe.py RUN_DIR [RUN_DIR ...] --data runs/colour/data/train-s1000 \\
        [--window 10] [--second] [--sides] [--branches]

Reads each `vmtr train rl` run's ``rollouts.jsonl`` (every sampled episode of every step) and,
per window of steps, over the episodes whose first reply retrieved:

- **copies border**: the retrieved range holds the first frame the reply named as the border
  ("Border: frames 17 to 21." then "<retrieve>16, 23</retrieve>"), the rule that aims;
- **border named right**: that named frame is inside the item's real border (the cue);
- **needle in range**: the first retrieve's range holds the needle the question asks about;
- **first shows it**: the first retrieve's frames (8 spread over the range) show that needle;
- **again after a miss**: of the episodes whose first retrieve showed no needle, the share that
  retrieved a second time (the only way to the needle then), and **second shows it**: the share
  of those second retrieves that showed it;
- **return after a hit / after a miss**: the mean episode reward when the first retrieve showed
  the needle and when it did not, and **right after a miss**: how often a miss still ended in
  the right answer. Their gap is what the reward pays for aiming the first retrieve.

With ``--second``, a second table splits the second retrieves that followed a first retrieve
showing no needle by where they went (the same range, next to or over the first, elsewhere;
`miss_anatomy.py` does the same for held-out runs), with how often each showed the needle.

Continuations a branching run (`--branch`) replays from an episode are left out of both tables;
``--second --branches`` adds the second table over those continuations alone.

With ``--sides``, over the whole run, the second retrieves after a miss split by where the needle
lay against the first range (before it, inside it but between its spread frames, after it) and
which way the second range went, with how often it held and showed the needle: whether a policy
that misses searches on the right side, and whether its first range was simply too wide.

A run that learns where to look raises "copies border" and, as far as its naming is right,
"needle in range"; random blocks hold the needle in about one first retrieve in eight.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `recipes`

from recipes.tiny.miss_anatomy import SECOND_PLACES, where_second  # noqa: E402

BORDER = re.compile(r"Border: frames? (\d+)")
RANGE = re.compile(r"<retrieve>\s*(\d+)\s*,\s*(\d+)\s*</retrieve>")


def sampled_episodes(rollouts: Path, branches: bool = False) -> list[dict[str, Any]]:
    """The run's sampled episodes, without the continuations `--branch` replays from one of them
    or the episodes `--branch-first` samples after a replayed first-reply prefix (so a branching
    run's figures count the same episodes as any other run's); with ``branches``, `--branch`'s
    continuations alone."""
    episodes = [json.loads(line) for line in rollouts.read_text().splitlines() if line.strip()]
    if branches:
        return [e for e in episodes if e.get("replayed")]
    return [e for e in episodes if not (e.get("replayed") or e.get("prefixed"))]


def named_and_range(reply: str) -> tuple[int, int, int] | None:
    """(first border frame named, range start, range end) of a reply that names a border and
    retrieves a range; None otherwise."""
    border, span = BORDER.search(reply), RANGE.search(reply)
    if border is None or span is None:
        return None
    return int(border.group(1)), int(span.group(1)), int(span.group(2))


def first_retrieve(episode: dict[str, Any]) -> tuple[int, int, int] | None:
    """`named_and_range` of an episode's first reply, if that reply retrieved."""
    first = episode["turns"][0]
    return named_and_range(first["reply"]) if first["action"] == "retrieve" else None


def window_rows(
    rollouts: Path, items: dict[str, dict[str, Any]], window: int
) -> list[dict[str, Any]]:
    """The shares per window of ``window`` steps."""
    counts: dict[int, list[int]] = {}
    for episode in sampled_episodes(rollouts):
        got = first_retrieve(episode)
        item = items.get(episode["item"])
        if got is None or item is None:
            continue
        named, start, end = got
        cue_first, cue_last = item["cue_pool_indices"]
        needles = set(item["needle_pool_indices"])
        turns = episode["turns"]
        row = counts.setdefault((episode["step"] - 1) // window, [0] * 11)
        row[0] += 1
        row[1] += start <= named <= end
        row[2] += cue_first <= named <= cue_last
        row[3] += all(start <= k <= end for k in needles)
        # turn k's "frames" are the frames that turn's reply saw, so turn 2's are the retrieve's
        first_shows = len(turns) > 1 and bool(needles & set(turns[1]["frames"]))
        row[4] += first_shows
        returned = float(sum(episode["reward"]))
        if first_shows:
            row[8] += returned
        else:
            row[9] += returned
            row[10] += bool(episode["correct"])
        if len(turns) > 1 and not first_shows:
            row[5] += 1
            if turns[1]["action"] == "retrieve" and len(turns) > 2:
                row[6] += 1
                row[7] += bool(needles & set(turns[2]["frames"]))
    return [
        {
            "steps": f"{w * window + 1}-{(w + 1) * window}",
            "retrieves": n,
            "copies_border": copied / n,
            "border_named_right": right / n,
            "needle_in_range": hit / n,
            "first_shows": shows / n,
            "again_after_miss": again / missed if missed else None,
            "second_shows": second / again if again else None,
            "return_after_hit": hit_return / shows if shows else None,
            "return_after_miss": miss_return / (n - shows) if n > shows else None,
            "right_after_miss": miss_right / (n - shows) if n > shows else None,
        }
        for w, (
            n,
            copied,
            right,
            hit,
            shows,
            missed,
            again,
            second,
            hit_return,
            miss_return,
            miss_right,
        ) in sorted(counts.items())
    ]


@dataclass(frozen=True)
class SecondAfterMiss:
    """A second retrieve that followed a first retrieve whose frames showed no needle."""

    step: int
    first: tuple[int, int]  # the first retrieve's range
    second: tuple[int, int]  # the second's
    needle: int  # the first needle's pool index
    shown: bool  # whether the second retrieve's frames showed a needle


def seconds_after_a_miss(
    rollouts: Path, items: dict[str, dict[str, Any]], branches: bool = False
) -> Iterator[SecondAfterMiss]:
    """The run's episodes (``branches``: its branches) whose first two replies retrieved ranges
    and whose first retrieve showed no needle, as `SecondAfterMiss` records."""
    for episode in sampled_episodes(rollouts, branches):
        turns = episode["turns"]
        item = items.get(episode["item"])
        if item is None or len(turns) < 3 or turns[1]["action"] != "retrieve":
            continue
        needles = set(item["needle_pool_indices"])
        first, second = RANGE.search(turns[0]["reply"]), RANGE.search(turns[1]["reply"])
        if (
            first is None
            or second is None
            or needles & set(turns[0]["frames"] + turns[1]["frames"])
        ):
            continue
        yield SecondAfterMiss(
            step=episode["step"],
            first=(int(first.group(1)), int(first.group(2))),
            second=(int(second.group(1)), int(second.group(2))),
            needle=min(needles),
            shown=bool(needles & set(turns[2]["frames"])),
        )


def second_rows(
    rollouts: Path, items: dict[str, dict[str, Any]], window: int, branches: bool = False
) -> list[dict[str, Any]]:
    """Per window, the second retrieves that followed a first retrieve whose frames showed no
    needle: how many, and per place (`miss_anatomy.where_second`) their share and how often
    they showed the needle. ``branches``: over a branching run's continuations instead."""
    counts: dict[int, dict[str, list[int]]] = {}
    for miss in seconds_after_a_miss(rollouts, items, branches):
        place = where_second(list(miss.first), list(miss.second))
        row = counts.setdefault((miss.step - 1) // window, {p: [0, 0] for p in SECOND_PLACES})
        row[place][0] += 1
        row[place][1] += miss.shown
    rows = []
    for w, places in sorted(counts.items()):
        n = sum(count for count, _ in places.values())
        rows.append(
            {"steps": f"{w * window + 1}-{(w + 1) * window}", "seconds": n}
            | {
                p: (count / n, shown / count if count else None)
                for p, (count, shown) in places.items()
            }
        )
    return rows


NEEDLE_SIDES = ("before", "inside", "after")
"""Where the needle lay against a first retrieve's range that did not show it."""

SECOND_MOVES = ("earlier", "within", "later", "both ways")
"""Which way a second retrieve's range went from the first's: it starts earlier and ends no
later; it lies inside the first; it ends later and starts no earlier; it starts earlier and ends
later."""


def side_of(value: int, start: int, end: int) -> str:
    """`NEEDLE_SIDES` of ``value`` against the range ``start``-``end``."""
    return NEEDLE_SIDES[0] if value < start else NEEDLE_SIDES[2] if value > end else NEEDLE_SIDES[1]


def move_of(first: tuple[int, int], second: tuple[int, int]) -> str:
    """`SECOND_MOVES` of the range ``second`` against ``first``."""
    earlier, later = second[0] < first[0], second[1] > first[1]
    return SECOND_MOVES[3 if earlier and later else 0 if earlier else 2 if later else 1]


def side_rows(
    rollouts: Path, items: dict[str, dict[str, Any]], branches: bool = False
) -> dict[tuple[str, str], list[int]]:
    """Over the second retrieves that followed a first retrieve whose frames showed no needle
    (``branches``: a branching run's continuations): per (where the needle lay against the first
    range, which way the second went), [how many, how many ranges held it, how many showed it].
    A needle inside the first range was missed by its spread frames: the range was too wide."""
    counts: dict[tuple[str, str], list[int]] = {}
    for miss in seconds_after_a_miss(rollouts, items, branches):
        a, b = miss.first, miss.second
        row = counts.setdefault((side_of(miss.needle, *a), move_of(a, b)), [0, 0, 0])
        row[0] += 1
        row[1] += b[0] <= miss.needle <= b[1]
        row[2] += miss.shown
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, required=True, help="The RL training split.")
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument(
        "--second",
        action="store_true",
        help="Also where second retrieves went after a first that showed nothing.",
    )
    parser.add_argument(
        "--sides",
        action="store_true",
        help="Also, over the whole run, where the needle lay against a first retrieve that missed "
        "it and which way the second went (with --branches, the continuations too).",
    )
    parser.add_argument(
        "--branches",
        action="store_true",
        help="With --second: one more such table over the continuations a --branch run replayed.",
    )
    args = parser.parse_args()
    annotations = json.loads((args.data / "annotations.json").read_text())
    items = {a["problem_id"]: a for a in annotations}
    for run in args.runs:
        print(f"\n{run}")
        print(
            "| steps | first retrieves | copies border | border named right | needle in range "
            "| first shows it | again after a miss | second shows it | return after a hit "
            "| return after a miss | right after a miss |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in window_rows(run / "rollouts.jsonl", items, args.window):
            print(
                f"| {r['steps']} | {r['retrieves']} | {r['copies_border']:.0%} "
                f"| {r['border_named_right']:.0%} | {r['needle_in_range']:.0%} "
                f"| {r['first_shows']:.0%} | {share(r['again_after_miss'])} "
                f"| {share(r['second_shows'])} | {number(r['return_after_hit'])} "
                f"| {number(r['return_after_miss'])} | {share(r['right_after_miss'])} |"
            )
        tables = [False, True] if args.branches else [False]
        for branches in tables if args.second else []:
            what = "branches' second retrieves" if branches else "second retrieves after a miss"
            print(
                f"\n| steps | {what} | "
                + " | ".join(f"{p} (shows it)" for p in SECOND_PLACES)
                + " |"
            )
            print("|---|---:|" + "---:|" * len(SECOND_PLACES))
            for r in second_rows(run / "rollouts.jsonl", items, args.window, branches):
                cells = [f"{share(r[p][0])} ({share(r[p][1])})" for p in SECOND_PLACES]
                print(f"| {r['steps']} | {r['seconds']} | " + " | ".join(cells) + " |")
        for branches in tables if args.sides else []:
            what = "branches" if branches else "sampled episodes"
            print(
                f"\n| needle vs first range ({what}) | second went | count | holds it | shows it |"
            )
            print("|---|---|---:|---:|---:|")
            counts = side_rows(run / "rollouts.jsonl", items, branches)
            for side in NEEDLE_SIDES:
                for move in SECOND_MOVES:
                    n, held, shown = counts.get((side, move), [0, 0, 0])
                    if n:
                        print(f"| {side} | {move} | {n} | {held / n:.0%} | {shown / n:.0%} |")


def share(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
