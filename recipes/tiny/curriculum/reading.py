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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from recipes.tiny.curriculum.episodes import AnswerForm, Trajectory, plan_trajectory
from recipes.tiny.curriculum.frames import CachedItem, backend_pixel_budget
from recipes.tiny.curriculum.weights import word_ids
from vmtr.config import ProtocolSettings
from vmtr.eval.datasets import QAItem
from vmtr.eval.synthetic import COLOURS, SHAPES
from vmtr.policies.conversation import encode_conversation
from vmtr.policies.tags import single_token

READING_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def reading_supported(tokenizer: Any) -> bool:
    """Whether `reading_positions` can steer by the protocol's tags: they must be single
    tokens (the tiny tokenizer's are; Qwen's BPE splits them into ``<``, the word, ``>``)."""
    return all(single_token(tokenizer, tag) is not None for tag in READING_TAGS)


def scripted_episodes(
    processor: Any,
    items: Sequence[QAItem],
    cache_dir: Path,
    budget: dict[str, int],
    settings: ProtocolSettings | None = None,
    seed: int = 0,
    answer_form: AnswerForm = "letter",
) -> Iterator[tuple[QAItem, Trajectory, dict[str, torch.Tensor], list[int]]]:
    """Each item's scripted multi-turn episode (`plan_trajectory`, 8-frame retrieve blocks) as
    the model sees it: the item, its trajectory, the model inputs with a batch dimension, and
    the next-token targets (``targets[i]`` is what the logits at position ``i`` predict)."""
    settings = settings or ProtocolSettings()
    rng = random.Random(seed)
    for item in items:
        cached = CachedItem(item, cache_dir, budget)
        traj = plan_trajectory(
            item,
            cached.pool,
            settings,
            rng,
            retrieve_block=8,
            answer_form=answer_form,
        )
        enc = encode_conversation(processor, traj.messages, cached.images(traj.frames))
        cached.release()
        labels = enc.pop("labels")
        inputs = {k: (v[None] if v.dim() == 1 else v) for k, v in enc.items()}
        yield item, traj, inputs, labels[1:].tolist()


@torch.no_grad()
def reading_accuracy(
    model: Any,
    processor: Any,
    items: Sequence[QAItem],
    cache_dir: Path,
    settings: ProtocolSettings | None = None,
    seed: int = 0,
    budget: dict[str, int] | None = None,
    answer_form: AnswerForm = "letter",
) -> dict[str, Any]:
    """Top-1 accuracy at the colour and at the shape words of scripted episodes of ``items``.

    ``budget`` is the frames' pixel budget (default: the inference backend's for ``model``), so
    the frames equal what the agent feeds the model; ``cache_dir`` keeps decoded pools;
    ``answer_form`` is what the model was taught (`AnswerForm`). An answer counts as read when
    every token of it is the top-1.
    """
    budget = budget or backend_pixel_budget(model, processor)
    marks = reading_marks(processor.tokenizer)
    hits: dict[str, int] = {}
    total: dict[str, int] = {}
    was_training = model.training
    model.eval()
    episodes = scripted_episodes(processor, items, cache_dir, budget, settings, seed, answer_form)
    for _, traj, inputs, targets in episodes:
        predicted = model(**inputs).logits[0, :-1].argmax(-1).tolist()
        answer_right: list[bool] = []
        for kind, position in reading_positions(targets, marks):
            right = predicted[position] == targets[position]
            if kind == "answer":
                answer_right.append(right)
                continue
            total[kind] = total.get(kind, 0) + 1
            hits[kind] = hits.get(kind, 0) + int(right)
        if answer_right and not traj.guesses[-1]:  # a guess is not something the frames showed
            total["answer"] = total.get("answer", 0) + 1
            hits["answer"] = hits.get("answer", 0) + int(all(answer_right))
    if was_training:
        model.train()
    out: dict[str, Any] = {f"{k}_accuracy": hits.get(k, 0) / n for k, n in sorted(total.items())}
    return out | {"needle_words": total.get("colour", 0) + total.get("shape", 0)}


def reading_marks(tokenizer: Any) -> dict[str, Any]:
    """The token ids `reading_positions` steers by (see `reading_supported`)."""
    if not reading_supported(tokenizer):
        raise ValueError(
            "the reading check needs <think>, </think>, <answer> and </answer> as single "
            "tokens; this tokenizer splits them"
        )
    one = {w: tokenizer(w, add_special_tokens=False)["input_ids"] for w in (" Seen", "<think>")}
    return {
        "colour": set(word_ids(tokenizer, list(COLOURS))),
        "shape": set(word_ids(tokenizer, list(SHAPES))),
        "digit": set(word_ids(tokenizer, [str(d) for d in range(10)], prefix="")),
        "seen": one[" Seen"][0],
        "think": one["<think>"][0],
        "think_end": tokenizer.convert_tokens_to_ids("</think>"),
        "answer": tokenizer.convert_tokens_to_ids("<answer>"),
        "answer_end": tokenizer.convert_tokens_to_ids("</answer>"),
    }


def reading_positions(targets: Sequence[int], marks: dict[str, Any]) -> list[tuple[str, int]]:
    """(kind, position) of every scored target: ``colour`` and ``shape`` words;
    ``border_digits`` and ``seen_digits``, the frame indices named in the border clause and in
    the needle clause; ``border_first``, the first word after ``<think>`` ("Border" or "No");
    ``seen_first``, the first word after "Seen:" ("no" shapes or a "frame"); ``answer``, each
    token of the last reply's answer (a letter, or a needle's words). Colours and shapes are
    scored in the reading part of ``<think>`` only, so an answer's words count once, as the
    answer."""
    out: list[tuple[str, int]] = []
    region = None
    answering = False
    for i, t in enumerate(targets):
        if answering:
            if t == marks["answer_end"]:
                answering = False
            else:
                out.append(("answer", i))
            continue
        if t == marks["think"]:
            out = [(kind, p) for kind, p in out if kind != "answer"]  # only the last reply's
            region = "border"
            if i + 1 < len(targets):
                out.append(("border_first", i + 1))
        elif t == marks["think_end"]:
            region = None
        elif t == marks["seen"] and region == "border":
            region = "seen"
            if i + 2 < len(targets):
                out.append(("seen_first", i + 2))  # after " Seen" and ":"
        elif region and t in marks["digit"]:
            out.append((f"{region}_digits", i))
        elif region and t in marks["colour"]:
            out.append(("colour", i))
        elif region and t in marks["shape"]:
            out.append(("shape", i))
        if t == marks["answer"]:
            answering = True
    return out
