"""Keep the sampled episodes the turn-decayed gated reward ranks highest, for a round of
rejection-sampling fine-tuning (`vmtr train sft --episodes`).

    python recipes/tiny/select_first_hits.py SAMPLES_JSONL OUT_JSONL

SAMPLES_JSONL is a `vmtr eval synthetic` run's ``samples.jsonl`` on training questions, sampled
(``--temperature 1.0``), one episode a question. An episode is kept when it answered right having
seen the evidence within two turns: the first turn's frames showed the needle, or the first
retrieve did. Those are the episodes that score highest under the gated reward once a turn costs
more than its format term (`vmtr train rl --turn-decay 0.2`: 1.5 against 1.4 for a miss made
good by a second retrieve), so fine-tuning on them imitates the policy's own first aims that hit,
never a scripted one. Right guesses and misses made good are left out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def first_hit(sample: dict[str, Any]) -> bool:
    """Right, with the evidence seen, within two turns."""
    return bool(sample.get("correct") and sample.get("saw_evidence")) and sample["n_turns"] <= 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    lines = args.samples.read_text().splitlines()
    kept = [line for line in lines if first_hit(json.loads(line))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(line + "\n" for line in kept))
    print(f"kept {len(kept)} of {len(lines)} episodes")


if __name__ == "__main__":
    main()
