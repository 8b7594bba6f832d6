"""LoRA / QLoRA adapters: wrap a model for training, checkpoint, resume, merge, load.

Why a module of its own: a LoRA run must never merge its live model. ``merge_and_unload`` swaps the
LoRA layers out of the model it is called on, so a checkpoint that merged the policy being trained
left the optimiser holding orphaned adapter weights (later steps trained nothing) and made the KL
reference (the base with the adapter switched off) equal to the policy. So a LoRA checkpoint holds
the adapter as PEFT saves it (``adapter_config.json``, ``adapter_model.safetensors``), resume puts
the same adapter back on a freshly loaded base, and a merged, loadable model is built from a
*copy* (`save_merged`). An adapter folder is itself loadable (``--model CKPT``): the backend
loads the base it names and folds the adapter in.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from torch import nn

ADAPTER_CONFIG = "adapter_config.json"
MERGED_DIR = "merged"
"""Sub-folder of a LoRA checkpoint that holds the merged full model (``--model CKPT/merged``)."""

LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"
"""The text decoder's attention projections (the vision tower stays frozen)."""


def is_adapter_folder(path: str | Path) -> bool:
    """A folder that holds a PEFT adapter rather than a full model."""
    return (Path(path) / ADAPTER_CONFIG).exists()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter folder was trained on, as its config names it."""
    config = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path}: {ADAPTER_CONFIG} does not name its base model")
    return str(base)


def add_lora(model: nn.Module, rank: int) -> nn.Module:
    """Wrap ``model`` with a trainable LoRA adapter of ``rank`` (alpha = 2 * rank)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS)
    )


def load_adapter(model: nn.Module, folder: str | Path, *, trainable: bool) -> nn.Module:
    """Put a saved adapter back on a freshly loaded base model."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)


def save_adapter(model: nn.Module, folder: str | Path) -> None:
    """The adapter alone, as PEFT saves it; the live model is left as it is."""
    model.save_pretrained(str(folder))


def merged_copy(model: nn.Module) -> nn.Module:
    """A full model with the adapter folded in, built from a deep copy of ``model``."""
    return copy.deepcopy(model).merge_and_unload()


def save_merged(model: nn.Module, folder: str | Path, processor: Any | None = None) -> Path:
    """Write a merged, loadable copy (model + processor) to ``folder``; ``model`` is untouched."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merged_copy(model).save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    return folder
