"""Which sampled tokens of a reply are its action, for an update that trains only those.

A protocol reply is ``<think>what was seen</think>`` then the action (``<retrieve>s, e</retrieve>``
or ``<answer>X</answer>``). RL's advantage says whether the episode went well, which is a verdict
on where the policy looked and when it answered; applied to the think text as well, it also moves
what the model says it saw, with no reward term that checks it. Masking the update to the action
part keeps the reading text out of RL's reach (the KL term, if any, still covers the whole reply).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

THINK_START, THINK_END = "<think>", "</think>"


def action_start(ids: Sequence[int], tokenizer: Any) -> int:
    """Index of the first token of ``ids`` (one reply) whose text reaches past the last
    ``</think>``; 0 when the reply has no think block (all of it is action), ``len(ids)`` when
    a think block opens and never closes (a reply cut off while thinking has no action). A token
    that straddles the boundary counts as action."""
    text = tokenizer.decode(list(ids), skip_special_tokens=False)
    end = text.rfind(THINK_END)
    if end < 0:
        return len(ids) if THINK_START in text else 0
    end += len(THINK_END)
    for k in range(len(ids)):
        if len(tokenizer.decode(list(ids[: k + 1]), skip_special_tokens=False)) > end:
            return k
    return len(ids)


def action_token_mask(
    input_ids: torch.Tensor, spans: Sequence[tuple[int, int]], tokenizer: Any
) -> torch.Tensor:
    """``[L]`` float mask: 1 on the sampled tokens of each reply span ``(first, last)`` from its
    action on, 0 elsewhere (think text, prompts, environment tokens)."""
    mask = torch.zeros(input_ids.shape[0], dtype=torch.float32)
    for first, last in spans:
        ids = input_ids[first : last + 1].tolist()
        mask[first + action_start(ids, tokenizer) : last + 1] = 1.0
    return mask
