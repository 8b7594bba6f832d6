"""Turn-level GRPO on verl's token-level tensors, equal to vmtr's ``--credit turn``.

verl hands an advantage estimator the batch's token-level rewards, the response mask and the
prompt id (``index``) of each row. The replies of an episode are the runs of ones in its response
mask (the environment's messages, with mask 0, separate them), and a turn's reward is the sum of
the rewards on its reply's tokens (the vmtr reward puts it all on the last one). From there the
advantages are `vmtr.policies.advantages.grpo_turn_advantages` itself, spread over each reply's
tokens. No verl import here: `estimators` registers this function with verl.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vmtr.policies.advantages import grpo_turn_advantages


def reply_spans(mask: torch.Tensor) -> list[tuple[int, int]]:
    """(first, last) index of each run of ones in a 1-D mask."""
    spans: list[tuple[int, int]] = []
    start = None
    values = [bool(v) for v in mask.tolist()]
    for t, on in enumerate(values):
        if on and start is None:
            start = t
        elif not on and start is not None:
            spans.append((start, t - 1))
            start = None
    if start is not None:
        spans.append((start, len(values) - 1))
    return spans


def turn_grpo(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Sequence[object],
    *,
    gamma: float = 1.0,
    scale: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages (and returns, the same tensor as verl's GRPO gives) of shape
    ``[batch, response_length]``: each reply's tokens carry that turn's advantage."""
    spans = [reply_spans(row) for row in response_mask]
    rewards = [
        [float(token_level_rewards[b, first : last + 1].sum()) for first, last in row_spans]
        for b, row_spans in enumerate(spans)
    ]
    labels: dict[object, int] = {}
    groups = [labels.setdefault(key, len(labels)) for key in index]
    per_turn = grpo_turn_advantages(rewards, groups, gamma=gamma, eps=eps, scale=scale)
    advantages = torch.zeros_like(token_level_rewards, dtype=torch.float32)
    for b, (row_spans, row_adv) in enumerate(zip(spans, per_turn, strict=True)):
        for (first, last), value in zip(row_spans, row_adv, strict=True):
            advantages[b, first : last + 1] = value
    advantages = advantages * response_mask
    return advantages, advantages
