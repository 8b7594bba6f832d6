"""Micro-batching: many agents' turns through one model.

An evaluation runs many independent episodes; on their own each turn decodes one token per
forward, so a GPU (or even a CPU running a small model) spends most of its time on per-call
overhead. Wrapped in `BatchingVideoLM`, the agents of concurrently running graphs
(``graph.batch(..., config={"max_concurrency": B})`` or a thread pool) hand their `generate`
calls to one worker thread, which gathers up to B of them and decodes them together.

Each turn is prefilled on its own exactly as `QwenVideoLM.generate` does it (the processor's
outputs whole, ``mm_token_type_ids`` included; positions from the model's ``get_rope_index``;
the episode's KV cache from earlier turns reused, so only the new message is prefilled). The
rows' caches are then left-padded into one batch and decoded together, with an attention mask
over the padding and each row's own M-RoPE positions, and split back per episode for its next
turn. Greedy outputs therefore equal unbatched ones (a test checks this on the tiny model).
`generate_batch` is the simpler cache-less variant: it prefills whole prompts as one
left-padded batch, with per-row positions from ``get_rope_index`` and the attention mask.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from vmtr.agent.protocol import frames_in
from vmtr.config import GenerationSettings
from vmtr.models.cache_names import cache_kwargs
from vmtr.models.qwen import QwenVideoLM, _Session
from vmtr.models.vlm import FrameFetcher, Generation


@dataclass
class _Request:
    """One pending `generate` call: its episode state (new message appended) and its reply."""

    state: _Session
    settings: GenerationSettings
    session: str | None
    text: str
    future: Future = field(default_factory=Future)


class BatchingVideoLM:
    """A `VideoLM` that decodes concurrent `generate` calls on a `QwenVideoLM` together.

    ``max_batch`` bounds the rows decoded together; ``max_wait`` is how long (seconds) the
    worker waits for more calls after the first one arrives. Calls with different generation
    settings are never mixed. Use as a context manager, or call `close`, to stop the worker.
    """

    def __init__(self, lm: QwenVideoLM, *, max_batch: int = 4, max_wait: float = 0.05) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.lm = lm
        self.name = lm.name
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.batch_sizes: list[int] = []  # rows of each decode, for throughput reports
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._max_sessions = max(8, 4 * max_batch)

    @property
    def pixel_budget(self) -> dict[str, int]:
        """The wrapped model's per-frame pixel budget (the graph decodes frames to it)."""
        return self.lm.pixel_budget

    def __enter__(self) -> BatchingVideoLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker thread once the calls already queued are answered."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            self._queue.put(None)
            worker.join()

    def end_session(self, session: str) -> None:
        """Forget an episode's kept state (its KV cache)."""
        with self._lock:
            self._sessions.pop(session, None)

    def generate(
        self,
        messages: Sequence[dict[str, Any]],
        frames: FrameFetcher,
        *,
        settings: GenerationSettings,
        session: str | None = None,
    ) -> Generation:
        """Encode this turn's new message here, then wait for the worker to decode it."""
        lm = self.lm
        text = lm.processor.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False
        )
        with self._lock:
            kept = self._sessions.pop(session, None) if session is not None else None
        state = kept if kept is not None and text.startswith(kept.text) else _Session()
        all_frames = [i for m in messages for i in frames_in(m)]
        new_frames = all_frames[state.images :]
        images = frames(new_frames) if new_frames else None
        with self._encode_lock:  # a fast tokenizer may raise "Already borrowed" across threads
            encoded = lm.processor(
                text=[text[len(state.text) :]], images=images, return_tensors="pt"
            )
        if "mm_token_type_ids" not in encoded:
            raise RuntimeError("processor output lacks mm_token_type_ids; positions would be wrong")
        lm._append(state, encoded, len(new_frames))
        state.text = text
        request = _Request(state, settings, session, text)
        self._start()
        self._queue.put(request)
        return request.future.result()

    def _start(self) -> None:
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._loop, name="vmtr-batch", daemon=True)
                self._worker.start()

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            pending = [first]
            deadline = time.monotonic() + self.max_wait
            while len(pending) < self.max_batch:
                try:
                    request = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if request is None:
                    stop = True
                    break
                pending.append(request)
            for group in _by_settings(pending):
                self._run(group)

    def _run(self, group: list[_Request]) -> None:
        started = time.perf_counter()
        try:
            replies = _prefill_then_decode(self.lm, [r.state for r in group], group[0].settings)
        except BaseException as error:  # noqa: BLE001 - handed back to every waiting caller
            for request in group:
                request.future.set_exception(error)
            return
        self.batch_sizes.append(len(group))
        seconds = time.perf_counter() - started
        for request, reply in zip(group, replies, strict=True):
            reply.seconds = seconds
            if request.session is not None:
                with self._lock:
                    self._sessions[request.session] = request.state
                    while len(self._sessions) > self._max_sessions:
                        self._sessions.popitem(last=False)
            request.future.set_result(reply)


def _by_settings(requests: list[_Request]) -> list[list[_Request]]:
    groups: dict[GenerationSettings, list[_Request]] = {}
    for request in requests:
        groups.setdefault(request.settings, []).append(request)
    return list(groups.values())


@torch.inference_mode()
def _prefill(lm: QwenVideoLM, state: _Session) -> tuple[torch.Tensor, int, DynamicCache, int]:
    """What `QwenVideoLM` does before its first sampled token, for one episode: prefill only
    the tokens its cache lacks. Returns (last logits [1, V], next position, cache, prefilled)."""
    model = lm.model
    reuse = lm.settings.reuse_kv_cache and state.cache is not None
    cache = state.cache if reuse else DynamicCache(config=model.config)
    start = cache.get_seq_length() if reuse else 0
    positions = lm.positions(state)
    pixel_values, grids = lm._pixels_from(state, start)
    out = model(
        input_ids=state.ids[:, start:].to(lm.device),
        mm_token_type_ids=state.mm_types[:, start:].to(lm.device),
        pixel_values=pixel_values,
        image_grid_thw=grids,
        position_ids=positions[:, :, start:].to(lm.device),
        **cache_kwargs(cache),
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1, :], int(positions.max()) + 1, cache, state.length - start


def _stack_caches(caches: Sequence[DynamicCache], config: Any) -> tuple[DynamicCache, list[int]]:
    """One batch cache from per-row caches, each left-padded to the longest; returns lengths."""
    lengths = [c.get_seq_length() for c in caches]
    width = max(lengths)
    layers = []
    for index in range(len(caches[0].layers)):
        keys, values = [], []
        for cache, length in zip(caches, lengths, strict=True):
            layer = cache.layers[index]
            pad = (0, 0, width - length, 0)
            keys.append(torch.nn.functional.pad(layer.keys, pad))
            values.append(torch.nn.functional.pad(layer.values, pad))
        layers.append((torch.cat(keys), torch.cat(values)))
    return DynamicCache(layers, config=config), lengths


def _row_cache(batch: DynamicCache, row: int, first: int, last: int, config: Any) -> DynamicCache:
    """Row ``row``'s entries ``first..last-1`` of a batch cache, as a cache of its own."""
    return DynamicCache(
        [
            (
                layer.keys[row : row + 1, :, first:last].clone(),
                layer.values[row : row + 1, :, first:last].clone(),
            )
            for layer in batch.layers
        ],
        config=config,
    )


@torch.inference_mode()
def _prefill_then_decode(
    lm: QwenVideoLM, states: Sequence[_Session], settings: GenerationSettings
) -> list[Generation]:
    """Prefill each episode alone (reusing its cache), then decode all of them together."""
    model, device = lm.model, lm.device
    prefilled = [_prefill(lm, state) for state in states]
    rows = len(states)
    prompt_tokens = [state.length for state in states]
    cache, lengths = _stack_caches([p[2] for p in prefilled], model.config)
    width = max(lengths)
    mask = torch.zeros((rows, width), dtype=torch.long, device=device)
    for row, length in enumerate(lengths):
        mask[row, width - length :] = 1
    next_pos = torch.tensor([p[1] for p in prefilled], dtype=torch.long)
    logits = torch.cat([p[0] for p in prefilled])
    tokens, logprobs = _decode_rows(lm, logits, next_pos, mask, cache, settings)
    replies = []
    for row, state in enumerate(states):
        fed = len(tokens[row]) - 1  # the last sampled token is never fed, as in the single path
        state.cache = _row_cache(cache, row, width - lengths[row], width + fed, model.config)
        generated = tokens[row]
        reply = lm.processor.tokenizer.decode(
            [t for t in generated if t not in lm.stop_ids], skip_special_tokens=False
        )
        closing = generated[:-1] if generated and generated[-1] in lm.stop_ids else generated
        lm._append_ids(state, [*closing, lm.end_id])
        state.text = state.text + reply + "<|im_end|>"
        if not lm.settings.reuse_kv_cache:
            state.cache = None
        replies.append(
            Generation(
                text=reply,
                token_ids=generated,
                logprobs=logprobs[row],
                prompt_tokens=prompt_tokens[row],
                new_prompt_tokens=prefilled[row][3],
            )
        )
    return replies


def _decode_rows(
    lm: QwenVideoLM,
    logits: torch.Tensor,
    next_pos: torch.Tensor,
    mask: torch.Tensor,
    cache: DynamicCache,
    settings: GenerationSettings,
) -> tuple[list[list[int]], list[list[float]]]:
    """Sample every row until its stop token or the length limit; finished rows idle on pad."""
    model, device = lm.model, lm.device
    rows = logits.shape[0]
    pad_id = lm.processor.tokenizer.pad_token_id
    pad_id = lm.end_id if pad_id is None else pad_id
    generators: list[Any] = [None] * rows
    if settings.seed is not None and settings.temperature > 0:
        generators = [
            torch.Generator(device=device).manual_seed(settings.seed) for _ in range(rows)
        ]
    tokens: list[list[int]] = [[] for _ in range(rows)]
    logprobs: list[list[float]] = [[] for _ in range(rows)]
    done = [False] * rows
    for step in range(settings.max_new_tokens):
        step_ids = []
        for row in range(rows):
            if done[row]:
                step_ids.append(pad_id)
                continue
            token, logprob = lm._pick(logits[row : row + 1], settings, generators[row])
            tokens[row].append(token)
            logprobs[row].append(logprob)
            done[row] = token in lm.stop_ids or step == settings.max_new_tokens - 1
            step_ids.append(token)
        if all(done):
            break
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
        pos = (next_pos + step).view(1, rows, 1).expand(3, rows, 1).to(device)
        out = model(
            input_ids=torch.tensor(step_ids, device=device).view(rows, 1),
            attention_mask=mask,
            position_ids=pos,
            **cache_kwargs(cache),
            use_cache=True,
        )
        logits = out.logits[:, -1, :]
    return tokens, logprobs


@torch.inference_mode()
def generate_batch(
    lm: QwenVideoLM, encodings: Sequence[Any], settings: GenerationSettings
) -> list[Generation]:
    """Decode several prompts (processor outputs, one row each) as one left-padded batch."""
    started = time.perf_counter()
    model, device = lm.model, lm.device
    rows = len(encodings)
    lengths = [int(e["input_ids"].shape[1]) for e in encodings]
    width = max(lengths)
    pad_id = lm.processor.tokenizer.pad_token_id
    pad_id = lm.end_id if pad_id is None else pad_id
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    mm_types = torch.zeros((rows, width), dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for row, (enc, length) in enumerate(zip(encodings, lengths, strict=True)):
        input_ids[row, width - length :] = enc["input_ids"][0]
        mm_types[row, width - length :] = enc["mm_token_type_ids"][0]
        mask[row, width - length :] = 1
    with_images = [e for e in encodings if e.get("pixel_values") is not None]
    grids = torch.cat([e["image_grid_thw"] for e in with_images]) if with_images else None
    pixels = None
    if with_images:
        dtype = next(lm.core.visual.parameters()).dtype
        pixels = torch.cat([e["pixel_values"] for e in with_images]).to(device, dtype)
    positions, _ = lm.core.get_rope_index(
        input_ids, mm_token_type_ids=mm_types, image_grid_thw=grids, attention_mask=mask
    )
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=input_ids.to(device),
        mm_token_type_ids=mm_types.to(device),
        attention_mask=mask.to(device),
        pixel_values=pixels,
        image_grid_thw=grids.to(device) if grids is not None else None,
        position_ids=positions.to(device),
        **cache_kwargs(cache),
        use_cache=True,
        logits_to_keep=1,
    )
    # The next position of each row continues its own sequence, whatever the padding.
    masked = positions.masked_fill(mask.unsqueeze(0) == 0, -1)
    next_pos = masked.amax(dim=(0, 2)) + 1  # [rows]
    logits = out.logits[:, -1, :]
    tokens, logprobs = _decode_rows(lm, logits, next_pos, mask.to(device), cache, settings)
    seconds = time.perf_counter() - started
    replies = []
    for row in range(rows):
        text = lm.processor.tokenizer.decode(
            [t for t in tokens[row] if t not in lm.stop_ids], skip_special_tokens=False
        )
        replies.append(
            Generation(
                text=text,
                token_ids=tokens[row],
                logprobs=logprobs[row],
                prompt_tokens=lengths[row],
                new_prompt_tokens=lengths[row],
                seconds=seconds,
            )
        )
    return replies
