"""Advantages for multi-turn RL: bi-level GAE (PPO with a value head) and GRPO.

Bi-level GAE (Video-MTR's code): one trajectory is a sequence of turns, each a run of the
model's own tokens ending at an end-of-turn position where that turn's reward sits.
- Turn level: with V_k the critic's value at the end of turn k,
  delta_k = r_k + gamma_turn * V_{k+1} - V_k (V_{K+1} = 0) and
  A_k = sum_j (gamma_turn * lam_turn)^j delta_{k+j}.
- Token level, inside turn k: no reward mid-turn, and the last token is bootstrapped from the turn
  level, so its advantage is A_k; earlier tokens t get
  delta_t = gamma * v_{t+1} - v_t and A_t = delta_t + gamma * lam * A_{t+1}.
Returns (value targets) are A + v. Environment tokens (prompts, frames) carry no advantage.

GRPO: each trajectory's total reward, normalised within its group (same prompt), on every token.

Turn-level GRPO (no critic, but credit per turn): the reward-to-go of turn k,
G_k = r_k + gamma_turn * G_{k+1}, normalised among the episodes of the same prompt that reached
turn k. Turn 1 is every episode, so its advantage is plain GRPO's; a later turn is judged against
the other continuations at the same depth instead of taking the whole episode's standing. A depth
only one episode of its group reached falls back to that episode's turn-1 advantage (nothing to
compare with).

Plain functions over 1-D tensors of one trajectory's response tokens, so tests can check them
against numbers worked out by hand.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch


def turn_level_gae(
    rewards: Sequence[float], values: Sequence[float], gamma: float = 1.0, lam: float = 1.0
) -> list[float]:
    """Advantages A_k over turns from per-turn rewards and end-of-turn values."""
    advantages = [0.0] * len(rewards)
    running = 0.0
    for k in reversed(range(len(rewards))):
        next_value = values[k + 1] if k + 1 < len(values) else 0.0
        delta = rewards[k] + gamma * next_value - values[k]
        running = delta + gamma * lam * running
        advantages[k] = running
    return advantages


def bilevel_gae(
    values: torch.Tensor,
    turn_spans: Sequence[tuple[int, int]],
    turn_rewards: Sequence[float],
    *,
    gamma_turn: float = 1.0,
    lam_turn: float = 1.0,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token advantages and returns for one trajectory.

    ``values``: critic values per token [T]; ``turn_spans``: (first, last) token index of each
    turn's reply, inclusive, in order; ``turn_rewards``: one reward per turn. Tokens outside the
    spans get 0 advantage and 0 return.
    """
    if len(turn_spans) != len(turn_rewards):
        raise ValueError("one reward per turn is needed")
    v = values.detach().float()
    end_values = [float(v[last]) for _, last in turn_spans]
    turn_adv = turn_level_gae(turn_rewards, end_values, gamma_turn, lam_turn)
    advantages = torch.zeros_like(v)
    for (first, last), adv_last in zip(turn_spans, turn_adv, strict=True):
        advantages[last] = adv_last
        for t in range(last - 1, first - 1, -1):
            delta = gamma * v[t + 1] - v[t]
            advantages[t] = delta + gamma * lam * advantages[t + 1]
    mask = torch.zeros_like(v, dtype=torch.bool)
    for first, last in turn_spans:
        mask[first : last + 1] = True
    returns = torch.where(mask, advantages + v, torch.zeros_like(v))
    return advantages, returns


def grpo_advantages(
    totals: Sequence[float], groups: Sequence[int], eps: float = 1e-6, scale: bool = True
) -> list[float]:
    """Group-normalised total rewards: (R - mean_group) / (std_group + eps).

    ``groups[i]`` names the prompt of trajectory i. A group of one (or of equal rewards) gets 0:
    nothing to compare with. ``scale=False`` only centres (Dr. GRPO's choice).
    """
    r = torch.tensor(totals, dtype=torch.float64)
    g = torch.tensor(groups)
    out = torch.zeros_like(r)
    for group in torch.unique(g):
        members = g == group
        x = r[members]
        if x.numel() < 2:
            continue
        centred = x - x.mean()
        out[members] = centred / (x.std(unbiased=True) + eps) if scale else centred
    return [float(a) for a in out]


def rewards_to_go(rewards: Sequence[float], gamma: float = 1.0) -> list[float]:
    """G_k = r_k + gamma * G_{k+1} over one trajectory's turns: turn-level GAE with no critic."""
    return turn_level_gae(rewards, [0.0] * len(rewards), gamma, lam=1.0)


def grpo_turn_advantages(
    turn_rewards: Sequence[Sequence[float]],
    groups: Sequence[int],
    gamma: float = 1.0,
    eps: float = 1e-6,
    scale: bool = True,
) -> list[list[float]]:
    """Per trajectory, one advantage per turn: its reward-to-go normalised within (group, turn)."""
    to_go = [rewards_to_go(r, gamma) for r in turn_rewards]
    first = grpo_advantages([g[0] if g else 0.0 for g in to_go], groups, eps, scale)
    # every turn starts from its episode's turn-1 advantage, kept where no peer reached its depth
    out = [[first[i]] * len(g) for i, g in enumerate(to_go)]
    for k in range(1, max((len(g) for g in to_go), default=0)):
        reached = [i for i, g in enumerate(to_go) if len(g) > k]
        labels = [groups[i] for i in reached]
        adv = grpo_advantages([to_go[i][k] for i in reached], labels, eps, scale)
        sizes = Counter(labels)
        for i, label, a in zip(reached, labels, adv, strict=True):
            if sizes[label] > 1:
                out[i][k] = a
    return out
