"""The first-decision probe: range completions sampled after a fixed first-reply prefix."""

from __future__ import annotations

from pathlib import Path

from recipes.tiny.first_decision_probe import RANGE, sampled_ranges
from vmtr.config import ModelSettings
from vmtr.models.qwen import QwenVideoLM

BUNDLED = Path(__file__).resolve().parents[3] / "vmtr" / "assets" / "tiny"
PREFIX = "<think>Border: frames 17 to 21. Seen: no shapes. Need more frames.</think><retrieve>"


def test_a_completion_is_read_as_a_range_only_when_it_closes_the_tag():
    assert RANGE.match("16, 24</retrieve><|im_end|>").groups() == ("16", "24")
    assert RANGE.match("16, 24<|im_end|>") is None
    assert RANGE.match("sixteen</retrieve>") is None


def test_completions_after_the_prefix_are_ranges_and_agree_when_nearly_greedy(items):
    lm = QwenVideoLM.load(ModelSettings(model=str(BUNDLED), device="cpu"))
    ranges = sampled_ranges(lm, items[0], PREFIX, k=4, temperature=0.01, seed=0)
    assert len(ranges) == 4
    assert all(r is not None and 0 <= r[0] <= r[1] for r in ranges)
    assert len(set(ranges)) == 1
