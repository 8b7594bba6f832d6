"""A turn's model inputs with each distinct frame preprocessed once.

The processor turns every image into patches (resize, rescale, normalise, patchify) each time it is
called. An RL step shows the same first-turn frames to every sample of a GRPO group, and an
evaluation shows a pool frame again whenever a retrieve lands on it, so `TurnEncoder` keeps each
frame's patches, keyed by the image's content, and only runs the image processor on frames it
has not seen. The text goes through the processor's tokenizer after each image placeholder has
been expanded to the frame's token count exactly as the processor expands it, and the modality of
each token (``mm_token_type_ids``: 0 text, 1 image, 2 video) is read off the ids as the processor
does, so the output equals the processor's own (a test checks it).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image


def image_key(image: Image.Image) -> tuple[Any, ...]:
    """Content key of a decoded frame (mode, size and a hash of its pixels)."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
    return (image.mode, image.size, digest)


class TurnEncoder:
    """``processor(text=..., images=...)`` with per-frame preprocessing cached (thread-safe)."""

    def __init__(self, processor: Any, max_frames: int = 4096) -> None:
        self.processor = processor
        self.max_frames = max_frames
        self.image_token = getattr(processor, "image_token", "<|image_pad|>")
        tok = processor.tokenizer
        self.image_token_id = tok.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tok.convert_tokens_to_ids("<|video_pad|>")
        self.merge = processor.image_processor.merge_size**2
        self._frames: OrderedDict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __call__(self, text: str, images: Sequence[Image.Image] | None) -> dict[str, Any]:
        """The processor's outputs (batch of one) for ``text`` with ``images`` in order."""
        images = list(images or [])
        with self._lock:
            keys = [image_key(image) for image in images]
            patches = self._patches(keys, images)
            expanded = self._expand(text, [grid for _, grid in patches])
            encoded = self.processor.tokenizer([expanded], return_tensors="pt")
        ids = encoded["input_ids"]
        mm = (ids == self.image_token_id).long() + 2 * (ids == self.video_token_id).long()
        out: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": encoded["attention_mask"],
            "mm_token_type_ids": mm,
        }
        out["image_keys"] = keys  # what each frame is, for callers that share prompts
        if patches:
            out["pixel_values"] = torch.cat([p for p, _ in patches])
            out["image_grid_thw"] = torch.stack([g for _, g in patches])
        return out

    def _patches(
        self, keys: list[tuple[Any, ...]], images: list[Image.Image]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        missing = [i for i, key in enumerate(keys) if key not in self._frames]
        self.hits += len(images) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = self.processor.image_processor(
                images=[images[i] for i in missing], return_tensors="pt"
            )
            offset = 0
            for i, grid in zip(missing, fresh["image_grid_thw"], strict=True):
                n = int(grid.prod())
                self._frames[keys[i]] = (fresh["pixel_values"][offset : offset + n], grid)
                offset += n
        found = []
        for key in keys:
            self._frames.move_to_end(key)
            found.append(self._frames[key])
        while len(self._frames) > self.max_frames:
            self._frames.popitem(last=False)
        return found

    def _expand(self, text: str, grids: list[torch.Tensor]) -> str:
        """Each image placeholder repeated to its frame's token count, as the processor does."""
        parts = text.split(self.image_token)
        if len(parts) - 1 != len(grids):
            raise ValueError(
                f"the prompt has {len(parts) - 1} image placeholders for {len(grids)} images"
            )
        pieces = [parts[0]]
        for grid, part in zip(grids, parts[1:], strict=True):
            pieces.append(self.image_token * (int(grid.prod()) // self.merge))
            pieces.append(part)
        return "".join(pieces)
