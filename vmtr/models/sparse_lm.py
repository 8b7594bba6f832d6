"""`SparseVideoLM`: a `VideoLM` whose first turn takes hundreds of frames as bi-level KV.

It wraps a `QwenVideoLM` (same model, processor, sampling and stop tokens) and changes only how
the video is held: the first user message's frames are prefilled chunk by chunk
(`vmtr.models.kv_sparse.chunked_prefill`) and kept as pooled KV. In the long-context mode later
turns send no images (images that do come later, as with the default protocol's retrieves, are
prefilled densely after the video, as `QwenVideoLM` would). Instead, a message may carry control
parts that this wrapper reads and strips before the chat template sees them:

- ``{"type": "dense", "start": s, "end": e}``: make the chunks holding pool frames s..e dense
  (at most ``top_k`` of them, the best scored when scores exist) — what a ``<retrieve>`` becomes;
- ``{"type": "scores", "values": [...]}``: one relevance score per pool frame (the segment
  store's), used when ``relevance="store"``.

With ``relevance="attention"`` (the default) the model's own attention from the question to each
chunk's pooled keys picks ``top_k`` dense chunks on turn 1; with ``"store"`` the scores do; with
``"retrieve"`` turn 1 is all pooled and only the agent's retrieves make chunks dense (a model
that answers at once then reads pooled KV only: 88 % against 100 % dense on 200 held-out colour
questions at 64 frames, where the attention's picks keep all 100 %). Whenever the
dense set changes, the cache is rebuilt from the kept video KV and the text after the video (a few
hundred tokens) is prefilled again over it, so every token is always computed over one
consistent cache. Positions come from ``get_rope_index`` over the whole sequence, as in
`QwenVideoLM`, so the question and replies sit where a dense prefill would put them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vmtr.config import GenerationSettings
from vmtr.models.cache_names import cache_kwargs
from vmtr.models.kv_sparse import (
    SparseSettings,
    VideoKV,
    _mask_map,
    attention_relevance,
    bias_mask,
    chunked_prefill,
    image_runs,
    top_chunks,
)
from vmtr.models.qwen import MAX_SESSIONS, QwenVideoLM
from vmtr.models.vlm import FrameFetcher, Generation
from vmtr.protocol import frames_in

CONTROL_PARTS = ("dense", "scores")


def strip_controls(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages without this wrapper's control parts (what the chat template sees)."""
    clean = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [p for p in content if p.get("type") not in CONTROL_PARTS]
            message = {**message, "content": content}
        clean.append(message)
    return clean


def controls(messages: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Every control part of one kind, in order."""
    found = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            found.extend(p for p in content if p.get("type") == kind)
    return found


def split_at_images(text: str, n_images: int, per_piece: int) -> list[tuple[str, tuple[int, int]]]:
    """Cut a templated prompt after every ``per_piece``-th image's ``<|vision_end|>``.

    Special tokens always stand alone in tokenization, so the pieces tokenize to exactly the
    whole text's tokens; processing them one by one keeps only one chunk's pixels in memory.
    Returns (text piece, [first, end) image ordinals) pairs.
    """
    marker = "<|vision_end|>"
    pieces: list[tuple[str, tuple[int, int]]] = []
    start, seen, first = 0, 0, 0
    pos = text.find(marker)
    while pos != -1 and seen < n_images:
        seen += 1
        if seen % per_piece == 0 or seen == n_images:
            cut = pos + len(marker)
            pieces.append((text[start:cut], (first, seen)))
            start, first = cut, seen
        pos = text.find(marker, pos + len(marker))
    if seen != n_images:
        raise ValueError(f"the prompt has {seen} images' end markers for {n_images} images")
    if start < len(text):
        pieces.append((text[start:], (n_images, n_images)))
    return pieces


@dataclass
class _Session:
    """One episode: the sequence so far, the kept video KV and the live decoding cache."""

    text: str = ""
    ids: torch.Tensor | None = None
    mm_types: torch.Tensor | None = None
    grids: torch.Tensor | None = None
    frames: list[int] = field(default_factory=list)  # pool index of each image
    video: VideoKV | None = None
    scores: list[float] | None = None  # per chunk
    scored: bool = False
    dense: tuple[int, ...] = ()
    cache: Any = None
    cache_dense: tuple[int, ...] | None = None
    cached_upto: int = 0  # tokens of the sequence the cache holds
    later: list[torch.Tensor] = field(default_factory=list)  # pixels of each later-turn image
    bias: torch.Tensor | None = None  # log counts of pooled keys in the cache, if any

    @property
    def length(self) -> int:
        return 0 if self.ids is None else int(self.ids.shape[1])


class SparseVideoLM:
    """`VideoLM` over a `QwenVideoLM` with chunked prefill and bi-level KV for the first turn."""

    def __init__(self, base: QwenVideoLM, settings: SparseSettings | None = None) -> None:
        self.base = base
        self.model = base.model
        self.processor = base.processor
        self.sparse = settings or SparseSettings()
        self.name = f"{base.name}+kv-sparse"
        self.device = base.device
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self.last_stats: dict[str, Any] = {}

    @property
    def pixel_budget(self) -> dict[str, int]:
        return self.base.pixel_budget

    def end_session(self, session: str) -> None:
        state = self._sessions.pop(session, None)
        if state is not None and state.video is not None:
            state.video.store.close()

    # -- one turn ---------------------------------------------------------------------------

    def generate(
        self,
        messages: Sequence[dict[str, Any]],
        frames: FrameFetcher,
        *,
        settings: GenerationSettings,
        session: str | None = None,
    ) -> Generation:
        """Reply to ``messages``; the first call with images prefills them as bi-level KV."""
        started = time.perf_counter()
        text = self.processor.apply_chat_template(
            strip_controls(messages), add_generation_prompt=True, tokenize=False
        )
        state = self._sessions.get(session) if session is not None else None
        if state is None or not text.startswith(state.text):
            if state is not None and state.video is not None:
                state.video.store.close()
            state = self._first_turn(messages, frames, text)
        else:
            self._later_turn(state, messages, frames, text)
        state.text = text
        state.dense = self._dense_set(state, messages)
        prompt_tokens = state.length
        new_prompt = state.length - state.cached_upto
        generated, logprobs = self._decode(state, settings)
        reply = self.processor.tokenizer.decode(
            [t for t in generated if t not in self.base.stop_ids], skip_special_tokens=False
        )
        closing = generated[:-1] if generated and generated[-1] in self.base.stop_ids else generated
        self._extend(state, torch.tensor([[*closing, self.base.end_id]]))
        state.text = text + reply + "<|im_end|>"
        if session is not None:
            self._sessions[session] = state
            self._sessions.move_to_end(session)
            while len(self._sessions) > MAX_SESSIONS:
                _, old = self._sessions.popitem(last=False)
                if old.video is not None:
                    old.video.store.close()
        elif state.video is not None:
            state.video.store.close()
        video = state.video
        self.last_stats = {
            "dense_chunks": list(state.dense),
            "chunks": len(video.chunks) if video else 0,
            "kv_bytes": video.kv_bytes(state.dense) if video else 0,
            "dense_kv_bytes": video.dense_bytes() if video else 0,
        }
        return Generation(
            text=reply,
            token_ids=generated,
            logprobs=logprobs,
            prompt_tokens=prompt_tokens,
            new_prompt_tokens=new_prompt,
            seconds=time.perf_counter() - started,
        )

    # -- internals --------------------------------------------------------------------------

    def _first_turn(
        self, messages: Sequence[dict[str, Any]], frames: FrameFetcher, text: str
    ) -> _Session:
        state = _Session()
        state.frames = [i for m in messages for i in frames_in(m)]
        images = frames(state.frames) if state.frames else []
        pieces = split_at_images(text, len(images), self.sparse.frames_per_chunk)
        ids, types, grids = [], [], []
        for piece, (a, b) in pieces:
            encoded = self.processor(text=[piece], images=images[a:b] or None, return_tensors="pt")
            if "mm_token_type_ids" not in encoded:
                raise RuntimeError(
                    "processor output lacks mm_token_type_ids; positions would be wrong"
                )
            ids.append(encoded["input_ids"])
            types.append(encoded["mm_token_type_ids"])
            if b > a:
                grids.append(encoded["image_grid_thw"])
        state.ids = torch.cat(ids, dim=1)
        state.mm_types = torch.cat(types, dim=1)
        if images:
            state.grids = torch.cat(grids)
            inputs = {
                "input_ids": state.ids,
                "mm_token_type_ids": state.mm_types,
                "image_grid_thw": state.grids,
            }

            def pixels(a: int, b: int) -> torch.Tensor:
                return self.processor.image_processor(images=images[a:b], return_tensors="pt")[
                    "pixel_values"
                ]

            state.video = chunked_prefill(
                self.model, inputs, self.positions(state), self.sparse, pixels=pixels
            )
        return state

    def _later_turn(
        self, state: _Session, messages: Sequence[dict[str, Any]], frames: FrameFetcher, text: str
    ) -> None:
        """Append a later user message; its images (the default protocol's retrieves) are kept
        dense, after the video block, exactly as `QwenVideoLM` would prefill them."""
        new = [i for m in messages for i in frames_in(m)][len(state.frames) + len(state.later) :]
        images = frames(new) if new else None
        encoded = self.processor(text=[text[len(state.text) :]], images=images, return_tensors="pt")
        self._extend(state, encoded["input_ids"], encoded["mm_token_type_ids"])
        if new:
            grids = encoded["image_grid_thw"]
            sizes = [int(g.prod()) for g in grids]
            state.later.extend(torch.split(encoded["pixel_values"], sizes))
            state.grids = grids if state.grids is None else torch.cat([state.grids, grids])

    def _later_images(self, state: _Session, start: int) -> dict[str, Any]:
        """pixel_values and grids of the later-turn images whose tokens lie at or after start."""
        if not state.later:
            return {}
        runs = image_runs(state.mm_types[0])[len(state.frames) :]
        first = next((i for i, (a, _) in enumerate(runs) if a >= start), len(runs))
        if first == len(runs):
            return {}
        dtype = next(self.model.model.visual.parameters()).dtype
        return {
            "pixel_values": torch.cat(state.later[first:]).to(self.device, dtype),
            "image_grid_thw": state.grids[len(state.frames) + first :].to(self.device),
        }

    def _extend(
        self, state: _Session, ids: torch.Tensor, types: torch.Tensor | None = None
    ) -> None:
        state.ids = torch.cat([state.ids, ids], dim=1)
        types = torch.zeros_like(ids) if types is None else types
        state.mm_types = torch.cat([state.mm_types, types], dim=1)

    def positions(self, state: _Session) -> torch.Tensor:
        """[3, 1, L] M-RoPE positions of the whole sequence, from the model's own rule."""
        if state.grids is None:
            return torch.arange(state.length).view(1, 1, -1).expand(3, 1, -1)
        positions, _ = self.model.model.get_rope_index(
            state.ids, mm_token_type_ids=state.mm_types, image_grid_thw=state.grids
        )
        return positions

    def _tail(self, state: _Session, start: int, positions: torch.Tensor) -> dict[str, Any]:
        return {
            "input_ids": state.ids[:, start:].to(self.device),
            "mm_token_type_ids": state.mm_types[:, start:].to(self.device),
            "position_ids": positions[:, :, start:].to(self.device),
        }

    def _chunk_scores(
        self, state: _Session, messages: Sequence[dict[str, Any]]
    ) -> list[float] | None:
        """Per-chunk relevance from the configured source, once per session (None: no scores,
        as with ``retrieve`` or a ``store`` run whose messages carry no scores)."""
        video = state.video
        assert video is not None
        if state.scored:
            return state.scores
        state.scored = True
        source = self.sparse.relevance
        if source == "store":
            parts = controls(messages, "scores")
            if parts:
                per_frame = parts[-1]["values"]
                state.scores = [
                    max(float(per_frame[state.frames[f]]) for f in chunk.span.frames)
                    for chunk in video.chunks
                ]
        elif source == "attention":
            positions = self.positions(state)
            state.scores = attention_relevance(
                self.model,
                video,
                self._tail(state, video.layout.end, positions),
                proportional=self.sparse.proportional,
            )
        return state.scores

    def _dense_set(self, state: _Session, messages: Sequence[dict[str, Any]]) -> tuple[int, ...]:
        """Chunks with dense KV: turn-1 picks by relevance plus each requested range's picks."""
        video = state.video
        if video is None or self.sparse.top_k == 0:
            return ()
        scores = self._chunk_scores(state, messages)
        chosen: set[int] = set()
        if scores is not None:
            chosen.update(top_chunks(scores, self.sparse.top_k))
        chunk_of = video.chunk_of_frame()
        for part in controls(messages, "dense"):
            start, end = int(part["start"]), int(part["end"])
            inside = sorted({chunk_of[i] for i, f in enumerate(state.frames) if start <= f <= end})
            if not inside:  # the range falls between shown frames: take the nearest chunk
                nearest = min(
                    range(len(state.frames)),
                    key=lambda i: min(abs(state.frames[i] - start), abs(state.frames[i] - end)),
                )
                inside = [chunk_of[nearest]]
            if len(inside) > self.sparse.top_k:
                if scores is None:  # spread evenly over the range
                    step = len(inside) / self.sparse.top_k
                    inside = [inside[int(step * (i + 0.5))] for i in range(self.sparse.top_k)]
                else:
                    inside = top_chunks(scores, self.sparse.top_k, among=inside)
            chosen.update(inside)
        return tuple(sorted(chosen))

    def _bias(self, state: _Session, new: int) -> dict[str, Any]:
        """The proportional-attention mask for ``new`` tokens over the cache (none if unused)."""
        if state.bias is None:
            return {}
        dtype = next(self.model.model.language_model.parameters()).dtype
        mask = bias_mask(state.bias, state.cache.get_seq_length(), new, dtype, self.device)
        return {"attention_mask": _mask_map(self.model, mask)}

    @torch.inference_mode()
    def _decode(
        self, state: _Session, settings: GenerationSettings
    ) -> tuple[list[int], list[float]]:
        """Bring the cache up to date (rebuilding it if the dense set changed), then sample."""
        positions = self.positions(state)
        video = state.video
        if video is None:
            if state.cache is None:
                from transformers import DynamicCache

                state.cache, state.cached_upto = DynamicCache(config=self.model.config), 0
        elif state.cache is None or state.cache_dense != state.dense:
            state.cache = video.build_cache(state.dense, self.model.config)
            state.cache_dense = state.dense
            state.cached_upto = video.layout.end
            bias = video.key_bias(state.dense)
            state.bias = bias if self.sparse.proportional and bool(bias.any()) else None
        out = self.model(
            **self._tail(state, state.cached_upto, positions),
            **self._later_images(state, state.cached_upto),
            **self._bias(state, state.length - state.cached_upto),
            **cache_kwargs(state.cache),
            use_cache=True,
            logits_to_keep=1,
        )
        state.cached_upto = state.length
        next_pos = int(positions.max()) + 1
        generator = None
        if settings.seed is not None and settings.temperature > 0:
            generator = torch.Generator(device=self.device).manual_seed(
                settings.seed * 1_000_003 + state.length
            )
        tokens: list[int] = []
        logprobs: list[float] = []
        logits = out.logits[:, -1, :]
        for step in range(settings.max_new_tokens):
            token, logprob = self.base._pick(logits, settings, generator)
            tokens.append(token)
            logprobs.append(logprob)
            if token in self.base.stop_ids or step == settings.max_new_tokens - 1:
                break
            pos = torch.full((3, 1, 1), next_pos + step, dtype=torch.long, device=self.device)
            out = self.model(
                input_ids=torch.tensor([[token]], device=self.device),
                position_ids=pos,
                **cache_kwargs(state.cache),
                use_cache=True,
                **self._bias(state, 1),
            )
            logits = out.logits[:, -1, :]
        # The reply's closing tokens are fed next turn with the new message (cached_upto marks
        # where the cache stops: the sampled tokens but the last are already in it).
        state.cached_upto += max(len(tokens) - 1, 0)
        return tokens, logprobs
