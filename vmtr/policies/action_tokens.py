"""Which sampled tokens of a reply are its action, for an update that trains only those.

A protocol reply is ``<think>what was seen</think>`` then the action (``<retrieve>s, e</retrieve>``
or ``<answer>X</answer>``). RL's advantage says whether the episode went well, which is a verdict
on where the policy looked and when it answered; applied to the think text as well, it also moves
what the model says it saw, with no reward term that checks it. Masking the update to the action
part keeps the reading text out of RL's reach (the KL term, if any, still covers the whole reply).

A model that states its decision in the think text ("... Need more frames." before a retrieve,
"... Guessing." before an answer) makes that decision in the think block, where an action-only
update cannot reach it. The decision mask adds the think block's last sentence to the action: the
sentence a reasoning reply ends on before it acts, and what it reports having seen stays out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import torch

THINK_START, THINK_END = "<think>", "</think>"
SENTENCE_END = re.compile(r"[.!?](?=\s)")

TrainedPart = Literal["action", "decision"]


def token_at(ids: Sequence[int], tokenizer: Any, char: int) -> int:
    """Index of the token whose decoded text holds character ``char`` of the reply (a token that
    straddles a boundary there counts as after it); ``len(ids)`` when none does."""
    for k in range(len(ids)):
        if len(tokenizer.decode(list(ids[: k + 1]), skip_special_tokens=False)) > char:
            return k
    return len(ids)


def last_sentence_start(think: str) -> int:
    """Character index in ``think`` (a think block's body) where its last sentence begins: after
    the last sentence end (``.``, ``!``, ``?`` followed by white space) that has text after it,
    past that white space; 0 when the body is one sentence."""
    body = think.rstrip()
    ends = [m.end() for m in SENTENCE_END.finditer(body) if body[m.end() :].strip()]
    if not ends:
        return 0
    start = ends[-1]
    return start + len(body[start:]) - len(body[start:].lstrip())


def action_start(ids: Sequence[int], tokenizer: Any, part: TrainedPart = "action") -> int:
    """Index of the first token of ``ids`` (one reply) that the update trains. ``action``: the
    first whose text reaches past the last ``</think>``; ``decision``: the first of the think
    block's last sentence. 0 when the reply has no think block (all of it is action), ``len(ids)``
    when a think block opens and never closes (a reply cut off while thinking has no action)."""
    text = tokenizer.decode(list(ids), skip_special_tokens=False)
    end = text.rfind(THINK_END)
    if end < 0:
        return len(ids) if THINK_START in text else 0
    if part == "decision":
        opened = text.rfind(THINK_START, 0, end)
        body_start = opened + len(THINK_START) if opened >= 0 else 0
        return token_at(ids, tokenizer, body_start + last_sentence_start(text[body_start:end]))
    return token_at(ids, tokenizer, end + len(THINK_END))


def action_token_mask(
    input_ids: torch.Tensor,
    spans: Sequence[tuple[int, int]],
    tokenizer: Any,
    part: TrainedPart = "action",
) -> torch.Tensor:
    """``[L]`` float mask: 1 on the sampled tokens of each reply span ``(first, last)`` from its
    action (or its decision sentence) on, 0 elsewhere (the rest of the think text, prompts,
    environment tokens)."""
    mask = torch.zeros(input_ids.shape[0], dtype=torch.float32)
    for first, last in spans:
        ids = input_ids[first : last + 1].tolist()
        mask[first + action_start(ids, tokenizer, part) : last + 1] = 1.0
    return mask
