"""Frames for training: each item's pool decoded once, at the inference backend's pixel budget,
and kept on disk as one uint8 array (decoding costs more than a tiny model's step)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from recipes.tiny.curriculum.episodes import MULTI_TURN
from vmtr.config import ModelSettings
from vmtr.eval.datasets import QAItem
from vmtr.models.qwen import QwenVideoLM
from vmtr.tools import video as video_tools


def decode_pool(video: Path, budget: dict[str, int]) -> tuple[list[float], np.ndarray]:
    """The agent's frame pool of ``video``: timestamps and frames as one uint8 array.

    Frames are resized with the backend's pixel budget, so they equal what the agent would feed
    the model.
    """
    info = video_tools.probe(video)
    pool = video_tools.pool_timestamps(
        info, max_frames=MULTI_TURN.pool_size, max_fps=MULTI_TURN.pool_max_fps
    )
    images = video_tools.decode_at(video, pool, **budget)
    return pool, np.stack([np.asarray(im.convert("RGB")) for im in images])


def backend_pixel_budget(model: Any, processor: Any) -> dict[str, int]:
    """The frame size the inference backend would use for ``model``, so training frames equal
    what the agent feeds it."""
    return QwenVideoLM(model, processor, ModelSettings(model="sft")).pixel_budget


@dataclass
class CachedItem:
    """A training item whose pool is decoded on first use and kept on disk as ``.npz``."""

    item: QAItem
    cache_dir: Path
    budget: dict[str, int]
    _pool: list[float] | None = field(default=None, repr=False)
    _frames: np.ndarray | None = field(default=None, repr=False)

    def _load(self) -> None:
        path = self.cache_dir / f"{self.item.id}.npz"
        if not path.exists():
            pool, frames = decode_pool(self.item.video, self.budget)
            tmp = path.with_name(f".{path.stem}.tmp.npz")
            np.savez(tmp, pool=np.asarray(pool, dtype=np.float64), frames=frames)
            tmp.replace(path)
        with np.load(path) as data:
            self._pool = [float(t) for t in data["pool"]]
            self._frames = data["frames"]

    @property
    def pool(self) -> list[float]:
        if self._pool is None:
            self._load()
        return self._pool  # type: ignore[return-value]

    def images(self, indices: Sequence[int]) -> list[Image.Image]:
        if self._frames is None:
            self._load()
        frames = self._frames
        assert frames is not None
        return [Image.fromarray(frames[i]) for i in indices]

    def release(self) -> None:
        """Drop the frames from memory (they stay on disk)."""
        self._frames = None
