"""Grouped-head latent attention (GTA, arXiv 2506.17286) for the Qwen2.5-VL text decoder.

GTA shrinks what a decoder caches per token. Query heads are split into ``groups``; each group
computes ONE attention map, from one query against a shared key head, and all heads of the group
reuse it. Values are not cached per head: each token caches a small value **latent**
``c_t = W_c x_t``. A group attends over the latents, and a decoder rebuilds each head's value
from the attended latent with its own projection, multiplied by a gate ``sigmoid(W_g x_t)`` of the
current token (the nonlinearity; it depends only on the query token, so it is applied after the
attention sum and the latents stay cacheable). The cache holds ``key_heads`` keys and the latent:
``key_heads * head_dim + latent_dim`` numbers per token per layer instead of GQA's
``2 * kv_heads * head_dim``.

How it plugs in: `apply_gta` swaps every text-decoder ``self_attn`` of a
``Qwen2_5_VLForConditionalGeneration`` for a `GTAAttention` and records the settings in
``config.text_config.gta``, so ``save_pretrained`` keeps them; `vmtr.models.weights.load_pretrained` reads them back and
rebuilds the GTA layers before loading weights (plain checkpoints load as usual). The module keeps
transformers' contract (same forward signature, ``DynamicCache.update`` for the cache, the
model's M-RoPE ``cos``/``sin`` applied to queries and shared keys, the configured attention
kernel and masks), so ``generate()``, vmtr's own decode loop and the multimodal positions work
unchanged.

Departures from the paper: sizes follow the tiny model, not GTA-1B; ``key_heads`` may be more than
one (groups then share keys the way GQA shares them); the decoder's weights start at a scale that
keeps the value path's magnitude (``1/sqrt(latent_dim)``), since the tiny model trains from
scratch in minutes. It is a pre-training architecture: applying it to a trained Qwen replaces the
attention weights with fresh ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import eager_attention_forward

from vmtr.models.rotary import apply_rotary, mrope_section_of

CONFIG_KEY = "gta"
"""Attribute of ``config.text_config`` that holds the settings (a plain dict, so it saves)."""

SUPPORTED_KERNELS = ("eager", "sdpa")
"""Attention kernels that accept a value width different from the key width."""


class GTASettings(BaseModel):
    """Shape of the GTA attention; defaults fit the tiny model (4 heads of 32)."""

    model_config = ConfigDict(extra="forbid")

    groups: int = Field(2, ge=1, description="Attention maps per layer; heads share them evenly.")
    key_heads: int = Field(1, ge=1, description="Cached key heads, shared by the groups.")
    latent_dim: int = Field(12, ge=1, description="Cached value latent width per token.")


class AttentionChoice(BaseModel):
    """The attention a trainer gives its model: as the checkpoint has it, or fresh grouped-tied
    attention in the text decoder, trained from scratch with every other weight kept (a GQA and
    a GTA run from the same seed share those). Mixed into the settings of every trainer that
    can train GTA (`vmtr train sft`, the tiny model's curriculum); checkpoints reload as GTA."""

    attention: Literal["model", "gta"] = "model"
    gta: GTASettings = GTASettings()


class GTAAttention(nn.Module):
    """Drop-in for ``Qwen2_5_VLAttention``: same inputs and outputs, a smaller cache."""

    def __init__(self, config: Any, layer_idx: int, settings: GTASettings) -> None:
        super().__init__()
        heads = config.num_attention_heads
        if config.hidden_size % heads:
            raise ValueError(f"hidden_size {config.hidden_size} is not a multiple of {heads} heads")
        if heads % settings.groups:
            raise ValueError(f"{heads} heads cannot be split into {settings.groups} groups")
        if settings.groups % settings.key_heads:
            raise ValueError(f"{settings.groups} groups cannot share {settings.key_heads} keys")
        self.config = config
        self.layer_idx = layer_idx
        self.settings = settings
        self.num_heads = heads
        self.head_dim = config.hidden_size // heads
        self.groups = settings.groups
        self.heads_per_group = heads // settings.groups
        self.key_heads = settings.key_heads
        self.latent_dim = settings.latent_dim
        # Names the transformers attention kernels read from the module.
        self.num_key_value_groups = settings.groups // settings.key_heads
        self.is_causal = True
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = getattr(config, "attention_dropout", 0.0)
        self.pad_from = 2  # query lengths from which values are padded for the fused kernel

        hidden = config.hidden_size
        # One fused input projection (fewer kernel calls per decoded token); its output splits
        # into the group queries, the shared keys, the value latent and the gate logits.
        self.splits = (
            self.groups * self.head_dim,
            self.key_heads * self.head_dim,
            self.latent_dim,
            heads * self.head_dim,
        )
        self.in_proj = nn.Linear(hidden, sum(self.splits), bias=True)
        # Per group: attended latent -> the values of that group's heads.
        self.value_decoder = nn.Parameter(
            torch.empty(self.groups, self.latent_dim, self.heads_per_group * self.head_dim)
        )
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=False)
        self.reset_parameters(getattr(config, "initializer_range", 0.02))

    def reset_parameters(self, std: float) -> None:
        """The model's normal init for projections; the decoder keeps the latent's scale."""
        for linear in (self.in_proj, self.o_proj):
            nn.init.normal_(linear.weight, std=std)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        nn.init.normal_(self.value_decoder, std=1.0 / math.sqrt(self.latent_dim))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Shared maps over cached keys and latents, then the gated per-head decoder.

        The decoder layer hands the KV cache over as ``cache`` on newer transformers releases
        and as ``past_key_values`` on older ones (`vmtr.models.cache_names`); either is used."""
        cache = cache if cache is not None else past_key_values
        batch, length, _ = hidden_states.shape
        query, key, latent, gate = self.in_proj(hidden_states).split(self.splits, dim=-1)
        query = query.view(batch, length, self.groups, self.head_dim).transpose(1, 2)
        key = key.view(batch, length, self.key_heads, self.head_dim).transpose(1, 2)
        latent = latent.view(batch, length, 1, self.latent_dim).transpose(1, 2)

        # The decoder's rotary tables, M-RoPE sections interleaved (`vmtr.models.rotary`).
        cos, sin = position_embeddings  # type: ignore[misc]
        query, key = apply_rotary(query, key, cos, sin, mrope_section_of(self.config))

        if cache is not None:
            # The cache stores exactly what GTA needs: the shared keys and the value latent.
            key, latent = cache.update(key, latent, self.layer_idx)

        kernel = self.config._attn_implementation or "sdpa"
        if kernel not in SUPPORTED_KERNELS:
            raise ValueError(f"GTA runs with attention {SUPPORTED_KERNELS}, not {kernel!r}")
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(kernel, eager_attention_forward)
        # Every key head sees the same latent; expand is a view, nothing is copied or cached.
        values = latent.expand(-1, self.key_heads, -1, -1)
        width = self.latent_dim
        if kernel == "sdpa" and width < self.head_dim and length >= self.pad_from:
            # PyTorch's fused CPU kernel wants values as wide as keys; zero columns are cheaper
            # than the unfused fallback. Only the attention input is padded, never the cache.
            values = nn.functional.pad(values, (0, self.head_dim - width))
        attended, weights = attend(
            self,
            query,
            key,
            values,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            position_ids=position_ids,
            **kwargs,
        )
        attended = attended[..., :width]  # [batch, length, groups, latent_dim]
        per_head = torch.matmul(attended.unsqueeze(-2), self.value_decoder)  # [b, l, g, 1, v]
        per_head = per_head.reshape(batch, length, self.num_heads * self.head_dim)
        return self.o_proj(per_head * torch.sigmoid(gate)), weights


# ---------------------------------------------------------------------------------------------
# Switching a model to GTA, saving and loading


def text_config_of(model_or_config: Any) -> Any:
    """The text decoder's config of a Qwen2.5-VL model or config (or a text config itself)."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "text_config", config)


def gta_settings(model_or_config: Any) -> GTASettings | None:
    """The GTA settings recorded in a model's or config's text config, if any."""
    raw = getattr(text_config_of(model_or_config), CONFIG_KEY, None)
    return GTASettings.model_validate(raw) if raw else None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The text decoder's layers of a ``Qwen2_5_VLForConditionalGeneration`` (or its inner model)."""
    inner = getattr(model, "model", model)
    text = getattr(inner, "language_model", inner)
    layers = getattr(text, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no text decoder layers to switch to GTA")
    return layers


def apply_gta(model: nn.Module, settings: GTASettings | None = None) -> nn.Module:
    """Replace every text-decoder attention with a fresh `GTAAttention` and record the settings.

    The new attention weights are randomly initialised: GTA is trained from scratch. A text
    config set to a kernel GTA cannot use (flash attention needs equal key and value widths) is
    switched to ``sdpa``.
    """
    settings = settings or GTASettings()
    config = text_config_of(model)
    kernel = config._attn_implementation or "sdpa"
    if kernel not in SUPPORTED_KERNELS:
        config._attn_implementation = "sdpa"
    reference = next(model.parameters())
    for index, layer in enumerate(decoder_layers(model)):
        attention = GTAAttention(config, index, settings)
        layer.self_attn = attention.to(device=reference.device, dtype=reference.dtype)
    setattr(config, CONFIG_KEY, settings.model_dump())
    return model


def maybe_apply_gta(model: nn.Module) -> nn.Module:
    """Switch a model to GTA when its config says so and its layers are not GTA yet."""
    settings = gta_settings(model)
    if settings is not None and not isinstance(decoder_layers(model)[0].self_attn, GTAAttention):
        apply_gta(model, settings)
    return model


def save_as_gta(
    source: str | Path, target: str | Path, settings: GTASettings | None = None, seed: int = 0
) -> Path:
    """Copy a saved checkpoint (model + processor) with its attention switched to fresh GTA.

    Meant for a freshly built tiny model before training (``target`` may equal ``source``); the
    other weights are kept, so a GQA run and a GTA run can start from the same initial model.
    """
    from transformers import AutoProcessor

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(source)
    torch.manual_seed(seed)
    apply_gta(model, settings)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


def load_gta_checkpoint(path: str | Path, config: Any, **kwargs: Any) -> nn.Module:
    """A saved GTA checkpoint through ``from_pretrained`` (same keywords, same checkpoint key
    mapping), on a loading class that switches the layers to GTA right after construction,
    before the weights are read; handed back as a plain ``Qwen2_5_VLForConditionalGeneration``.
    The GTA option of `vmtr.models.weights.load_pretrained`, which routes checkpoints here with
    the config it has already read."""
    if not isinstance(config, Qwen2_5_VLConfig):
        raise ValueError(f"{path}: GTA is wired for Qwen2.5-VL, not {type(config).__name__}")
    model, info = _LoadAsGTA.from_pretrained(path, output_loading_info=True, **kwargs)
    lost = [k for k in info["missing_keys"] if ".self_attn." in k]
    if lost:
        raise ValueError(f"{path}: GTA checkpoint lacks attention weights such as {lost[0]}")
    model.__class__ = Qwen2_5_VLForConditionalGeneration  # the loading class adds nothing
    return model


class _LoadAsGTA(Qwen2_5_VLForConditionalGeneration):
    """Loading shim: builds the model, then swaps in GTA before ``from_pretrained`` fills it."""

    def __init__(self, config: Qwen2_5_VLConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        maybe_apply_gta(self)


# transformers renames checkpoint keys per class name and skips classes defined outside it, so
# the shim registers the key renaming of the class it stands in for.
register_checkpoint_conversion_mapping(
    _LoadAsGTA.__name__,
    get_checkpoint_conversion_mapping(Qwen2_5_VLForConditionalGeneration.__name__) or [],
    overwrite=True,
)


# ---------------------------------------------------------------------------------------------
# Cost accounting (benchmarks and tests)


def cache_numbers_per_token(model_or_config: Any) -> int:
    """Numbers cached per token per layer: keys and latent for GTA, keys and values for GQA."""
    config = text_config_of(model_or_config)
    head_dim = config.hidden_size // config.num_attention_heads
    settings = gta_settings(config)
    if settings is not None:
        return settings.key_heads * head_dim + settings.latent_dim
    return 2 * config.num_key_value_heads * head_dim


def attention_flops_per_token(model_or_config: Any, context: int) -> dict[str, int]:
    """Multiply-adds x2 of one layer's attention for one new token attending ``context`` tokens.

    ``projections`` is independent of the context; ``scores`` and ``mixing`` grow with it.
    """
    config = text_config_of(model_or_config)
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = hidden // heads
    settings = gta_settings(config)
    if settings is None:
        kv = config.num_key_value_heads
        projections = 2 * hidden * (2 * heads * head_dim + 2 * kv * head_dim)
        scores = 2 * heads * head_dim * context
        mixing = 2 * heads * head_dim * context
    else:
        g, latent = settings.groups, settings.latent_dim
        projections = 2 * hidden * (g * head_dim + settings.key_heads * head_dim + latent)
        projections += 2 * hidden * heads * head_dim * 2  # gate and output
        projections += 2 * latent * heads * head_dim  # value decoder
        scores = 2 * g * head_dim * context
        mixing = 2 * g * latent * context
    return {
        "projections": projections,
        "scores": scores,
        "mixing": mixing,
        "total": projections + scores + mixing,
    }
