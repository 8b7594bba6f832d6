"""Where a colour policy's held-out misses come from: the turn that should have shown the needle.

    python recipes/tiny/miss_anatomy.py --data HELDOUT NAME=EVAL_DIR [NAME=EVAL_DIR ...]

Each EVAL_DIR is a greedy `vmtr eval synthetic` run on HELDOUT (its ``samples.jsonl``). Every
question falls in one row, by the first turn whose frames showed the needle asked about:

- **turn 1**: the 16 uniform frames already did;
- **first retrieve** / **second retrieve**: the retrieve that showed it;
- **never, answered without retrieving** / **never, one retrieve** / **never, two retrieves**: the
  episode ended with the needle unseen (an answer then is a guess).

Beside each share, the accuracy of that row and the share of its questions whose first reply
named the border's first-turn frames exactly (`warm_start_report.py`'s "border named"): a policy
that names the border right and still never shows the needle is missing the aim, not the reading.
Then what the retrieves did: how many first retrieves held the last border frame named (the cue
the best fixed rules aim from, `aim_ceiling.py`), and where the second retrieves went after a
first that showed nothing -- the same range again, next to or over the first (within 8 frames of
it: the search that completes a near miss), or elsewhere -- each with how often it showed the
needle. `aim_probe.py --second` gives the same split over an RL run's sampled rollouts.

Last, the first retrieves of questions whose first turn had not shown the needle, split by the
range's width, with how often the range held the needle and how often its frames showed it: a
retrieve shows at most 8 frames spread over its range, so a range wider than 8 that holds a
one-frame needle shows it only when a spread frame lands on it, and a narrow one shows whatever
it holds but must be placed well.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

BORDER = re.compile(r"Border: frames? (\d+)(?: to (\d+))?")

SECOND_PLACES = ("same range", "next to or over the first", "elsewhere")
"""Where a second retrieve can go, relative to the first (`where_second`)."""

ROWS = (
    "turn 1",
    "first retrieve",
    "second retrieve",
    "never, answered without retrieving",
    "never, one retrieve",
    "never, two retrieves",
)


def named(reply: str) -> tuple[int, int] | None:
    """The first and last border frames a reply names ("Border: frames 21 to 25.")."""
    match = BORDER.search(reply)
    if match is None:
        return None
    first = int(match.group(1))
    return first, int(match.group(2)) if match.group(2) else first


def border_on_first_turn(item: dict[str, Any], frames: list[int]) -> tuple[int, int] | None:
    """The first and last of the first turn's frames that fall on the border."""
    low, high = item["cue_pool_indices"]
    inside = [f for f in frames if low <= f <= high]
    return (inside[0], inside[-1]) if inside else None


WIDTHS = ((1, 8, "8 or fewer"), (9, 12, "9-12"), (13, 16, "13-16"), (17, 10**6, "over 16"))
"""Bands of a first retrieve's width in pool frames (`first_by_width`)."""


def first_by_width(
    samples: list[dict[str, Any]], items: dict[str, dict[str, Any]]
) -> dict[str, list[int]]:
    """Per width band: first retrieves after a first turn that showed no needle, how many held
    the needle asked about in their range, how many showed it."""
    bands = {label: [0, 0, 0] for _, _, label in WIDTHS}
    for sample in samples:
        needles = set(items[sample["id"]]["needle_pool_indices"])
        turns = sample["turns"]
        span = turns[0].get("retrieve")
        if not span or len(turns) < 2 or needles & set(turns[0]["frames"]):
            continue
        width = span[1] - span[0] + 1
        band = next(label for low, high, label in WIDTHS if low <= width <= high)
        bands[band][0] += 1
        bands[band][1] += any(span[0] <= n <= span[1] for n in needles)
        bands[band][2] += bool(needles & set(turns[1]["frames"]))
    return bands


def where_second(first: list[int], second: list[int]) -> str:
    """Where a second retrieve went relative to the first: SECOND_PLACES."""
    if list(first) == list(second):
        return SECOND_PLACES[0]
    if second[0] <= first[1] + 8 and second[1] >= first[0] - 8:
        return SECOND_PLACES[1]
    return SECOND_PLACES[2]


def classify(sample: dict[str, Any], item: dict[str, Any]) -> str:
    """The row of one question (see the module docstring)."""
    needles = set(item["needle_pool_indices"])
    turns = sample["turns"]
    for k, turn in enumerate(turns[:3]):
        if needles & set(turn["frames"]):
            return ROWS[k]
    retrieves = sum(turn["action"] == "retrieve" for turn in turns)
    return ROWS[3 + min(retrieves, 2)]


def anatomy(samples: list[dict[str, Any]], items: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per row: questions, right answers, border named right; the share of first retrieves that
    held the last border frame named; per place of a second retrieve after a miss: how many went
    there and how many of those showed the needle."""
    rows = {row: [0, 0, 0] for row in ROWS}
    firsts = held_cue = 0
    second = {place: [0, 0] for place in SECOND_PLACES}
    for sample in samples:
        item = items[sample["id"]]
        needles = set(item["needle_pool_indices"])
        turns = sample["turns"]
        row = classify(sample, item)
        said = named(turns[0].get("raw") or "")
        rows[row][0] += 1
        rows[row][1] += bool(sample["correct"])
        rows[row][2] += said is not None and said == border_on_first_turn(item, turns[0]["frames"])
        span = turns[0].get("retrieve")
        if said is None or not span:
            continue
        firsts += 1
        held_cue += span[0] <= said[1] <= span[1]
        if row in (ROWS[2], ROWS[5]) and len(turns) > 2 and turns[1].get("retrieve"):
            place = where_second(span, turns[1]["retrieve"])
            second[place][0] += 1
            second[place][1] += bool(needles & set(turns[2]["frames"]))
    return {
        "n": len(samples),
        "rows": rows,
        "first_holds_named": held_cue / firsts if firsts else None,
        "second": second,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="The held-out split evaluated.")
    parser.add_argument("runs", nargs="+", help="NAME=EVAL_DIR")
    args = parser.parse_args()
    annotations = json.loads((args.data / "annotations.json").read_text())
    items = {a["problem_id"]: a for a in annotations}
    for spec in args.runs:
        name, _, folder = spec.partition("=")
        lines = (Path(folder) / "samples.jsonl").read_text().splitlines()
        samples = [json.loads(line) for line in lines]
        result = anatomy(samples, items)
        n = result["n"]
        print(f"\n{name}\n")
        print("| Needle first shown | Questions | Right | Border named right |")
        print("|---|---:|---:|---:|")
        for row, (count, right, named_right) in result["rows"].items():
            right_share = f"{right / count:.0%}" if count else "–"
            named_share = f"{named_right / count:.0%}" if count else "–"
            print(f"| {row} | {count / n:.1%} | {right_share} | {named_share} |")
        if result["first_holds_named"] is not None:
            print(
                f"\nfirst retrieves holding the last border frame named: "
                f"{result['first_holds_named']:.0%}"
            )
        after = sum(count for count, _ in result["second"].values())
        if after:
            print(f"second retrieves after a first that showed nothing: {after}")
            for place, (count, shown) in result["second"].items():
                if count:
                    print(f"- {place}: {count / after:.0%}, showing the needle {shown / count:.0%}")
        bands = first_by_width(samples, items)
        firsts = sum(count for count, _, _ in bands.values())
        if firsts:
            print("\n| First retrieve's width | Share | Holds the needle | Shows it |")
            print("|---|---:|---:|---:|")
            for band, (count, held, shown) in bands.items():
                if count:
                    print(
                        f"| {band} | {count / firsts:.0%} | {held / count:.0%} | {shown / count:.0%} |"
                    )


if __name__ == "__main__":
    main()
