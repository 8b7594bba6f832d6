"""Auxiliary needle loss on the vision tower's merged tokens, for the synthetic warm start.

Why: measured on the warm start (`recipes/tiny/reading_anatomy.py`), the language model's attention
finds the named frame and the needle's cells, but those tokens carry the needle's colour only
weakly (a linear probe reads it 63-65 % of the time, while the raw pixels give it every time),
and the colour word stays near chance. A real VLM starts from a pretrained vision encoder whose
tokens already separate colours and shapes; the tiny model's tower learns only through the
language loss, a few content tokens per episode. This loss gives each merged token a direct
target: which needle colour and shape (or none) covers its cell. The linear heads are training
scaffolding, kept in the trainer state and never saved with the model.

A cell sees only part of a needle, which is enough for its colour but not its shape: the cell
loss leaves shapes near chance, while a head on each frame's max-pooled tokens (`pooled_frames`)
learns shapes to 99 % on the same tower (`recipes/tiny/shape_tower.py`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from vmtr.policies.conversation import IGNORE

MIN_COVER = 0.2
"""A cell is labelled with the needle when the needle's box covers at least this share of it;
cells it covers less (but some) are left out of the loss rather than called empty."""


def cell_labels(
    needles: Sequence[dict[str, Any]],
    frame_px: int,
    grid: tuple[int, int],
    colours: Sequence[str],
    shapes: Sequence[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour and shape class per merged-token cell of one frame, in raster order.

    Class 0 is "no needle"; ``1 + colours.index(c)`` and ``1 + shapes.index(s)`` name a needle.
    ``needles`` are those shown on this frame, boxes ``[x0, y0, x1, y1]`` in ``frame_px`` units.
    """
    rows, cols = grid
    colour = torch.zeros(rows * cols, dtype=torch.long)
    shape = torch.zeros(rows * cols, dtype=torch.long)
    cell_w, cell_h = frame_px / cols, frame_px / rows
    for needle in needles:
        x0, y0, x1, y1 = needle["box"]
        for gy in range(rows):
            for gx in range(cols):
                w = min(x1, (gx + 1) * cell_w) - max(x0, gx * cell_w)
                h = min(y1, (gy + 1) * cell_h) - max(y0, gy * cell_h)
                if w <= 0 or h <= 0:
                    continue
                k = gy * cols + gx
                if w * h >= MIN_COVER * cell_w * cell_h:
                    colour[k] = 1 + list(colours).index(needle["colour"])
                    shape[k] = 1 + list(shapes).index(needle["shape"])
                elif colour[k] == 0:
                    colour[k] = shape[k] = IGNORE
    return colour, shape


def example_labels(
    needles: Sequence[dict[str, Any]],
    frames: Sequence[int],
    grid_thw: torch.Tensor,
    merge: int,
    frame_px: int,
    colours: Sequence[str],
    shapes: Sequence[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per merged token of an example's images (``frames``: their pool indices, in order)."""
    colour, shape = [], []
    for pool_index, (t, h, w) in zip(frames, grid_thw.tolist(), strict=True):
        shown = [n for n in needles if n["pool_index"] == pool_index]
        c, s = cell_labels(shown, frame_px, (h // merge, w // merge), colours, shapes)
        colour.append(c.repeat(t))
        shape.append(s.repeat(t))
    return torch.cat(colour), torch.cat(shape)


def merged_sizes(grid_thw: torch.Tensor, merge: int) -> list[int]:
    """Merged tokens per image, to split the tower's output back into images."""
    return [int(t * h * w) // (merge * merge) for t, h, w in grid_thw.tolist()]


def max_pool_images(tokens: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """One vector per image: the max over its merged tokens (``sizes`` of them, in order)."""
    return torch.stack([part.max(0).values for part in tokens.split(list(sizes))])


def balanced_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Needle rows and empty rows (class 0) each count half, so the few needle rows are not
    drowned by the many empty ones; IGNORE rows count nothing."""
    total = logits.new_zeros(())
    for part in (labels > 0, labels == 0):
        if part.any():
            total = total + 0.5 * nn.functional.cross_entropy(logits[part], labels[part])
    return total


class NeedleHeads(nn.Module):
    """Linear colour and shape classifiers over merged visual tokens (one per cell)."""

    def __init__(self, hidden: int, n_colours: int, n_shapes: int) -> None:
        super().__init__()
        self.colour = nn.Linear(hidden, n_colours + 1)
        self.shape = nn.Linear(hidden, n_shapes + 1)
        # Zero init: the loss starts at chance and its first gradients reach only the heads, so
        # a fresh head does not jolt a trained tower (default init measured 6.3 against 3.6).
        for layer in (self.colour, self.shape):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def loss(self, tokens: torch.Tensor, colour: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """Cell level: each merged token against the needle covering its cell."""
        tokens = tokens.float()
        return balanced_cross_entropy(self.colour(tokens), colour) + balanced_cross_entropy(
            self.shape(tokens), shape
        )


@contextmanager
def capture_merged_tokens(visual: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the vision tower's merged tokens (``pooler_output``) of every forward inside."""
    seen: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        seen.append(output.pooler_output if hasattr(output, "pooler_output") else output)

    handle = visual.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def pooled_frames(visual: nn.Module, processor: Any, images: Sequence[Any]) -> torch.Tensor:
    """One vector per image: its merged tokens max-pooled, the frame exactly as the agent feeds
    it. What the vision probes (`recipes/tiny/probe_vision.py`, `recipes/tiny/shape_tower.py`) classify."""
    enc = processor.image_processor(images=list(images), return_tensors="pt")
    out = visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"])
    tokens = out.pooler_output if hasattr(out, "pooler_output") else out
    return max_pool_images(tokens, merged_sizes(enc["image_grid_thw"], visual.spatial_merge_size))
