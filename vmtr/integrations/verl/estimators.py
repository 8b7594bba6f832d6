"""Registers vmtr's turn-level GRPO with verl as ``algorithm.adv_estimator=vmtr_grpo_turn``.

PPO needs nothing registered: verl's own GAE over the per-turn rewards is vmtr's bi-level GAE
under the settings `docs/verl.md` states (and a test checks).
"""

from __future__ import annotations

from typing import Any

import torch
from verl.trainer.ppo.core_algos import register_adv_est

from vmtr.integrations.verl.advantages import turn_grpo

ESTIMATOR = "vmtr_grpo_turn"


@register_adv_est(ESTIMATOR)
def compute_turn_grpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's estimator signature around `turn_grpo`: ``algorithm.gamma`` discounts over turns
    and ``algorithm.norm_adv_by_std_in_grpo`` divides by the group's deviation."""
    gamma = float(config.get("gamma", 1.0)) if config is not None else 1.0
    scale = bool(config.get("norm_adv_by_std_in_grpo", True)) if config is not None else True
    if index is None:
        index = list(range(token_level_rewards.shape[0]))
    return turn_grpo(token_level_rewards, response_mask, list(index), gamma=gamma, scale=scale)
