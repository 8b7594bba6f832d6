"""Log-probs of a batch of trajectories under the policy, as the update needs them.

`batch_inputs` rebuilds what the model saw while sampling; `token_logprobs` scores every token at
the sampling temperature; `group_token_logprobs` does the same for one GRPO group with its shared
first prompt run once. A group's samples all start from the same prompt (the question and the
first turn's frames: 728 of a colour episode's 1,200-1,600 tokens), and the update used to run it
once per sample. Run once, its keys and values -- with their autograd graph -- are the cache
every sample's remainder attends to, so each sample's log-probs are what its own forward gave
and the gradient reaching the prompt is the sum over the samples, for a fraction of the compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from vmtr.models.cache_names import cache_kwargs, output_cache
from vmtr.models.qwen import QwenVideoLM
from vmtr.policies.rollout import Trajectory


def model_inputs(lm: QwenVideoLM, traj: Trajectory) -> dict[str, Any]:
    """The forward inputs that reproduce what the model saw while sampling ``traj``."""
    return batch_inputs(lm, [traj])


def batch_inputs(
    lm: QwenVideoLM, trajectories: Sequence[Trajectory], *, cached_vision: bool = False
) -> dict[str, Any]:
    """Several trajectories as one right-padded batch: ids, modality types, each row's own M-RoPE
    positions (from the model's ``get_rope_index``) and all their images.

    No padding mask: with the padding on the right, causal attention already keeps every real
    token from seeing it (only the padding's own outputs are garbage, and the losses mask them),
    and without a mask the attention kernel runs its causal fast path.

    ``cached_vision``: when every trajectory carries the engine's ``image_embeds``, the images
    travel as those embeddings (``image_embeds`` + ``image_mask``, which `vision_replayed` turns
    into ``inputs_embeds``) instead of pixels. Only right while the vision tower is fixed: it then
    maps the same pixels to the same embeddings, and the update skips a forward pass over every
    frame of every trajectory (frames a group's samples share included)."""
    lengths = [int(t.input_ids.shape[0]) for t in trajectories]
    width, rows = max(lengths), len(trajectories)
    ids = torch.full((rows, width), lm.end_id, dtype=torch.long)
    mm = torch.zeros((rows, width), dtype=torch.long)
    positions = torch.zeros((3, rows, width), dtype=torch.long)
    for row, (traj, length) in enumerate(zip(trajectories, lengths, strict=True)):
        ids[row, :length] = traj.input_ids
        mm[row, :length] = traj.mm_token_type_ids
        one_ids, one_mm = traj.input_ids.unsqueeze(0), traj.mm_token_type_ids.unsqueeze(0)
        if traj.image_grid_thw is not None:
            pos, _ = lm.core.get_rope_index(
                one_ids, mm_token_type_ids=one_mm, image_grid_thw=traj.image_grid_thw
            )
        else:
            pos = torch.arange(length).view(1, 1, -1).expand(3, 1, -1)
        positions[:, row, :length] = pos[:, 0]
        if length < width:  # padding continues the row's positions (its outputs are masked)
            positions[:, row, length:] = pos[:, 0, -1:] + 1 + torch.arange(width - length)
    device = lm.device
    inputs = {
        "input_ids": ids.to(device),
        "mm_token_type_ids": mm.to(device),
        "position_ids": positions.to(device),
    }
    with_images = [t for t in trajectories if t.pixel_values is not None]
    if with_images and cached_vision and all(t.image_embeds is not None for t in with_images):
        inputs["image_embeds"] = torch.cat([t.image_embeds for t in with_images]).to(device)
        inputs["image_mask"] = inputs["input_ids"] == lm.model.config.image_token_id
    elif with_images:
        inputs["pixel_values"] = torch.cat([t.pixel_values for t in with_images]).to(device)
        inputs["image_grid_thw"] = torch.cat([t.image_grid_thw for t in with_images]).to(device)
    return inputs


def vision_replayed(model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` as ``model``'s forward takes them: a batch whose images travel as cached
    embeddings (`batch_inputs` with ``cached_vision``) becomes ``inputs_embeds`` -- ``model``'s
    own token embeddings with the images' in their placeholders, as the model itself would
    build them from the pixels -- and any other batch is returned as it is."""
    if "image_embeds" not in inputs:
        return inputs
    forward = {
        k: v for k, v in inputs.items() if k not in ("input_ids", "image_embeds", "image_mask")
    }
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    where = inputs["image_mask"].unsqueeze(-1).expand_as(embeds)
    forward["inputs_embeds"] = embeds.masked_scatter(where, inputs["image_embeds"].to(embeds.dtype))
    return forward


def token_logprobs(
    model: nn.Module,
    inputs: dict[str, Any],
    banned: list[int],
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of every token given the ones before it (position 0 gets 0), and the entropy of
    the distribution it was drawn from — at the sampling temperature, vision tokens masked, as in
    the backend's sampler, so the first PPO ratio is exactly 1. Shapes ``[rows, L]``, or ``[L]``
    for a batch of one."""
    logits = model(**vision_replayed(model, inputs), use_cache=False).logits
    return scored(logits, inputs["input_ids"], banned, temperature)


def scored(
    logits: torch.Tensor, input_ids: torch.Tensor, banned: list[int], temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logprobs` from the model's logits ``[rows, L, vocab]``."""
    logits = logits[:, :-1].float()
    logits[..., banned] = float("-inf")
    if temperature > 0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, -1)
    target = input_ids[:, 1:]
    chosen = logp_all.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    # Vision placeholders are banned from sampling, so as targets (environment tokens only) they
    # score -inf; zero them so masked sums stay finite.
    chosen = torch.where(torch.isfinite(chosen), chosen, torch.zeros_like(chosen))
    probs = logp_all.exp()
    entropy = -(probs * torch.where(probs > 0, logp_all, torch.zeros_like(logp_all))).sum(-1)
    pad = torch.zeros((chosen.shape[0], 1), device=chosen.device)
    logp, entropy = torch.cat([pad, chosen], 1), torch.cat([pad, entropy], 1)
    if logp.shape[0] == 1:
        return logp[0], entropy[0]
    return logp, entropy


def shared_prefix(trajectories: Sequence[Trajectory]) -> int:
    """How many leading tokens every trajectory has in common, images included, up to the first
    trained token of each (0 when they differ: then nothing is shared). A branch's replayed
    reply and the frames it brought back are part of its group's shared prefix."""
    firsts = [torch.nonzero(t.action_mask).flatten() for t in trajectories]
    if not trajectories or any(f.numel() == 0 for f in firsts):
        return 0
    length = min(int(f[0]) for f in firsts)
    first = trajectories[0]
    for other in trajectories[1:]:
        if not torch.equal(other.input_ids[:length], first.input_ids[:length]):
            return 0
    if first.image_embeds is not None:
        placeholders = int(first.mm_token_type_ids[:length].ne(0).sum())
        head = first.image_embeds[:placeholders]
        for other in trajectories[1:]:
            if other.image_embeds is None or not torch.equal(
                other.image_embeds[:placeholders], head
            ):
                return 0
    return length


def group_token_logprobs(
    model: nn.Module,
    chunks: Sequence[dict[str, Any]],
    prefix: int,
    banned: list[int],
    temperature: float,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`token_logprobs` of each chunk of a group's trajectories, whose first ``prefix`` tokens
    (`shared_prefix`) run once, taken from the first chunk's first row (every row has them).

    Every input must carry its images as cached embeddings (`batch_inputs` with
    ``cached_vision``): the rows are embedded whole, then cut at ``prefix``.
    Returns ``(logp, entropy)`` per chunk, shaped as `token_logprobs` shapes them."""
    forwards = [vision_replayed(model, inputs) for inputs in chunks]
    head = forwards[0]
    out = model(
        inputs_embeds=head["inputs_embeds"][:1, :prefix],
        position_ids=head["position_ids"][:, :1, :prefix],
        use_cache=True,
    )
    layers = [(layer.keys, layer.values) for layer in output_cache(out).layers]
    results = []
    for inputs, forward in zip(chunks, forwards, strict=True):
        rows, width = inputs["input_ids"].shape
        cache = DynamicCache(
            [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in layers]
        )
        tail = model(
            inputs_embeds=forward["inputs_embeds"][:, prefix:],
            position_ids=forward["position_ids"][:, :, prefix:],
            **cache_kwargs(cache),
            cache_position=torch.arange(prefix, width, device=inputs["input_ids"].device),
            use_cache=True,
        )
        logits = torch.cat([out.logits.expand(rows, -1, -1), tail.logits], 1)
        results.append(scored(logits, inputs["input_ids"], banned, temperature))
    return results
