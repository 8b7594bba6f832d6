"""GTA attention in the tiny Qwen2.5-VL: shapes, cache size, cache == recomputation, save/reload.

The reference for every cached run is one full forward over the whole sequence with the model's
own M-RoPE positions (`get_rope_index` on the processor's outputs, images included).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DynamicCache, Qwen2_5_VLForConditionalGeneration

from vmtr.config import GenerationSettings
from vmtr.models.cache_names import cache_kwargs, output_cache
from vmtr.models.gta import (
    GTAAttention,
    GTASettings,
    apply_gta,
    attention_flops_per_token,
    cache_numbers_per_token,
    decoder_layers,
    gta_settings,
    maybe_apply_gta,
    save_as_gta,
)
from vmtr.models.qwen import QwenVideoLM
from vmtr.models.tiny import build_processor, build_tokenizer, tiny_config
from vmtr.models.weights import load_pretrained

SETTINGS = GTASettings()  # 2 maps, 1 key head, 12-dim latent


@pytest.fixture(scope="module")
def processor():
    return build_processor(build_tokenizer())


def _model(processor, settings: GTASettings | None = SETTINGS, seed: int = 0, **sizes: int):
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(processor.tokenizer, **sizes))
    if settings is not None:
        apply_gta(model, settings)
        # Larger weights than the 0.02 init, so that logits differ from token to token.
        with torch.no_grad():
            for layer in decoder_layers(model):
                for p in layer.self_attn.parameters():
                    p.add_(torch.randn_like(p) * 0.2)
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model.eval()


def _inputs(processor, n_images: int = 2, question: str = "What colour was the shape?"):
    images = [
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (112, 112, 3), dtype=np.uint8))
        for i in range(n_images)
    ]
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True
    )
    return processor(text=[text], images=images, return_tensors="pt")


@pytest.fixture(scope="module")
def gta_model(processor):
    return _model(processor)


@pytest.mark.parametrize(
    ("settings", "keys"),
    [(GTASettings(), 1), (GTASettings(groups=4, key_heads=2, latent_dim=16), 2)],
)
def test_shapes_and_cache_layout(processor, settings, keys):
    model = _model(processor, settings)
    attention = decoder_layers(model)[0].self_attn
    assert isinstance(attention, GTAAttention)
    assert attention.in_proj.out_features == (settings.groups + keys + 4) * 32 + settings.latent_dim
    assert attention.value_decoder.shape == (
        settings.groups,
        settings.latent_dim,
        128 // settings.groups,
    )
    inputs = _inputs(processor)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    length = inputs["input_ids"].shape[1]
    assert out.logits.shape == (1, length, len(processor.tokenizer))
    for layer in output_cache(out).layers:
        assert layer.keys.shape == (1, keys, length, 32)
        assert layer.values.shape == (1, 1, length, settings.latent_dim)


def test_settings_are_validated(processor):
    with pytest.raises(ValueError, match="groups"):
        apply_gta(_model(processor, None), GTASettings(groups=3))
    with pytest.raises(ValueError, match="share"):
        apply_gta(_model(processor, None), GTASettings(groups=2, key_heads=4))


def test_cache_bytes_per_token_per_layer(processor, gta_model):
    """What the cache really holds, against the grouped-query tiny model at equal width/heads."""
    gqa = _model(processor, None)
    inputs = _inputs(processor)
    length = inputs["input_ids"].shape[1]
    held = {}
    for name, model in (("gta", gta_model), ("gqa", gqa)):
        with torch.no_grad():
            cache = output_cache(model(**inputs, use_cache=True))
        layer = cache.layers[0]
        nbytes = layer.keys.numel() * layer.keys.element_size()
        nbytes += layer.values.numel() * layer.values.element_size()
        held[name] = nbytes / length
        assert held[name] == cache_numbers_per_token(model) * 4  # float32
    assert held["gta"] == (32 + 12) * 4
    assert held["gqa"] == 2 * 2 * 32 * 4
    assert held["gta"] / held["gqa"] <= 0.35


def test_attention_flops_fall_with_context(processor, gta_model):
    gqa = _model(processor, None)
    short = (
        attention_flops_per_token(gta_model, 128)["total"]
        / attention_flops_per_token(gqa, 128)["total"]
    )
    long = (
        attention_flops_per_token(gta_model, 32768)["total"]
        / attention_flops_per_token(gqa, 32768)["total"]
    )
    assert long < short < 1.05
    assert long == pytest.approx((2 * 32 + 2 * 12) / (4 * 32 * 2), rel=0.02)


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_cached_decoding_equals_full_recomputation(processor, gta_model, kernel):
    """Prefill with images, 5 one-token steps, then a 3-token chunk: logits as one full pass."""
    model = gta_model
    model.config.text_config._attn_implementation = kernel
    try:
        inputs = _inputs(processor)
        prompt = inputs["input_ids"].shape[1]
        extra = torch.randint(10, 200, (1, 8))
        ids = torch.cat([inputs["input_ids"], extra], 1)
        mm = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(extra)], 1)
        positions, _ = model.model.get_rope_index(
            ids, mm_token_type_ids=mm, image_grid_thw=inputs["image_grid_thw"]
        )
        with torch.no_grad():
            full = model(
                input_ids=ids,
                mm_token_type_ids=mm,
                pixel_values=inputs["pixel_values"],
                image_grid_thw=inputs["image_grid_thw"],
                position_ids=positions,
            ).logits
            cache = DynamicCache(config=model.config)
            steps = [
                model(
                    input_ids=inputs["input_ids"],
                    mm_token_type_ids=inputs["mm_token_type_ids"],
                    pixel_values=inputs["pixel_values"],
                    image_grid_thw=inputs["image_grid_thw"],
                    position_ids=positions[:, :, :prompt],
                    **cache_kwargs(cache),
                    use_cache=True,
                ).logits
            ]
            chunks = [(i, i + 1) for i in range(prompt, prompt + 5)] + [(prompt + 5, prompt + 8)]
            for start, end in chunks:
                steps.append(
                    model(
                        input_ids=ids[:, start:end],
                        position_ids=positions[:, :, start:end],
                        **cache_kwargs(cache),
                        use_cache=True,
                    ).logits
                )
        cached = torch.cat(steps, 1)
        assert cache.get_seq_length() == ids.shape[1]
        assert full.std() > 0.05  # the comparison below is not between two constants
        torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)
    finally:
        model.config.text_config._attn_implementation = "sdpa"


def test_generate_matches_full_recomputation(processor, gta_model):
    inputs = _inputs(processor)
    prompt = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = gta_model.generate(
            **inputs,
            max_new_tokens=6,
            min_new_tokens=6,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
        ids = out.sequences
        mm = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(ids[:, prompt:])], 1)
        full = gta_model(
            input_ids=ids,
            mm_token_type_ids=mm,
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
        ).logits
    stepwise = torch.stack(out.logits, 1)
    torch.testing.assert_close(stepwise, full[:, prompt - 1 : -1], atol=1e-4, rtol=1e-4)


def test_padded_batch_matches_single_rows(processor, gta_model):
    """Left padding goes through the attention mask; each row must match its own run."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (112, 112, 3), np.uint8))
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True,
        )
        for q in ("What?", "Which shape came first, the red one or the blue one?")
    ]
    side = processor.tokenizer.padding_side
    processor.tokenizer.padding_side = "left"
    try:
        batch = processor(text=texts, images=[image, image], padding=True, return_tensors="pt")
    finally:
        processor.tokenizer.padding_side = side
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        both = gta_model(**batch).logits
        for i, text in enumerate(texts):
            row = processor(text=[text], images=[image], return_tensors="pt")
            alone = gta_model(**row).logits
            torch.testing.assert_close(both[i, -alone.shape[1] :], alone[0], atol=1e-4, rtol=1e-4)


def test_backend_decode_loop_runs_gta(processor, gta_model):
    """vmtr's own cached loop (QwenVideoLM) equals a full-forward greedy loop on a GTA model."""
    lm = QwenVideoLM(gta_model, processor)
    messages = [
        {"role": "user", "content": [{"type": "image", "frame": 0}, {"type": "text", "text": "Hi"}]}
    ]
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (112, 112, 3), np.uint8))
    greedy = GenerationSettings(temperature=0.0, max_new_tokens=6)
    gen = lm.generate(messages, lambda idx: [image for _ in idx], settings=greedy)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    enc = processor(text=[text], images=[image], return_tensors="pt")
    ids, mm = enc["input_ids"], enc["mm_token_type_ids"]
    expected = []
    with torch.no_grad():
        for _ in range(len(gen.token_ids)):
            logits = gta_model(
                input_ids=ids,
                mm_token_type_ids=mm,
                pixel_values=enc["pixel_values"],
                image_grid_thw=enc["image_grid_thw"],
            ).logits[0, -1]
            logits[lm.banned_ids] = float("-inf")
            token = int(logits.argmax())
            expected.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], 1)
            mm = torch.cat([mm, torch.zeros((1, 1), dtype=mm.dtype)], 1)
    assert gen.token_ids == expected


def test_save_and_reload_keep_gta(processor, gta_model, tmp_path: Path):
    gta_model.save_pretrained(tmp_path / "gta")
    processor.save_pretrained(tmp_path / "gta")
    loaded = load_pretrained(tmp_path / "gta", dtype=torch.float32)
    assert gta_settings(loaded) == SETTINGS
    assert all(isinstance(layer.self_attn, GTAAttention) for layer in decoder_layers(loaded))
    inputs = _inputs(processor)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, gta_model(**inputs).logits)
    # A plain checkpoint still loads through the same door, unchanged.
    plain = _model(processor, None)
    plain.save_pretrained(tmp_path / "plain")
    again = load_pretrained(tmp_path / "plain")
    assert gta_settings(again) is None
    assert not isinstance(decoder_layers(again)[0].self_attn, GTAAttention)


def test_maybe_apply_gta_only_switches_when_configured(processor):
    plain = _model(processor, None)
    assert not isinstance(decoder_layers(maybe_apply_gta(plain))[0].self_attn, GTAAttention)
    plain.config.text_config.gta = SETTINGS.model_dump()
    switched = maybe_apply_gta(plain)
    assert isinstance(decoder_layers(switched)[0].self_attn, GTAAttention)


def test_save_as_gta_keeps_the_other_weights(processor, tmp_path: Path):
    plain = _model(processor, None)
    plain.save_pretrained(tmp_path / "plain")
    processor.save_pretrained(tmp_path / "plain")
    save_as_gta(tmp_path / "plain", tmp_path / "gta", SETTINGS)
    switched = load_pretrained(tmp_path / "gta")
    assert gta_settings(switched) == SETTINGS
    assert isinstance(decoder_layers(switched)[0].self_attn, GTAAttention)
    before, after = plain.state_dict(), switched.state_dict()
    kept = [k for k in before if ".self_attn." not in k]
    assert kept and all(torch.equal(before[k], after[k]) for k in kept)
