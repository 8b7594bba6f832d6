"""Transformers backend for the Qwen2-VL / Qwen2.5-VL family (Video-MTR-7B, the tiny model).

Why a hand-written decoding loop instead of ``model.generate``: a multi-turn episode only ever
grows, so the KV cache of earlier turns can be kept and only the new user message (with its new
frames) prefilled — ``generate`` would re-encode or drop the new images. The loop feeds the model
exactly what training and ``generate`` feed it: the processor's outputs whole (``mm_token_type_ids``
included: without it Qwen2.5-VL silently falls back to 1-D positions) and the 3-D M-RoPE
positions from the model's own ``get_rope_index`` over the full sequence, so positions match a
from-scratch forward token for token. Token ids are
kept as generated (never decoded and re-encoded) so that RL trains on exactly what was sampled.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor, DynamicCache

from vmtr.config import GenerationSettings, ModelSettings
from vmtr.models.adapters import adapter_base, is_adapter_folder, load_adapter
from vmtr.models.cache_names import cache_kwargs
from vmtr.models.hub import hub_reachable
from vmtr.models.vlm import FrameFetcher, Generation, ModelLoadError
from vmtr.models.weights import load_pretrained
from vmtr.protocol import frames_in

MAX_SESSIONS = 8


@dataclass(frozen=True)
class ReplySpan:
    """Where one reply sits in the session's token sequence, for RL loss masks."""

    start: int  # index of the reply's first token
    length: int  # tokens kept, including the closing <|im_end|>
    sampled: int  # how many of them the model sampled (the rest the environment added)
    logprobs: tuple[float, ...]  # of the sampled tokens


@dataclass
class _Session:
    """Everything kept between the turns of one episode."""

    text: str = ""
    ids: torch.Tensor | None = None  # [1, L] every token so far, generated ones as sampled
    mm_types: torch.Tensor | None = None  # [1, L] 0 text, 1 image, 2 video
    grids: list[torch.Tensor] = field(default_factory=list)  # image_grid_thw rows
    pixels: list[torch.Tensor] = field(default_factory=list)  # per-turn pixel_values
    images: int = 0
    cache: DynamicCache | None = None
    replies: list[ReplySpan] = field(default_factory=list)

    @property
    def length(self) -> int:
        return 0 if self.ids is None else int(self.ids.shape[1])

    def record(self) -> dict[str, Any] | None:
        """Everything the model saw and sampled: ids, modality types, images and reply spans --
        the exact inputs an RL update must replay (None before the first turn)."""
        if self.ids is None:
            return None
        return {
            "input_ids": self.ids[0].clone(),
            "mm_token_type_ids": self.mm_types[0].clone(),
            "pixel_values": torch.cat(self.pixels) if self.pixels else None,
            "image_grid_thw": torch.stack(self.grids) if self.grids else None,
            "replies": list(self.replies),
        }


def resolve_model_path(spec: str) -> str:
    """``tiny`` -> the bundled copy; an existing folder -> itself; anything else -> a hub id."""
    if spec == "tiny":
        from vmtr.models.tiny import TINY_DIR

        if not (TINY_DIR / "config.json").exists():
            raise ModelLoadError(
                f"the bundled tiny model is missing from {TINY_DIR}; rebuild it with "
                "`python -m vmtr.models.tiny`"
            )
        return str(TINY_DIR)
    path = Path(spec).expanduser()
    if path.exists():
        if is_adapter_folder(path):
            return str(path)
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{spec}: folder has no config.json, so it is not a checkpoint")
        return str(path)
    return spec


def cached_snapshot(repo_id: str) -> str | None:
    """The local copy of a hub checkpoint in the Hugging Face cache, if one was downloaded."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        return None


def pick_device(device: str) -> torch.device:
    """``auto`` means the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on GPUs that support it, float32 elsewhere (CPU bf16 matmuls are slow)."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _quantization_config(mode: str, dtype: torch.dtype) -> Any:
    if mode == "none":
        return None
    if not torch.cuda.is_available():
        raise ModelLoadError(f"{mode} loading needs a CUDA GPU (bitsandbytes); none is visible")
    from transformers import BitsAndBytesConfig

    if mode == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    return BitsAndBytesConfig(load_in_8bit=True)


class QwenVideoLM:
    """`VideoLM` over a transformers Qwen2(.5)-VL model and its processor."""

    def __init__(self, model: Any, processor: Any, settings: ModelSettings | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.settings = settings or ModelSettings(model="custom")
        self.name = self.settings.model
        self.device = next(model.parameters()).device
        tok = processor.tokenizer
        stops = model.generation_config.eos_token_id
        stops = [stops] if isinstance(stops, int) else list(stops or [])
        self.end_id = tok.convert_tokens_to_ids("<|im_end|>")
        self.stop_ids = sorted({self.end_id, *stops})
        self.banned_ids = [
            tok.convert_tokens_to_ids(t)
            for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
        ]
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    @classmethod
    def load(cls, settings: ModelSettings) -> QwenVideoLM:
        """Load processor and model by hub id, local folder or ``tiny``; errors say what to do.

        A folder holding a LoRA adapter (a ``vmtr train`` checkpoint of a LoRA run) loads the base
        model its config names and folds the adapter in.
        """
        path = resolve_model_path(settings.model)
        if is_adapter_folder(path):
            return cls._load_adapter(path, settings)
        is_hub_id = settings.model != "tiny" and not Path(path).exists()
        if is_hub_id:
            path = cached_snapshot(path) or path
            if path == settings.model and not hub_reachable():
                raise ModelLoadError(
                    f"model {settings.model!r} is not in the Hugging Face cache and the hub "
                    f"cannot be reached. Download it where the hub is reachable "
                    f"(`hf download {settings.model} --local-dir DIR`) and pass `--model DIR`, "
                    "or use `--model tiny`."
                )
        device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, device)
        kwargs: dict[str, Any] = {"dtype": dtype}
        quant = _quantization_config(settings.quantization, dtype)
        if quant is not None:
            kwargs.update(quantization_config=quant, device_map={"": device.index or 0})
        if settings.attn_implementation:
            kwargs["attn_implementation"] = settings.attn_implementation
        try:
            processor = AutoProcessor.from_pretrained(path)
            model = load_pretrained(path, **kwargs)  # GTA-aware from_pretrained
        except (OSError, ValueError, KeyError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            hint = (
                f" Download it where the hub is reachable (`hf download {settings.model} "
                "--local-dir DIR`) and pass `--model DIR`, or use `--model tiny`."
                if is_hub_id
                else ""
            )
            raise ModelLoadError(
                f"could not load model {settings.model!r}: {reason}.{hint}"
            ) from err
        if quant is None:
            model = model.to(device)
        return cls(model, processor, settings)

    @classmethod
    def _load_adapter(cls, folder: str, settings: ModelSettings) -> QwenVideoLM:
        try:
            import peft  # noqa: F401
        except ImportError as err:
            raise ModelLoadError(
                f"{folder} holds a LoRA adapter; loading it needs peft (`pip install vmtr[train]`)"
            ) from err
        try:
            base_spec = adapter_base(folder)
        except ValueError as err:
            raise ModelLoadError(str(err)) from err
        base = cls.load(settings.model_copy(update={"model": base_spec}))
        model = load_adapter(base.model, folder, trainable=False).merge_and_unload()
        processor = base.processor
        if (Path(folder) / "preprocessor_config.json").exists():
            processor = AutoProcessor.from_pretrained(folder)
        return cls(model, processor, settings)

    @property
    def core(self) -> Any:
        """The inner ``Qwen2_5_VLModel`` (vision tower, M-RoPE rule), through a PEFT wrapper
        when the model being trained carries a LoRA adapter."""
        model = self.model
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        return model.model

    @property
    def pixel_budget(self) -> dict[str, int]:
        """Per-frame pixel budget (capped by the processor's own), for decoding frames small."""
        image_proc = self.processor.image_processor
        size = getattr(image_proc, "size", None) or {}
        proc_max = size.get("longest_edge") or getattr(image_proc, "max_pixels", None)
        factor = image_proc.patch_size * image_proc.merge_size
        budget = self.settings.max_pixels
        if proc_max:
            budget = min(budget, int(proc_max))
        return {"max_pixels": budget, "min_pixels": self.settings.min_pixels, "factor": factor}

    def end_session(self, session: str) -> None:
        self._sessions.pop(session, None)

    def session_tokens(self, session: str) -> dict[str, Any] | None:
        """Everything the model saw and sampled in ``session``: ids, modality types, images and
        reply spans — the exact inputs an RL update must replay (None when unknown)."""
        state = self._sessions.get(session)
        return None if state is None else state.record()

    # -- one turn -------------------------------------------------------------------------------

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
        """Reply to ``messages``, prefilling only what the session has not seen yet.

        ``forced``: the reply's token ids, fed instead of sampled (RL replays an episode's reply
        to branch from the turn after it); each gets the log-prob the policy gives it, so the
        reply is recorded exactly as if it had been sampled. ``prefix``: the reply's first token
        ids, fed the same way, after which sampling takes over (RL branches inside a reply, after
        the text that leads to its action); they count towards ``max_new_tokens``."""
        if forced is None and len(prefix) >= settings.max_new_tokens:
            raise ValueError("a reply's prefix must be shorter than max_new_tokens")
        started = time.perf_counter()
        text = self.processor.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False
        )
        all_frames = [i for m in messages for i in frames_in(m)]
        state = self._session_for(session, text)
        new_frames = all_frames[state.images :]
        images = frames(new_frames) if new_frames else None
        encoded = self.processor(text=[text[len(state.text) :]], images=images, return_tensors="pt")
        if "mm_token_type_ids" not in encoded:
            raise RuntimeError("processor output lacks mm_token_type_ids; positions would be wrong")
        self._append(state, encoded, len(new_frames))
        state.text = text
        new_prompt = state.length - (state.cache.get_seq_length() if state.cache else 0)
        prompt_tokens = state.length
        generated, logprobs = self._decode(state, settings, forced, prefix)
        reply = self.close_reply(state, generated, logprobs)
        if session is not None and self.settings.reuse_kv_cache:
            self._sessions[session] = state
            self._sessions.move_to_end(session)
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        elif session is not None:
            state.cache = None
            self._sessions[session] = state
        return Generation(
            text=reply,
            token_ids=generated,
            logprobs=logprobs,
            prompt_tokens=prompt_tokens,
            new_prompt_tokens=new_prompt,
            seconds=time.perf_counter() - started,
        )

    def close_reply(self, state: _Session, generated: list[int], logprobs: list[float]) -> str:
        """Add a finished reply to the session as the chat template closes it: its tokens as
        sampled, a stop token replaced by ``<|im_end|>`` (or one added after a cut-off reply),
        and its span for RL; returns the reply's text."""
        reply = self.processor.tokenizer.decode(
            [t for t in generated if t not in self.stop_ids], skip_special_tokens=False
        )
        closing = generated[:-1] if generated and generated[-1] in self.stop_ids else generated
        first = state.length
        self._append_ids(state, [*closing, self.end_id])
        sampled = len(closing) + (1 if generated and generated[-1] == self.end_id else 0)
        state.replies.append(ReplySpan(first, len(closing) + 1, sampled, tuple(logprobs[:sampled])))
        state.text = state.text + reply + "<|im_end|>"
        return reply

    def _session_for(self, session: str | None, text: str) -> _Session:
        """The kept session when the new prompt extends it, else a fresh one."""
        state = self._sessions.get(session) if session is not None else None
        if state is not None and text.startswith(state.text):
            return state
        return _Session()

    def _append(self, state: _Session, encoded: Any, n_images: int) -> None:
        ids = encoded["input_ids"]
        mm = encoded["mm_token_type_ids"]
        state.ids = ids if state.ids is None else torch.cat([state.ids, ids], dim=1)
        state.mm_types = mm if state.mm_types is None else torch.cat([state.mm_types, mm], dim=1)
        if n_images:
            state.grids.extend(encoded["image_grid_thw"])
            state.pixels.append(encoded["pixel_values"])
            state.images += n_images

    def _append_ids(self, state: _Session, ids: list[int]) -> None:
        extra = torch.tensor([ids], dtype=torch.long)
        state.ids = torch.cat([state.ids, extra], dim=1)
        state.mm_types = torch.cat([state.mm_types, torch.zeros_like(extra)], dim=1)

    def positions(self, state: _Session) -> torch.Tensor:
        """3-D M-RoPE positions [3, 1, L] of the whole sequence, from the model's own rule."""
        if not state.grids:
            return torch.arange(state.length).view(1, 1, -1).expand(3, 1, -1)
        positions, _ = self.core.get_rope_index(
            state.ids,
            mm_token_type_ids=state.mm_types,
            image_grid_thw=torch.stack(state.grids),
        )
        return positions

    @torch.inference_mode()
    def _decode(
        self,
        state: _Session,
        settings: GenerationSettings,
        forced: Sequence[int] | None = None,
        prefix: Sequence[int] = (),
    ) -> tuple[list[int], list[float]]:
        """Prefill what the cache lacks, then sample until a stop token or the length limit
        (or feed ``forced`` whole, or ``prefix`` first)."""
        reuse = self.settings.reuse_kv_cache and state.cache is not None
        cache = state.cache if reuse else DynamicCache(config=self.model.config)
        start = cache.get_seq_length() if reuse else 0
        positions = self.positions(state)
        pixel_values, grids = self._pixels_from(state, start)
        out = self.model(
            input_ids=state.ids[:, start:].to(self.device),
            mm_token_type_ids=state.mm_types[:, start:].to(self.device),
            pixel_values=pixel_values,
            image_grid_thw=grids,
            position_ids=positions[:, :, start:].to(self.device),
            **cache_kwargs(cache),
            use_cache=True,
            logits_to_keep=1,
        )
        next_pos = int(positions.max()) + 1
        generator = None
        if settings.seed is not None and settings.temperature > 0:
            # Seeded per turn (by prompt length) so later turns do not replay turn 1's draws.
            generator = torch.Generator(device=self.device).manual_seed(
                settings.seed * 1_000_003 + state.length
            )
        tokens: list[int] = []
        logprobs: list[float] = []
        logits = out.logits[:, -1, :]
        limit = len(forced) if forced is not None else settings.max_new_tokens
        fed = forced if forced is not None else prefix
        for step in range(limit):
            if step < len(fed):
                token = fed[step]
                logprob = self.logprob_of(logits, settings, token)
            else:
                token, logprob = self._pick(logits, settings, generator)
            tokens.append(token)
            logprobs.append(logprob)
            if step == limit - 1 or (step >= len(fed) and token in self.stop_ids):
                break
            pos = torch.full((3, 1, 1), next_pos + step, dtype=torch.long, device=self.device)
            out = self.model(
                input_ids=torch.tensor([[token]], device=self.device),
                position_ids=pos,
                **cache_kwargs(cache),
                use_cache=True,
            )
            logits = out.logits[:, -1, :]
        state.cache = cache
        return tokens, logprobs

    def _pixels_from(self, state: _Session, start: int) -> tuple[Any, Any]:
        """pixel_values and grids of the images whose tokens lie at or after ``start``."""
        if not state.grids:
            return None, None
        image_tokens = state.mm_types[0] == 1
        merge = self.processor.image_processor.merge_size**2
        counts = [int(g.prod()) // merge for g in state.grids]
        seen_tokens = int(image_tokens[:start].sum())
        first, total = 0, 0
        while first < len(counts) and total + counts[first] <= seen_tokens:
            total += counts[first]
            first += 1
        if first == len(counts):
            return None, None
        pixels = torch.cat(state.pixels, dim=0)
        patch_offsets = [0]
        for g in state.grids:
            patch_offsets.append(patch_offsets[-1] + int(g.prod()))
        dtype = next(self.core.visual.parameters()).dtype
        return (
            pixels[patch_offsets[first] :].to(self.device, dtype),
            torch.stack(state.grids[first:]).to(self.device),
        )

    def _scaled(self, logits: torch.Tensor, settings: GenerationSettings) -> torch.Tensor:
        """Logits as sampling sees them: banned tokens out, divided by the temperature (not at
        temperature 0, where the pick is greedy)."""
        logits = logits[0].float()
        logits[self.banned_ids] = float("-inf")
        return logits / settings.temperature if settings.temperature > 0 else logits

    def logprob_of(self, logits: torch.Tensor, settings: GenerationSettings, token: int) -> float:
        """The log-prob `_pick` would record for ``token`` (a forced reply's)."""
        return float(torch.log_softmax(self._scaled(logits, settings), -1)[token])

    def _pick(
        self, logits: torch.Tensor, settings: GenerationSettings, generator: Any
    ) -> tuple[int, float]:
        """Greedy at temperature 0, else temperature + top-p sampling; returns the log-prob."""
        scaled = self._scaled(logits, settings)
        logp = torch.log_softmax(scaled, -1)
        if settings.temperature <= 0:
            token = int(torch.argmax(scaled))
            return token, float(logp[token])
        probs = logp.exp()
        if settings.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_p, 0) - sorted_p < settings.top_p
            mask = torch.zeros_like(probs, dtype=torch.bool)
            mask[order[keep]] = True
            probs = torch.where(mask, probs, torch.zeros_like(probs))
            probs = probs / probs.sum()
        token = int(torch.multinomial(probs, 1, generator=generator).item())
        return token, float(logp[token])
