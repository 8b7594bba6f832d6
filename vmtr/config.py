"""Settings objects for every part of vmtr.

Pydantic models with defaults that reproduce the released Video-MTR code. The CLI maps its flags
onto these; library code receives them as arguments and never reads environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_MODEL = "Phoebe13/Video-MTR"
"""Hub id of the released Video-MTR 7B checkpoint (Qwen2.5-VL architecture)."""


class ProtocolSettings(BaseModel):
    """The multi-turn protocol: how many frames, turns and which frames each turn shows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pool_size: int = Field(64, ge=1, description="Most frames in the pool sampled once per video.")
    pool_max_fps: float = Field(1.0, gt=0, description="Pool sampling rate ceiling (frames/s).")
    first_turn_frames: int = Field(16, ge=1, description="Frames shown on turn 1.")
    frames_per_retrieve: int = Field(8, ge=1, description="Most frames one retrieve returns.")
    max_turns: int = Field(3, ge=1, description="Turn budget; the last turn must answer.")
    label_timestamps: bool = Field(
        False, description="Add each frame's time in seconds to its `frame_idx` label."
    )

    @model_validator(mode="after")
    def _first_turn_fits(self) -> ProtocolSettings:
        if self.first_turn_frames > self.pool_size:
            raise ValueError("first_turn_frames cannot exceed pool_size")
        return self


class GenerationSettings(BaseModel):
    """Decoding settings; evaluation defaults of the released code (temperature 0.1, 1024)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(1024, ge=1)
    temperature: float = Field(0.1, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(0, description="Seed for sampling; None leaves torch's RNG alone.")


class ModelSettings(BaseModel):
    """Which checkpoint to load and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(DEFAULT_MODEL, description="Hub id, local folder, or `tiny`.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", description="`auto`, `cpu`, `cuda`, `cuda:1`, ...")
    quantization: Literal["none", "4bit", "8bit"] = "none"
    attn_implementation: str | None = Field(None, description="e.g. `sdpa`, `flash_attention_2`.")
    max_pixels: int = Field(128 * 28 * 28, gt=0, description="Pixel budget per frame (eval).")
    min_pixels: int = Field(4 * 28 * 28, gt=0)
    reuse_kv_cache: bool = Field(True, description="Keep earlier turns' KV cache across turns.")


def cache_dir() -> Path:
    """Where vmtr keeps indexes and generated files: `$VMTR_CACHE_DIR` or the platform cache."""
    env = os.environ.get("VMTR_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vmtr"


class ServedSettings(BaseModel):
    """A model behind an OpenAI-compatible chat-completions endpoint (vLLM, SGLang,
    `transformers serve`, a hosted API). The API key is not a setting: it is handed to the
    backend apart, so it never lands in a saved configuration or a run's identity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="The endpoint's root, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="The model name the server knows (its `model` field).")
    timeout: float = Field(300.0, gt=0, description="Seconds one request may take.")
    max_retries: int = Field(
        4, ge=0, description="Retries of connection errors, timeouts, 429 and 5xx."
    )
    backoff: float = Field(1.0, ge=0, description="First retry's wait; it doubles each retry.")
    max_backoff: float = Field(30.0, ge=0, description="Longest wait between two tries.")
    image_format: Literal["png", "jpeg"] = Field(
        "png", description="png: the decoded pixels exactly; jpeg: several times smaller."
    )
    extra_body: dict[str, Any] | None = Field(
        None, description="Server-specific request fields, e.g. vLLM's mm_processor_kwargs."
    )
    tool_protocol: Literal["text", "native"] = Field(
        "text",
        description="text: the Video-MTR tags the released checkpoint was trained on; native: "
        "select_segment and answer as function tools, for servers that parse tool calls.",
    )

    def identity(self) -> dict[str, Any]:
        """What changes the replies: where, which model, how images travel, extra fields, and
        the tool protocol (named only when native, so text runs keep one identity)."""
        identity = self.model_dump(
            mode="json", include={"base_url", "model", "image_format", "extra_body"}
        )
        if self.tool_protocol != "text":
            identity["tool_protocol"] = self.tool_protocol
        return identity
