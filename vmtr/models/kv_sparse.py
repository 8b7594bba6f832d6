"""Chunk-by-chunk prefill and a bi-level KV cache for long videos (Video-XL-2, arXiv 2506.19225).

**Chunked prefill.** The frames of a long first turn are grouped into chunks of
``frames_per_chunk`` frames. Each chunk is run through the transformers Qwen2.5-VL model on its
own, with a ``DynamicCache`` that holds only what the chunk may see — the text before the video,
the timestamp tokens of every earlier chunk (in vmtr the long mode's ``frame_idx:s-e`` label
before every group of frames, 4 by default, plays the part of Video-XL-2's "Time t s:" tokens;
any text between images counts) and the full KV (visual tokens and vision start/end
markers) of the previous ``window`` chunks — plus a 4-D mask that is causal inside the chunk and
open on that context. Nothing outside the window is computed: the visual work grows linearly with
the number of frames and peak memory is bounded by the window plus what is kept (pooled visual
KV and the timestamps, a few tokens per frame). The timestamps that every chunk sees are the one
term that still grows quadratically, with a small constant. The released Video-XL-2 code masks
a dense attention instead, which computes everything.

**Bi-level KV.** After a chunk is prefilled, its visual K/V are average-pooled by ``pool_factor``
(2x2 spatial blocks within a frame when the factor is a square, else runs along the row) while
its text (timestamp and marker) K/V are kept whole. The dense visual K/V go to a `DenseStore`
(CPU memory or files on disk) and come back only for the chunks chosen as relevant. The decoding
cache is then: prefix, and per chunk its text plus either its pooled or its dense visual K/V.
With ``proportional`` (the default) a pooled key's attention logit gets ``log c``, c the tokens it
averages, through the same additive 4-D mask: it then draws the attention its c near-identical
sources would, instead of 1/c of it, so pooling does not tilt attention from the video to the
text. This departs from Video-XL-2 (which does not say it does this). On the trained tiny model
without it, pooled KV threw most replies into repetition loops (0 of 40 synthetic questions
answered right against 6 dense); with it, 30 of 40 answers equal the dense ones.

**Positions.** Keys are cached *after* RoPE, at their true M-RoPE positions (the ones
``get_rope_index`` gives the whole sequence): this is what transformers' attention writes into the
cache, so prefill needs no hook into the model. A pooled key is then the mean of rotated keys at
neighbouring positions — for a 2x2 block, the same temporal position and height/width positions
one apart — which is the rotated mean key at the block centre up to a damping of the highest
rotary frequencies. Video-XL-2 instead caches keys before RoPE and re-rotates them at compacted
positions. vmtr does not, because a chunk can turn dense later (a retrieve): with true positions,
a dense chunk slots back in without moving any other key, the question and the reply keep the
positions a dense prefill would give them, and a cache with every chunk dense is exactly the
dense cache (the equality test checks this).

**Relevance** (which chunks get dense KV) comes from the agent's ``<retrieve>`` range, the
segment store's similarity of each frame to the question, or the model's own attention from the
question's tokens to each chunk's pooled keys (`attention_relevance`); see `vmtr.models.sparse_lm`.
"""

from __future__ import annotations

import math
import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from transformers import DynamicCache

from vmtr.models.cache_names import cache_kwargs
from vmtr.models.rotary import apply_rotary, mrope_section_of

KV = tuple[torch.Tensor, torch.Tensor]
"""Keys and values of one layer, each [batch, kv_heads, tokens, head_dim]."""


class SparseSettings(BaseModel):
    """How the long-context encoder chunks, pools and chooses dense chunks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frames_per_chunk: int = Field(4, ge=1, description="Frames prefilled together as one chunk.")
    window: int = Field(3, ge=0, description="Earlier chunks whose visual KV a chunk attends to.")
    pool_factor: int = Field(4, ge=1, description="Visual tokens averaged into one pooled token.")
    relevance: Literal["retrieve", "store", "attention"] = Field(
        "attention",
        description="Who picks turn 1's dense chunks: the model's attention from the question, "
        "the segment store, or nobody (retrieve: all pooled until the agent retrieves). The "
        "agent's retrieves add dense chunks under every choice.",
    )
    top_k: int = Field(2, ge=0, description="Dense chunks chosen per decision.")
    offload: Literal["cpu", "disk"] = Field("cpu", description="Where unchosen dense KV waits.")
    proportional: bool = Field(
        True, description="Add log(tokens averaged) to a pooled key's attention logit."
    )


# -- where each chunk lies in the token sequence ----------------------------------------------


@dataclass(frozen=True)
class ChunkSpan:
    """One chunk: its token range, which of its tokens are visual, and its frames."""

    start: int
    end: int
    frames: tuple[int, ...]  # ordinal of each image (0 = first image of the turn)
    visual: torch.Tensor  # [end - start] bool, True for image tokens
    marker: torch.Tensor  # [end - start] bool, True for vision start/end markers
    grids: tuple[tuple[int, int], ...]  # merged (height, width) token grid of each frame


@dataclass(frozen=True)
class Layout:
    """The video block of a sequence: text before it, its chunks, and where it ends."""

    prefix_end: int
    chunks: tuple[ChunkSpan, ...]

    @property
    def end(self) -> int:
        return self.chunks[-1].end if self.chunks else self.prefix_end


def image_runs(mm_types: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each run of image tokens (mm type 1) in a [L] type row."""
    is_image = (mm_types == 1).to(torch.int8)
    edges = torch.diff(is_image, prepend=is_image.new_zeros(1), append=is_image.new_zeros(1))
    starts = torch.nonzero(edges == 1).flatten().tolist()
    ends = torch.nonzero(edges == -1).flatten().tolist()
    return list(zip(starts, ends, strict=True))


def plan_chunks(
    mm_types: torch.Tensor,
    grids: torch.Tensor,
    merge: int,
    frames_per_chunk: int,
    ids: torch.Tensor | None = None,
    marker_ids: Sequence[int] = (),
) -> Layout:
    """Cut the sequence's images into chunks of ``frames_per_chunk`` frames.

    Chunk 0 starts at the first image token; chunk c > 0 starts right after chunk c-1's last
    image, so it owns the labels of its own frames (a group label, before a group's first frame,
    belongs to that frame's chunk; frame 0's label lies in the prefix). Each image must have one temporal grid step
    (vmtr sends every frame as its own image). Tokens of ``ids`` in ``marker_ids`` (the vision
    start/end markers) are marked: they carry no time, so later chunks need not see them.
    """
    row = mm_types.reshape(-1)
    markers = torch.zeros_like(row, dtype=torch.bool)
    if ids is not None:
        for marker in marker_ids:
            markers |= ids.reshape(-1) == marker
    runs = image_runs(row)
    if len(runs) != len(grids):
        raise ValueError(f"{len(runs)} image token runs but {len(grids)} image grids")
    if not runs:
        return Layout(prefix_end=int(row.shape[0]), chunks=())
    chunks = []
    for first in range(0, len(runs), frames_per_chunk):
        last = min(first + frames_per_chunk, len(runs)) - 1
        start = runs[0][0] if first == 0 else runs[first - 1][1]
        end = runs[last][1]
        hw = []
        for g in grids[first : last + 1]:
            t, h, w = (int(x) for x in g)
            if t != 1:
                raise ValueError("kv-sparse expects one frame per image (temporal grid 1)")
            hw.append((h // merge, w // merge))
        chunks.append(
            ChunkSpan(
                start=start,
                end=end,
                frames=tuple(range(first, last + 1)),
                visual=(row[start:end] == 1).clone(),
                marker=markers[start:end].clone(),
                grids=tuple(hw),
            )
        )
    return Layout(prefix_end=runs[0][0], chunks=tuple(chunks))


# -- pooling ----------------------------------------------------------------------------------


def pool_kernel(factor: int, height: int, width: int) -> tuple[int, int]:
    """2-D kernel for ``factor``: square blocks when possible, else runs along the row."""
    side = math.isqrt(factor)
    if side * side == factor and height >= side and width >= side:
        return side, side
    return 1, min(factor, width)


def pool_frames(x: torch.Tensor, grids: Sequence[tuple[int, int]], factor: int) -> torch.Tensor:
    """Average the visual tokens of each frame in blocks; x is [B, H, T, D], frames in order."""
    if factor == 1:
        return x
    pieces = []
    offset = 0
    for height, width in grids:
        n = height * width
        frame = x[:, :, offset : offset + n]
        offset += n
        b, heads, _, dim = frame.shape
        grid = frame.permute(0, 1, 3, 2).reshape(b * heads, dim, height, width)
        kh, kw = pool_kernel(factor, height, width)
        pooled = F.avg_pool2d(grid, (kh, kw), stride=(kh, kw), ceil_mode=True)
        pieces.append(pooled.reshape(b, heads, dim, -1).permute(0, 1, 3, 2))
    return torch.cat(pieces, dim=2)


def pool_counts(grids: Sequence[tuple[int, int]], factor: int) -> torch.Tensor:
    """How many visual tokens each pooled token of `pool_frames` averages (edges hold fewer)."""
    pieces = []
    for height, width in grids:
        ones = torch.ones(1, 1, height, width)
        if factor == 1:
            pieces.append(ones.flatten())
            continue
        kh, kw = pool_kernel(factor, height, width)
        sums = F.avg_pool2d(ones, (kh, kw), stride=(kh, kw), ceil_mode=True, divisor_override=1)
        pieces.append(sums.flatten())
    return torch.cat(pieces)


def bias_mask(bias: torch.Tensor, cached: int, new: int, dtype: torch.dtype, device: Any) -> Any:
    """[1, 1, new, cached + new] additive mask for ``new`` tokens over a cache of ``cached``:
    ``bias`` on the first keys (log counts of pooled keys), causal among the new tokens."""
    mask = torch.zeros(new, cached + new, dtype=dtype, device=device)
    mask[:, : bias.shape[0]] = bias.to(device, dtype)
    blocked = torch.ones(new, new, dtype=torch.bool, device=device).triu(1)
    mask[:, cached:].masked_fill_(blocked, torch.finfo(dtype).min)
    return mask[None, None]


# -- where dense KV waits ---------------------------------------------------------------------


class DenseStore:
    """Dense visual KV of every chunk, on CPU or in files, until a chunk is chosen."""

    def __init__(self, mode: Literal["cpu", "disk"] = "cpu", folder: str | Path | None = None):
        self.mode = mode
        self._memory: dict[int, list[KV]] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.folder: Path | None = None
        if mode == "disk":
            if folder is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="vmtr-kv-")
                folder = self._tmp.name
            self.folder = Path(folder)
            self.folder.mkdir(parents=True, exist_ok=True)

    def put(self, chunk: int, kv: list[KV]) -> None:
        cpu = [(k.detach().to("cpu"), v.detach().to("cpu")) for k, v in kv]
        if self.folder is not None:
            torch.save(cpu, self.folder / f"chunk{chunk}.pt")
        else:
            self._memory[chunk] = cpu

    def get(self, chunk: int, device: torch.device | str = "cpu") -> list[KV]:
        if self.folder is not None:
            kv = torch.load(self.folder / f"chunk{chunk}.pt", mmap=True, weights_only=True)
        else:
            kv = self._memory[chunk]
        return [(k.to(device), v.to(device)) for k, v in kv]

    def close(self) -> None:
        """Drop everything (and the temporary folder)."""
        self._memory.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# -- the chunked prefill ----------------------------------------------------------------------


@dataclass
class ChunkKV:
    """What is kept of one chunk per layer: timestamp, marker and pooled visual KV."""

    span: ChunkSpan
    text: list[KV]
    marks: list[KV]
    pooled: list[KV]
    dense_tokens: int
    counts: torch.Tensor  # visual tokens behind each pooled token


@dataclass
class VideoKV:
    """The prefilled video block: prefix KV, per-chunk KV and the dense store."""

    layout: Layout
    prefix: list[KV]
    chunks: list[ChunkKV]
    store: DenseStore
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def layers(self) -> int:
        return len(self.prefix)

    def build_cache(self, dense: Sequence[int] = (), config: Any = None) -> DynamicCache:
        """The decoding cache: prefix, then per chunk its timestamps and pooled or dense KV."""
        chosen = set(dense)
        per_layer: list[list[KV]] = [[kv] for kv in self.prefix]
        for i, chunk in enumerate(self.chunks):
            visual = self.store.get(i, self.device) if i in chosen else chunk.pooled
            for layer in range(self.layers):
                per_layer[layer].append(chunk.text[layer])
                per_layer[layer].append(chunk.marks[layer])
                per_layer[layer].append(visual[layer])
        return cache_from(per_layer, config)

    def key_bias(self, dense: Sequence[int] = ()) -> torch.Tensor:
        """Per key of `build_cache(dense)`: log of the tokens it stands for (0 unless pooled).

        A pooled key averages ``c`` keys; adding ``log c`` to its logit lets it draw the
        attention ``c`` near-identical keys would (proportional attention, as in token merging),
        so pooling does not shift attention from the video to the text.
        """
        chosen = set(dense)
        pieces = [torch.zeros(_tokens(self.prefix[0]))]
        for i, chunk in enumerate(self.chunks):
            pieces.append(torch.zeros(_tokens(chunk.text[0]) + _tokens(chunk.marks[0])))
            if i in chosen:
                pieces.append(torch.zeros(chunk.dense_tokens))
            else:
                pieces.append(chunk.counts.log())
        return torch.cat(pieces)

    def visual_slots(self, dense: Sequence[int] = ()) -> list[tuple[int, int]]:
        """[start, end) of each chunk's visual keys inside `build_cache`'s cache."""
        chosen = set(dense)
        slots = []
        pos = _tokens(self.prefix[0])
        for i, chunk in enumerate(self.chunks):
            pos += _tokens(chunk.text[0]) + _tokens(chunk.marks[0])
            n = chunk.dense_tokens if i in chosen else _tokens(chunk.pooled[0])
            slots.append((pos, pos + n))
            pos += n
        return slots

    def kv_bytes(self, dense: Sequence[int] = ()) -> int:
        """Bytes of K and V in `build_cache(dense)`'s cache (all layers)."""
        chosen = set(dense)
        per_token = _bytes_per_token(self.prefix)
        tokens = _tokens(self.prefix[0])
        for i, chunk in enumerate(self.chunks):
            tokens += _tokens(chunk.text[0]) + _tokens(chunk.marks[0])
            tokens += chunk.dense_tokens if i in chosen else _tokens(chunk.pooled[0])
        return tokens * per_token

    def dense_bytes(self) -> int:
        """Bytes the same video block takes with every chunk dense."""
        return self.kv_bytes(range(len(self.chunks)))

    def chunk_of_frame(self) -> list[int]:
        """Chunk index of each image ordinal."""
        return [i for i, c in enumerate(self.chunks) for _ in c.span.frames]


def _tokens(kv: KV) -> int:
    return int(kv[0].shape[-2])


def _bytes_per_token(layers: list[KV]) -> int:
    total = 0
    for k, v in layers:
        total += (
            k.shape[1] * k.shape[3] * k.element_size() + v.shape[1] * v.shape[3] * v.element_size()
        )
    return total


def cache_from(per_layer: list[list[KV]], config: Any = None) -> DynamicCache:
    """A DynamicCache holding the concatenation of each layer's KV pieces."""
    cache = DynamicCache(config=config) if config is not None else DynamicCache()
    for layer, pieces in enumerate(per_layer):
        kept = [(k, v) for k, v in pieces if k.shape[-2]]
        if kept:
            keys = torch.cat([k for k, _ in kept], dim=-2)
            cache.update(keys, torch.cat([v for _, v in kept], dim=-2), layer)
    return cache


def _layer_kv(cache: DynamicCache, start: int) -> list[KV]:
    return [(layer.keys[:, :, start:], layer.values[:, :, start:]) for layer in cache.layers]


def chunk_mask(context: int, length: int, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """[1, 1, length, context + length] additive mask: context open, causal inside the chunk."""
    mask = torch.zeros(length, context + length, dtype=dtype, device=device)
    blocked = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    mask[:, context:].masked_fill_(blocked, torch.finfo(dtype).min)
    return mask[None, None]


def _mask_map(model: Any, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same 4-D mask for every attention type the decoder has (a dict skips its own masks)."""
    types = getattr(model.config.get_text_config(), "layer_types", None) or ["full_attention"]
    return dict.fromkeys(set(types), mask)


def _text_model(model: Any) -> Any:
    """The Qwen2.5-VL base model (vision tower + text decoder, no LM head)."""
    return model.model


@torch.inference_mode()
def chunked_prefill(
    model: Any,
    inputs: dict[str, torch.Tensor],
    positions: torch.Tensor,
    settings: SparseSettings,
    *,
    store: DenseStore | None = None,
    layout: Layout | None = None,
    pixels: Callable[[int, int], torch.Tensor] | None = None,
) -> VideoKV:
    """Prefill the text before the video and the video itself, chunk by chunk.

    ``inputs`` are the processor's outputs for the whole sequence (``input_ids``,
    ``mm_token_type_ids``, ``image_grid_thw`` and ``pixel_values``); ``positions`` the [3, 1, L]
    M-RoPE positions of the whole sequence. Tokens after the last image are not prefilled here.
    ``pixels(a, b)``, when given, returns the pixel values of images a..b-1 instead, so the pixels
    of thousands of frames never have to be in memory at once.
    """
    base = _text_model(model)
    device = next(model.parameters()).device
    ids = inputs["input_ids"]
    mm = inputs["mm_token_type_ids"]
    grids = inputs["image_grid_thw"]
    merge = model.config.vision_config.spatial_merge_size
    markers = (model.config.vision_start_token_id, model.config.vision_end_token_id)
    layout = layout or plan_chunks(mm[0], grids, merge, settings.frames_per_chunk, ids[0], markers)
    store = store or DenseStore(settings.offload)
    dtype = next(base.language_model.parameters()).dtype
    patch_offsets = [0]
    for g in grids:
        patch_offsets.append(patch_offsets[-1] + int(g.prod()))

    def run(start: int, end: int, context: list[list[KV]], frames: Sequence[int]) -> list[KV]:
        cache = cache_from(context, model.config)
        seen = cache.get_seq_length()
        mask = chunk_mask(seen, end - start, dtype, device)
        kwargs: dict[str, Any] = {}
        if frames:
            a, b = frames[0], frames[-1] + 1
            chunk_pixels = (
                pixels(a, b)
                if pixels is not None
                else inputs["pixel_values"][patch_offsets[a] : patch_offsets[b]]
            )
            kwargs["pixel_values"] = chunk_pixels.to(device)
            kwargs["image_grid_thw"] = grids[a:b].to(device)
        base(
            input_ids=ids[:, start:end].to(device),
            mm_token_type_ids=mm[:, start:end].to(device),
            position_ids=positions[:, :, start:end].to(device),
            **cache_kwargs(cache),
            attention_mask=_mask_map(model, mask),
            use_cache=True,
            **kwargs,
        )
        return _layer_kv(cache, seen)

    layers = model.config.text_config.num_hidden_layers
    prefix = run(0, layout.prefix_end, [[] for _ in range(layers)], ())
    stamps: list[list[KV]] = [[] for _ in range(layers)]  # timestamp KV of every chunk so far
    # markers and dense visual KV of the chunks in the window
    recent: deque[tuple[list[KV], list[KV]]] = deque(maxlen=settings.window)
    chunks: list[ChunkKV] = []
    for index, span in enumerate(layout.chunks):
        context = [[prefix[layer], *stamps[layer]] for layer in range(layers)]
        for marks, visual in recent:
            for layer in range(layers):
                context[layer].append(marks[layer])
                context[layer].append(visual[layer])
        new = run(span.start, span.end, context, span.frames)
        vis = span.visual.to(device)
        mark = span.marker.to(device)
        stamp = ~(vis | mark)
        text_kv = [(k[:, :, stamp], v[:, :, stamp]) for k, v in new]
        mark_kv = [(k[:, :, mark], v[:, :, mark]) for k, v in new]
        dense_kv = [(k[:, :, vis], v[:, :, vis]) for k, v in new]
        pooled = [
            (
                pool_frames(k, span.grids, settings.pool_factor),
                pool_frames(v, span.grids, settings.pool_factor),
            )
            for k, v in dense_kv
        ]
        store.put(index, dense_kv)
        if settings.window:
            recent.append((mark_kv, dense_kv))
        for layer in range(layers):
            stamps[layer].append(text_kv[layer])
        counts = pool_counts(span.grids, settings.pool_factor)
        chunks.append(ChunkKV(span, text_kv, mark_kv, pooled, int(vis.sum()), counts))
        del new, dense_kv
    return VideoKV(layout=layout, prefix=prefix, chunks=chunks, store=store, device=device)


# -- relevance from the model's own attention -------------------------------------------------


@torch.inference_mode()
def attention_relevance(
    model: Any,
    video: VideoKV,
    tail: dict[str, torch.Tensor],
    layers: Sequence[int] | None = None,
    proportional: bool = True,
) -> list[float]:
    """Attention mass from the tail's tokens (the question) to each chunk's pooled keys.

    Runs the tail once over the all-pooled cache, captures each chosen layer's rotated queries
    (a pre-hook on the attention module sees its input and the model's own cos/sin) and averages,
    over heads, query tokens and layers, the softmax weight that falls on each chunk's visual keys.
    """
    decoder = _text_model(model).language_model
    n_layers = len(decoder.layers)
    chosen = list(layers) if layers is not None else list(range(n_layers // 2, n_layers))
    queries: dict[int, torch.Tensor] = {}

    def hook_for(index: int) -> Any:
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            cos, sin = kwargs["position_embeddings"]
            b, t, _ = hidden.shape
            q = module.q_proj(hidden).view(b, t, -1, module.head_dim).transpose(1, 2)
            queries[index], _ = apply_rotary(q, q, cos, sin, mrope_section_of(module.config))

        return hook

    handles = [
        decoder.layers[i].self_attn.register_forward_pre_hook(hook_for(i), with_kwargs=True)
        for i in chosen
    ]
    cache = video.build_cache((), model.config)
    bias = video.key_bias(()) if proportional else torch.zeros(0)
    if proportional:
        dtype = next(decoder.parameters()).dtype
        n = int(tail["input_ids"].shape[1])
        tail = {
            **tail,
            "attention_mask": _mask_map(
                model, bias_mask(bias, cache.get_seq_length(), n, dtype, bias.device)
            ),
        }
    try:
        model(**tail, **cache_kwargs(cache), use_cache=True, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    slots = video.visual_slots(())
    end = slots[-1][1] if slots else 0
    totals = torch.zeros(len(slots))
    for i in chosen:
        q = queries[i][0].float()  # [heads, tail, dim]
        keys = cache.layers[i].keys[0, :, :end].float()  # [kv_heads, keys, dim]
        groups = q.shape[0] // keys.shape[0]
        mass = torch.zeros(end)
        for head in range(q.shape[0]):  # one head at a time keeps the score matrix small
            scores = q[head] @ keys[head // groups].T / math.sqrt(q.shape[-1])
            if proportional:
                scores = scores + bias[:end].to(scores.device)
            mass += torch.softmax(scores, dim=-1).mean(dim=0).cpu()
        mass /= q.shape[0]
        totals += torch.stack([mass[a:b].sum() for a, b in slots])
    return (totals / len(chosen)).tolist()


def top_chunks(scores: Sequence[float], k: int, among: Sequence[int] | None = None) -> list[int]:
    """The ``k`` best-scored chunk indices (restricted to ``among``), in order."""
    candidates = list(among) if among is not None else list(range(len(scores)))
    ranked = sorted(candidates, key=lambda i: (-scores[i], i))
    return sorted(ranked[:k])
