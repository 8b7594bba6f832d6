"""The episode engine: many concurrent episodes decoded together, one forward per token.

Why: an episode of a small model costs little arithmetic but one model call per token, so run one
at a time the cost is all per-call overhead. The engine is a `VideoLM`: the agent graphs of many
episodes (an RL step's rollouts, an evaluation's questions) run in their own threads and call
`generate` as usual, so the graph stays the one place the protocol lives. Each call encodes its
turn in the caller's thread (frame preprocessing cached, `TurnEncoder`) and joins a queue; one
worker thread runs the batch:

- **admission**: waiting turns are prefilled together, one forward over their new tokens only
  (each episode's earlier turns stay in its slot of a preallocated `SlotKV`);
- **decode**: every episode that is mid-reply advances one token per forward, each at its own
  length and M-RoPE position; an episode whose reply ends leaves the batch at once (its caller
  gets the reply and its graph goes on) while the others keep decoding, and newly arrived turns
  join at the next step.

What stays exact: the inputs are the backend's (`QwenVideoLM`: the processor's outputs whole,
positions from the model's ``get_rope_index`` over the whole sequence, the same token handling
after a reply), and each episode samples from its own generator seeded exactly as the
one-at-a-time path seeds it, so greedy episodes are token-identical to `QwenVideoLM.generate` and
a sampled episode's tokens depend on its seed, not on what else shares the batch.
"""

from __future__ import annotations

import hashlib
import heapq
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from vmtr.config import GenerationSettings
from vmtr.models.cache_names import cache_kwargs
from vmtr.models.qwen import QwenVideoLM, _Session
from vmtr.models.slot_cache import SlotKV
from vmtr.models.turn_inputs import TurnEncoder
from vmtr.models.vlm import FrameFetcher, Generation
from vmtr.protocol import frames_in

PAD_TOLERANCE = 1.25
"""Turns are prefilled together when the longest is at most this many times the shortest."""


@dataclass
class _Episode:
    """One session's state in the engine: its tokens and its slot in the KV cache."""

    state: _Session
    slot: int | None = None
    in_cache: int = 0  # tokens of state.ids whose keys/values are in the slot
    released: bool = False
    image_keys: list[Any] = field(default_factory=list)  # content key of each image shown


@dataclass
class _Prompt:
    """A prefilled first-turn prompt: the live episode whose slot holds it, its last logits."""

    episode: _Episode
    logits: torch.Tensor


@dataclass
class _Turn:
    """A `generate` call in flight: its episode, settings and what it has sampled so far."""

    episode: _Episode
    settings: GenerationSettings
    session: str | None
    started: float
    future: Future = field(default_factory=Future)
    prompt_key: tuple[Any, ...] | None = None  # set on a fresh episode's first turn
    forced: Sequence[int] | None = None  # a replayed reply's tokens, fed instead of sampled
    prefix: Sequence[int] = ()  # the reply's first tokens, fed before sampling takes over
    generator: torch.Generator | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    next_pos: int = 0
    prompt_tokens: int = 0
    new_prompt_tokens: int = 0


class EpisodeEngine:
    """A `VideoLM` over a `QwenVideoLM` that decodes concurrent episodes together.

    ``max_episodes`` bounds the sessions held at once (each holds a KV slot from its first turn
    to `end_session`); callers beyond it wait for a slot. Use as a context manager or call
    `close` to stop the worker.
    """

    def __init__(self, lm: QwenVideoLM, *, max_episodes: int = 32, capacity: int = 1024) -> None:
        if max_episodes < 1:
            raise ValueError(f"max_episodes must be at least 1, got {max_episodes}")
        self.lm = lm
        self.name = lm.name
        self.max_episodes = max_episodes
        self.encoder = TurnEncoder(lm.processor)
        eager = getattr(lm.model.config, "_attn_implementation", "sdpa") == "eager"
        self.kv = SlotKV(max_episodes, capacity, eager_mask=eager)
        self.forwards = 0  # model calls, for throughput reports
        self.rows = 0  # rows over those calls
        self._sessions: dict[str, _Episode] = {}
        self._prompts: dict[tuple[Any, ...], _Prompt] = {}  # worker thread only
        self._vision: dict[Any, torch.Tensor] = {}  # frame key -> merged embeddings
        self.frames_encoded = 0  # frames through the vision tower, for reports
        self.prefilled_tokens = 0
        self.seconds = {"prefill": 0.0, "vision": 0.0, "decode": 0.0}  # worker time, by phase
        self._image_token = lm.model.config.image_token_id
        self._free = list(range(max_episodes))  # a heap: the lowest free slot goes first
        self._slot_ready = threading.Condition()
        self._queue: queue.Queue[_Turn | None] = queue.Queue()
        self._active: list[_Turn] = []
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._pad = lm.processor.tokenizer.pad_token_id
        self._pad = lm.end_id if self._pad is None else self._pad

    # -- VideoLM --------------------------------------------------------------------------------

    @property
    def pixel_budget(self) -> dict[str, int]:
        return self.lm.pixel_budget

    @property
    def banned_ids(self) -> list[int]:
        return self.lm.banned_ids

    def __enter__(self) -> EpisodeEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker once the turns already queued are answered."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            self._queue.put(None)
            worker.join()

    def end_session(self, session: str) -> None:
        """Free the episode's slot."""
        with self._lock:
            episode = self._sessions.pop(session, None)
        if episode is not None:
            self._release(episode)

    def session_tokens(self, session: str) -> dict[str, Any] | None:
        """The episode's whole token record, as `QwenVideoLM.session_tokens` gives it."""
        with self._lock:
            episode = self._sessions.get(session)
        if episode is None:
            return None
        record = episode.state.record()
        if record is not None and episode.image_keys:
            keys = episode.image_keys
            if all(key in self._vision for key in keys):
                # what the tower made of the episode's images, in order: an update whose tower
                # is fixed replays them instead of running it again (`vmtr.policies.trainer`)
                record["image_embeds"] = torch.cat([self._vision[key] for key in keys])
        return record

    def generate(
        self,
        messages: Sequence[dict[str, Any]],
        frames: FrameFetcher,
        *,
        settings: GenerationSettings,
        session: str | None = None,
        forced: Sequence[int] | None = None,
        prefix: Sequence[int] = (),
    ) -> Generation:
        """Encode this turn's new message here, then wait for the worker to answer it
        (``forced``: a reply to feed instead of sampling; ``prefix``: its first tokens, fed before
        sampling takes over; as `QwenVideoLM.generate` takes them)."""
        if forced is None and len(prefix) >= settings.max_new_tokens:
            raise ValueError("a reply's prefix must be shorter than max_new_tokens")
        started = time.perf_counter()
        lm = self.lm
        text = lm.processor.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False
        )
        episode = self._episode_for(session, text)
        state = episode.state
        new_frames = [i for m in messages for i in frames_in(m)][state.images :]
        images = frames(new_frames) if new_frames else None
        encoded = self.encoder(text[len(state.text) :], images)
        lm._append(state, encoded, len(new_frames))
        episode.image_keys += encoded["image_keys"]
        state.text = text
        if episode.slot is None:
            episode.slot = self._take_slot()
        turn = _Turn(episode, settings, session, started, forced=forced, prefix=tuple(prefix))
        if episode.in_cache == 0 and not state.replies:
            digest = hashlib.blake2b(state.ids.numpy().tobytes(), digest_size=16).hexdigest()
            turn.prompt_key = (digest, tuple(encoded.get("image_keys", ())))
        self._start()
        self._queue.put(turn)
        try:
            return turn.future.result()
        finally:
            if session is None:
                self._release(episode)

    # -- sessions and slots ---------------------------------------------------------------------

    def _episode_for(self, session: str | None, text: str) -> _Episode:
        with self._lock:
            episode = self._sessions.get(session) if session is not None else None
        if episode is not None and text.startswith(episode.state.text):
            return episode
        if episode is not None:  # the conversation was rewritten: start the slot afresh
            episode.state, episode.in_cache, episode.image_keys = _Session(), 0, []
            return episode
        episode = _Episode(_Session())
        if session is not None:
            with self._lock:
                self._sessions[session] = episode
        return episode

    def _take_slot(self) -> int:
        with self._slot_ready:
            while not self._free:
                self._slot_ready.wait()
            return heapq.heappop(self._free)

    def _release(self, episode: _Episode) -> None:
        if episode.slot is None:
            return
        episode.released = True  # its prefilled prompt may no longer be copied
        with self._slot_ready:
            self.kv.reset(episode.slot)
            heapq.heappush(self._free, episode.slot)
            episode.slot = None
            self._slot_ready.notify()

    # -- the worker -----------------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._loop, name="vmtr-engine", daemon=True)
                self._worker.start()

    def _loop(self) -> None:
        stopping = False
        while True:
            arrived: list[_Turn] = []
            if not self._active and not stopping:
                first = self._queue.get()
                if first is None:
                    return
                arrived.append(first)
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                else:
                    arrived.append(item)
            if stopping and not self._active and not arrived:
                return
            try:
                if arrived:
                    self._admit(arrived)
                if self._active:
                    self._step()
            except BaseException as error:  # noqa: BLE001 - handed back to every waiting caller
                for turn in [*arrived, *self._active]:
                    if not turn.future.done():
                        turn.future.set_exception(error)
                self._active = [t for t in self._active if not t.future.done()]

    @torch.inference_mode()
    def _admit(self, arriving: list[_Turn]) -> None:
        """Prefill the new tokens of every arriving turn in one forward, then pick each one's
        first token from its own last position.

        A fresh episode whose whole prompt (tokens and frames) was already prefilled for another
        live episode (the samples of a GRPO group on turn 1) is not prefilled again: it gets a
        copy of that slot's keys and values and the same first-token logits, and still samples
        from its own generator.
        """
        if len(self._prompts) > 4 * self.max_episodes:
            self._prompts = {k: p for k, p in self._prompts.items() if not p.episode.released}
        turns, copies = [], []
        for turn in arriving:
            twin = self._prompts.get(turn.prompt_key) if turn.prompt_key else None
            if twin is not None and (twin.episode.released or twin.episode.slot is None):
                del self._prompts[turn.prompt_key]
                twin = None
            if twin is None and turn.prompt_key:
                twin = next((t for t in turns if t.prompt_key == turn.prompt_key), None)
            if twin is None:
                turns.append(turn)
            else:
                copies.append((turn, twin))
        logits = self._prefill(turns) if turns else None
        for turn, row in zip(turns, range(len(turns)), strict=True):
            if turn.prompt_key:
                self._prompts[turn.prompt_key] = _Prompt(turn.episode, logits[row].clone())
        copied = []
        for turn, twin in copies:
            source = twin if isinstance(twin, _Prompt) else self._prompts[twin.prompt_key]
            self._prepare(turn)
            self.kv.copy_slot(source.episode.slot, turn.episode.slot, turn.prompt_tokens)
            turn.episode.in_cache = turn.prompt_tokens
            copied.append(source.logits)
        all_logits = [logits] if logits is not None else []
        if copied:
            all_logits.append(torch.stack(copied))
        self._pick_and_settle([*turns, *(t for t, _ in copies)], torch.cat(all_logits))

    def _prefill(self, turns: list[_Turn]) -> torch.Tensor:
        """The turns' uncached tokens prefilled, in forwards of turns of similar length (so a
        short turn is not padded to a long one's length); their last logits, in order."""
        spans = [t.episode.state.length - t.episode.in_cache for t in turns]
        order = sorted(range(len(turns)), key=lambda i: spans[i])
        groups: list[list[int]] = []
        for i in order:
            if groups and spans[i] <= PAD_TOLERANCE * spans[groups[-1][0]]:
                groups[-1].append(i)
            else:
                groups.append([i])
        logits: list[torch.Tensor | None] = [None] * len(turns)
        for group in groups:
            for i, row in zip(group, self._prefill_group([turns[i] for i in group]), strict=True):
                logits[i] = row
        return torch.stack(logits)

    def stats(self) -> dict[str, float]:
        """Counters and worker seconds by phase, for throughput reports."""
        return {
            "forwards": self.forwards,
            "rows": self.rows,
            "prefilled_tokens": self.prefilled_tokens,
            "frames_encoded": self.frames_encoded,
            **{f"{phase}_s": round(t, 3) for phase, t in self.seconds.items()},
        }

    def _prefill_group(self, turns: list[_Turn]) -> torch.Tensor:
        """One forward over the turns' uncached tokens (right-padded); their last logits."""
        started = time.perf_counter()
        try:
            return self._prefill_rows(turns)
        finally:
            self.seconds["prefill"] += time.perf_counter() - started

    def _prefill_rows(self, turns: list[_Turn]) -> torch.Tensor:
        lm = self.lm
        rows, spans, chunks = [], [], []
        keys, pixels, grids = [], [], []
        for turn in turns:
            episode, state = turn.episode, turn.episode.state
            positions = self._prepare(turn)
            start = episode.in_cache
            pv, grid = lm._pixels_from(state, start)
            if pv is not None:
                pixels.append(pv)
                grids.append(grid)
                keys += episode.image_keys[len(episode.image_keys) - len(grid) :]
            rows.append(episode.slot)
            spans.append(state.length - start)
            chunks.append((state, start, positions))
        width = max(spans)
        n = len(turns)
        ids = torch.full((n, width), self._pad, dtype=torch.long)
        mm = torch.zeros((n, width), dtype=torch.long)
        pos = torch.zeros((3, n, width), dtype=torch.long)
        for row, ((state, start, positions), span) in enumerate(zip(chunks, spans, strict=True)):
            ids[row, :span] = state.ids[0, start:]
            mm[row, :span] = state.mm_types[0, start:]
            pos[:, row, :span] = positions[:, 0, start:]
            if span < width:  # padding continues the row's positions (its outputs are unused)
                pos[:, row, span:] = positions[:, 0, -1:] + 1
        mask = self.kv.plan(rows, spans, width)
        self.prefilled_tokens += sum(spans)
        ids = ids.to(lm.device)
        embeds = lm.core.get_input_embeddings()(ids)
        if pixels:
            images = self.vision(keys, torch.cat(pixels), torch.cat(grids))
            where = (ids == self._image_token).unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(where, images.to(embeds.dtype))
        out = lm.core(
            inputs_embeds=embeds,
            position_ids=pos.to(lm.device),
            attention_mask=mask,
            **cache_kwargs(self.kv),
            use_cache=True,
        )
        self.forwards += 1
        self.rows += n
        self.kv.advance(rows, spans)
        for turn, span in zip(turns, spans, strict=True):
            turn.episode.in_cache += span
        last = torch.tensor([span - 1 for span in spans], device=lm.device)
        hidden = out.last_hidden_state[torch.arange(n, device=lm.device), last]
        return self._head(hidden)

    def vision(self, keys: list[Any], pixels: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        """The vision tower's merged embeddings of these frames, in order; a frame already
        encoded (same content, same weights: the engine lives for one set of weights) is
        reused. The tower encodes each image on its own, so reuse changes nothing."""
        started = time.perf_counter()
        try:
            return self._vision_embeddings(keys, pixels, grids)
        finally:
            self.seconds["vision"] += time.perf_counter() - started

    def _vision_embeddings(
        self, keys: list[Any], pixels: torch.Tensor, grids: torch.Tensor
    ) -> torch.Tensor:
        core = self.lm.core
        patches = [int(g.prod()) for g in grids]
        offsets = [0]
        for n in patches:
            offsets.append(offsets[-1] + n)
        todo: dict[Any, int] = {}
        for i, key in enumerate(keys):
            if key not in self._vision and key not in todo:
                todo[key] = i
        if todo:
            chosen = list(todo.values())
            pv = torch.cat([pixels[offsets[i] : offsets[i + 1]] for i in chosen])
            dtype = next(core.visual.parameters()).dtype
            out = core.visual(pv.to(self.lm.device, dtype), grid_thw=grids[chosen].to(pv.device))
            merged = getattr(out, "pooler_output", out)
            merge = core.visual.spatial_merge_size**2
            pieces = torch.split(merged, [patches[i] // merge for i in chosen])
            for key, piece in zip(todo, pieces, strict=True):
                self._vision[key] = piece
            self.frames_encoded += len(chosen)
        return torch.cat([self._vision[key] for key in keys])

    def _prepare(self, turn: _Turn) -> torch.Tensor:
        """Set the turn's slot length, positions, counters and generator; return positions."""
        lm, episode = self.lm, turn.episode
        state = episode.state
        if not lm.settings.reuse_kv_cache or episode.in_cache > state.length:
            episode.in_cache = 0
        self.kv.lengths[episode.slot] = episode.in_cache
        positions = lm.positions(state)
        turn.next_pos = int(positions.max()) + 1
        turn.prompt_tokens = state.length
        turn.new_prompt_tokens = state.length - episode.in_cache
        if turn.settings.seed is not None and turn.settings.temperature > 0:
            # the one-at-a-time path's seeding: per episode, per turn (by prompt length)
            turn.generator = torch.Generator(device=lm.device).manual_seed(
                turn.settings.seed * 1_000_003 + state.length
            )
        return positions

    @torch.inference_mode()
    def _step(self) -> None:
        """One decode forward: every mid-reply episode feeds its last token.

        The batch is slots ``0..hi-1`` in order, so each layer attends over a view of the KV
        buffers rather than a gathered copy; slots with no reply in progress ride along on a
        pad token written past their length (overwritten by their next turn) and are ignored.
        """
        started = time.perf_counter()
        try:
            self._decode_step()
        finally:
            self.seconds["decode"] += time.perf_counter() - started

    def _decode_step(self) -> None:
        lm = self.lm
        active = self._active
        by_slot = {t.episode.slot: t for t in active}
        hi = max(by_slot) + 1
        ids = torch.full((hi, 1), self._pad, dtype=torch.long)
        pos = torch.zeros(hi, dtype=torch.long)
        new = [0] * hi
        for slot, turn in by_slot.items():
            ids[slot, 0] = turn.tokens[-1]
            pos[slot] = turn.next_pos + len(turn.tokens) - 1
            new[slot] = 1
        mask = self.kv.plan(None, [1] * hi, 1)
        out = lm.model(
            input_ids=ids.to(lm.device),
            position_ids=pos.view(1, hi, 1).expand(3, hi, 1).to(lm.device),
            attention_mask=mask,
            **cache_kwargs(self.kv),
            use_cache=True,
        )
        self.forwards += 1
        self.rows += len(active)
        self.kv.advance(None, new)
        for turn in active:
            turn.episode.in_cache += 1
        self._active = []
        slots = torch.tensor([t.episode.slot for t in active], device=lm.device)
        self._pick_and_settle(active, out.logits[slots, -1, :])

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        model = self.lm.model
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        return model.lm_head(hidden)

    def _pick_and_settle(self, turns: list[_Turn], logits: torch.Tensor) -> None:
        """Sample each turn's next token; finished replies go back to their callers, the rest
        stay in the batch."""
        for row, turn in enumerate(turns):
            if turn.forced is not None:
                token = turn.forced[len(turn.tokens)]
                logprob = self.lm.logprob_of(logits[row : row + 1], turn.settings, token)
                stop = len(turn.tokens) + 1 >= len(turn.forced)
            elif len(turn.tokens) < len(turn.prefix):
                token = turn.prefix[len(turn.tokens)]
                logprob = self.lm.logprob_of(logits[row : row + 1], turn.settings, token)
                stop = False  # shorter than max_new_tokens, and sampling follows
            else:
                token, logprob = self.lm._pick(logits[row : row + 1], turn.settings, turn.generator)
                stop = token in self.lm.stop_ids
                stop = stop or len(turn.tokens) + 1 >= turn.settings.max_new_tokens
            turn.tokens.append(token)
            turn.logprobs.append(logprob)
            if stop:
                self._finish(turn)
            else:
                self._active.append(turn)

    def _finish(self, turn: _Turn) -> None:
        """The one-at-a-time path's bookkeeping after a reply, then hand it back."""
        reply = self.lm.close_reply(turn.episode.state, turn.tokens, turn.logprobs)
        turn.future.set_result(
            Generation(
                text=reply,
                token_ids=turn.tokens,
                logprobs=turn.logprobs,
                prompt_tokens=turn.prompt_tokens,
                new_prompt_tokens=turn.new_prompt_tokens,
                seconds=time.perf_counter() - turn.started,
            )
        )
