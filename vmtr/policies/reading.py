"""Teacher-forced reading accuracy: does the model name what its frames show?

Greedy held-out accuracy mixes three skills (the format, where to look, what is there) and a
lucky guess inflates it. This check isolates the last one. It scripts each item's episode with
`plan_trajectory` (the warm start's own labels), feeds the whole conversation, and scores the
model's top-1 prediction at every colour and shape word of the replies, given everything before
it (so the frame index in "frame 37 red circle" is given too). Chance is 1/6 for colours and 1/4
for shapes among the words themselves; a model that has not learned to read sits well below
that, as its top-1 is often another word altogether.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vmtr.config import ProtocolSettings
from vmtr.eval.datasets import QAItem

MULTI_TURN = ProtocolSettings()


def word_ids(tokenizer: Any, words: Sequence[str]) -> dict[int, str]:
    """Token id -> word, for the words that are one token with a leading space."""
    out = {}
    for word in words:
        pieces = tokenizer(f" {word}", add_special_tokens=False)["input_ids"]
        if len(pieces) == 1:
            out[pieces[0]] = word
    return out


@torch.no_grad()
def reading_accuracy(
    model: Any,
    processor: Any,
    items: Sequence[QAItem],
    cache_dir: Path,
    settings: ProtocolSettings = MULTI_TURN,
    seed: int = 0,
    budget: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Top-1 accuracy at the colour and at the shape words of scripted episodes of ``items``.

    ``budget`` is the frames' pixel budget (default: the inference backend's for ``model``), so
    the frames equal what the agent feeds the model; ``cache_dir`` keeps decoded pools.
    """
    from vmtr.eval.synthetic import COLOURS, SHAPES
    from vmtr.policies.sft import CachedItem, encode_conversation, plan_trajectory

    if budget is None:
        from vmtr.config import ModelSettings
        from vmtr.models.qwen import QwenVideoLM

        budget = QwenVideoLM(model, processor, ModelSettings(model="sft")).pixel_budget
    tok = processor.tokenizer
    kinds = {"colour": word_ids(tok, list(COLOURS)), "shape": word_ids(tok, list(SHAPES))}
    hits = {k: 0 for k in kinds}
    total = {k: 0 for k in kinds}
    was_training = model.training
    model.eval()
    rng = random.Random(seed)
    for item in items:
        cached = CachedItem(item, cache_dir, budget)
        traj = plan_trajectory(item, cached.pool, settings, rng, retrieve_block=8)
        enc = encode_conversation(processor, traj.messages, cached.images(traj.frames))
        cached.release()
        labels = enc.pop("labels")
        batch = {k: (v[None] if v.dim() == 1 else v) for k, v in enc.items()}
        logits = model(**batch).logits[0]
        predicted = logits[:-1].argmax(-1)
        targets = labels[1:]
        for kind, ids in kinds.items():
            where = torch.isin(targets, torch.tensor(list(ids)))
            total[kind] += int(where.sum())
            hits[kind] += int((predicted[where] == targets[where]).sum())
    if was_training:
        model.train()
    return {
        f"{kind}_accuracy": (hits[kind] / total[kind] if total[kind] else None) for kind in kinds
    } | {"needle_words": sum(total.values())}
