"""Qwen2.5-VL's rotary position embedding, the same on every transformers release vmtr supports.

Modules that replace or watch Qwen2.5-VL's attention (`vmtr.models.gta`, `vmtr.models.kv_sparse`)
rotate queries and keys themselves with the ``(cos, sin)`` tables the decoder hands each layer.
Those tables changed shape within transformers 5.x: older releases hand one table per M-RoPE
axis (``[3, batch, length, head_dim]``) and the attention interleaves the (time, height, width)
sections itself; newer ones interleave them in the rotary module and hand ``[batch, length,
head_dim]``. The function that applied them moved with it (``apply_multimodal_rotary_pos_emb``,
later ``apply_rotary_pos_emb``), so vmtr keeps this small copy of the arithmetic, which takes
either shape; a test checks it against whichever of the two the installed release has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The second half of the last axis, negated, before the first half."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def merge_mrope_sections(table: torch.Tensor, mrope_section: Sequence[int]) -> torch.Tensor:
    """``[3, batch, length, head_dim]`` per-axis tables -> one ``[batch, length, head_dim]``
    table whose consecutive chunks (``mrope_section`` sizes, repeated for the two halves of the
    rotary dimension) come from the time, height and width axes in turn."""
    chunks = table.split([int(n) for n in mrope_section] * 2, dim=-1)
    return torch.cat([chunk[i % 3] for i, chunk in enumerate(chunks)], dim=-1)


def mrope_section_of(config: Any) -> list[int] | None:
    """The M-RoPE section sizes a Qwen2.5-VL text config declares (None when it names none)."""
    for name in ("rope_parameters", "rope_scaling"):
        rope = getattr(config, name, None)
        if isinstance(rope, dict) and rope.get("mrope_section"):
            return list(rope["mrope_section"])
    return None


def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mrope_section: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q`` and ``k`` (``[batch, heads, length, head_dim]``) by the decoder's tables.

    ``mrope_section`` is needed only for per-axis (4-D) tables, which older releases hand over.
    """
    if cos.dim() == 4:
        if mrope_section is None:
            raise ValueError("per-axis rotary tables need the config's mrope_section to merge")
        cos = merge_mrope_sections(cos, mrope_section)
        sin = merge_mrope_sections(sin, mrope_section)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
