"""vmtr's rotary helper equals the installed transformers release's own Qwen2.5-VL rotation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

from vmtr.models.rotary import apply_rotary, mrope_section_of
from vmtr.models.tiny import TINY_DIR


def _tables(batch: int = 2, length: int = 7) -> tuple[object, torch.Tensor, torch.Tensor]:
    """The tiny model's text config and the rotary tables its decoder would hand a layer."""
    config = AutoConfig.from_pretrained(TINY_DIR).text_config
    rotary = qwen.Qwen2_5_VLRotaryEmbedding(config)
    generator = torch.Generator().manual_seed(0)
    positions = torch.randint(0, 50, (3, batch, length), generator=generator)
    x = torch.zeros(batch, length, config.hidden_size)
    cos, sin = rotary(x, positions)
    return config, cos, sin


def _reference(q, k, cos, sin, config):
    """What the installed release's attention does with the tables."""
    if hasattr(qwen, "apply_multimodal_rotary_pos_emb"):
        return qwen.apply_multimodal_rotary_pos_emb(q, k, cos, sin, mrope_section_of(config))
    return qwen.apply_rotary_pos_emb(q, k, cos, sin)


def test_apply_rotary_matches_the_installed_release() -> None:
    config, cos, sin = _tables()
    head_dim = config.hidden_size // config.num_attention_heads
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(2, config.num_attention_heads, 7, head_dim, generator=generator)
    k = torch.randn(2, config.num_key_value_heads, 7, head_dim, generator=generator)
    ours = apply_rotary(q, k, cos, sin, mrope_section_of(config))
    theirs = _reference(q, k, cos, sin, config)
    torch.testing.assert_close(ours[0], theirs[0])
    torch.testing.assert_close(ours[1], theirs[1])
    # the rotation moves the vectors, so the equality above is not a trivial one
    assert not torch.allclose(ours[0], q)


def test_per_axis_tables_need_the_sections() -> None:
    q = torch.zeros(1, 1, 2, 8)
    per_axis = torch.zeros(3, 1, 2, 8)
    with pytest.raises(ValueError, match="mrope_section"):
        apply_rotary(q, q, per_axis, per_axis)


def test_the_tiny_config_names_its_sections() -> None:
    config = AutoConfig.from_pretrained(TINY_DIR).text_config
    sections = mrope_section_of(config)
    assert sections is not None and 2 * sum(sections) == config.hidden_size // (
        config.num_attention_heads
    )
