"""Reading a model's weights from a checkpoint folder or hub id: the one place every loader of
vmtr (the backend, the trainers, the recipes) goes through, so that a checkpoint saved with
grouped-tied attention (`vmtr.models.gta`) comes back as GTA wherever it is opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText

from vmtr.models.gta import gta_settings, load_gta_checkpoint


def load_pretrained(path: str | Path, **kwargs: Any) -> nn.Module:
    """``AutoModelForImageTextToText.from_pretrained`` that also rebuilds saved GTA layers: a
    checkpoint whose text config records GTA settings goes through `load_gta_checkpoint`,
    anything else straight to ``from_pretrained`` with the same keywords."""
    config = AutoConfig.from_pretrained(path)
    if gta_settings(config) is not None:
        return load_gta_checkpoint(path, config, **kwargs)
    return AutoModelForImageTextToText.from_pretrained(path, **kwargs)
