"""A chat conversation with frames -> training tensors, the loss on the assistant's replies only.

Encoding matches the inference backend (`vmtr.models.qwen`) exactly: the chat template renders
the conversation, the processor runs on the whole text with all its frames, and its outputs are
kept whole, ``mm_token_type_ids`` included: without it Qwen2.5-VL silently falls back to 1-D
positions, so a model trained without it decodes wrongly wherever it is passed, and the reverse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from vmtr import protocol
from vmtr.policies.tags import tag_interior

IGNORE = -100
"""Label value that carries no loss (PyTorch's cross-entropy default)."""


def assistant_spans(ids: Sequence[int], start_id: int, header: Sequence[int], end_id: int):
    """(first, last) token positions of each assistant reply, its closing ``<|im_end|>`` included.

    A reply starts after ``<|im_start|>`` + the tokens of ``assistant\\n`` and ends at the next
    ``<|im_end|>``.
    """
    spans = []
    h = len(header)
    i = 0
    while i < len(ids):
        if ids[i] == start_id and list(ids[i + 1 : i + 1 + h]) == list(header):
            first = i + 1 + h
            last = first
            while last < len(ids) and ids[last] != end_id:
                last += 1
            spans.append((first, min(last, len(ids) - 1)))
            i = last
        i += 1
    return spans


def encode_conversation(
    processor: Any,
    messages: Sequence[protocol.Message],
    images: Sequence[Image.Image],
    guesses: Sequence[bool] | None = None,
    only_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Processor outputs of a whole conversation plus ``labels`` on the assistant's tokens only.

    ``images`` are the frames of the placeholders in order. Labels are ``IGNORE`` everywhere but
    each reply and its ``<|im_end|>``; for a reply flagged in ``guesses`` the tokens inside
    ``<answer>...</answer>`` carry no loss either (an answer the frames could not support).
    ``only_ids`` narrows the labels further to those token ids. Tensors are 1-D per token (no
    batch axis) except ``pixel_values`` and ``image_grid_thw``.
    """
    text = processor.apply_chat_template(list(messages), tokenize=False)
    encoded = processor(text=[text], images=list(images) or None, return_tensors="pt")
    if images and "mm_token_type_ids" not in encoded:
        raise RuntimeError("processor output lacks mm_token_type_ids; positions would be wrong")
    tok = processor.tokenizer
    ids = encoded["input_ids"][0]
    header = tok("assistant\n", add_special_tokens=False)["input_ids"]
    spans = assistant_spans(
        ids.tolist(),
        tok.convert_tokens_to_ids("<|im_start|>"),
        header,
        tok.convert_tokens_to_ids("<|im_end|>"),
    )
    n_replies = sum(m["role"] == "assistant" for m in messages)
    if len(spans) != n_replies:
        raise RuntimeError(
            f"found {len(spans)} assistant replies in the tokens, expected {n_replies}"
        )
    labels = torch.full_like(ids, IGNORE)
    for k, (first, last) in enumerate(spans):
        labels[first : last + 1] = ids[first : last + 1]
        if guesses and guesses[k]:
            guessed = tag_interior(tok, ids[first : last + 1], "<answer>", "</answer>")
            labels[first : last + 1][guessed] = IGNORE
    if only_ids is not None:
        labels = torch.where(torch.isin(labels, only_ids), labels, torch.full_like(labels, IGNORE))
    out = {
        "input_ids": ids,
        "attention_mask": encoded["attention_mask"][0],
        "labels": labels,
        "mm_token_type_ids": encoded.get("mm_token_type_ids", torch.zeros_like(ids[None]))[0],
    }
    if images:
        out["pixel_values"] = encoded["pixel_values"]
        out["image_grid_thw"] = encoded["image_grid_thw"]
    return out


def collate(
    examples: Sequence[dict[str, torch.Tensor]], pad_id: int, image_keys: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded conversations into one batch; images concatenated in order.

    Per-token tensors (ids, mask, labels, ``mm_token_type_ids``, optional ``loss_weights``) are
    padded; ``pixel_values``, ``image_grid_thw`` and any ``image_keys`` (tensors per patch, image
    or merged token) are concatenated over the examples that have images.
    """
    length = max(int(e["input_ids"].shape[0]) for e in examples)
    batch: dict[str, torch.Tensor] = {}
    for key, fill in (
        ("input_ids", pad_id),
        ("attention_mask", 0),
        ("labels", IGNORE),
        ("mm_token_type_ids", 0),
        ("loss_weights", 0.0),
    ):
        if key not in examples[0]:
            continue
        rows = [
            torch.nn.functional.pad(e[key], (0, length - e[key].shape[0]), value=fill)
            for e in examples
        ]
        batch[key] = torch.stack(rows)
    with_images = [e for e in examples if "pixel_values" in e]
    for key in ("pixel_values", "image_grid_thw", *image_keys):
        if with_images and key in with_images[0]:
            batch[key] = torch.cat([e[key] for e in with_images])
    return batch


def token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    reduction: str = "mean",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy over labelled positions (mean, or sum for accumulation),
    optionally weighted per label position (``weights`` aligned with ``labels``)."""
    shifted = logits[:, :-1].float()
    targets = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    )
    if weights is None:
        weights = (targets != IGNORE).float()
    else:
        weights = weights[:, 1:]
    total = (losses * weights.reshape(-1)).sum()
    return total if reduction == "sum" else total / weights.sum().clamp(min=1e-9)
