"""Rejection-sampling selection: only right answers that saw the evidence within two turns."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from recipes.tiny import select_first_hits


def episode(correct: bool, seen: bool, turns: int) -> dict:
    return {
        "id": f"{correct}-{seen}-{turns}",
        "correct": correct,
        "saw_evidence": seen,
        "n_turns": turns,
    }


def test_keeps_right_answers_that_saw_the_needle_by_the_first_retrieve(tmp_path: Path, monkeypatch):
    episodes = [
        episode(True, True, 2),  # the first retrieve showed it: kept
        episode(True, True, 1),  # turn 1 showed it: kept
        episode(True, True, 3),  # a miss made good: left out
        episode(True, False, 2),  # a right guess: left out
        episode(False, True, 2),  # seen and answered wrong: left out
    ]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(e) + "\n" for e in episodes))
    out = tmp_path / "kept" / "samples.jsonl"
    monkeypatch.setattr(sys, "argv", ["select_first_hits", str(samples), str(out)])
    select_first_hits.main()
    kept = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert kept == ["True-True-2", "True-True-1"]
