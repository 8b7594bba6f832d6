"""How a policy-gradient update weighs the tokens of a step: verl's ``loss_agg_mode``.

GRPO as published averages each trajectory over its own trained tokens, then over trajectories,
so a token weighs ``1 / (n * its trajectory's trained tokens)``: every trajectory carries the same
total weight, and in multi-turn RL an episode that retrieved twice spreads it over three replies
while one that answered at once puts it all on one. DAPO averages over every trained token of the
step (``token-mean``); Dr. GRPO sums each trajectory and divides by a fixed horizon
(``seq-mean-token-sum-norm``). Under both, every trained token weighs the same, whatever the
length of its episode. (Under Adam a constant factor on the loss barely changes the step; what the
modes change is how the step is shared among trajectories.)

The trainer sums each row's per-token terms, divides by the row's divisor from
:func:`row_divisors` and then by ``n``, the step's trajectory count, so every mode is one
division per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

LossAgg = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]


def row_divisors(masks: Sequence[torch.Tensor], mode: LossAgg, horizon: int) -> list[float]:
    """Per trajectory, what its masked token sum is divided by before the mean over the ``n``
    trajectories: its own trained-token count (``seq-mean-token-mean``), the step's mean count
    per trajectory (``token-mean``: the step's sum over all its trained tokens), or ``horizon``
    (``seq-mean-token-sum-norm``). Counts are floored at 1 so a reply-less trajectory divides
    safely; the step's count includes trajectories the update leaves out (their gradient is
    zero), so leaving them out changes nothing."""
    counts = [float(m.sum()) for m in masks]
    if mode == "seq-mean-token-mean":
        return [max(1.0, c) for c in counts]
    if mode == "token-mean":
        return [max(1.0, sum(counts)) / max(1, len(masks))] * len(masks)
    if mode == "seq-mean-token-sum-norm":
        return [float(horizon)] * len(masks)
    raise ValueError(f"unknown loss aggregation {mode!r}")
