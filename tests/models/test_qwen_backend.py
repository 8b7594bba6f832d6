"""The transformers backend: KV reuse across turns must not change what the model says.

The reference is a from-scratch greedy loop that runs a full forward over everything each step
and lets the model compute its own M-RoPE positions from the processor's outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vmtr import protocol
from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings
from vmtr.models.qwen import QwenVideoLM

GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=10)


def _images(indices):
    out = []
    for i in indices:
        rng = np.random.default_rng(i)
        out.append(Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)))
    return out


def _conversation(turn2_reply: str | None = None):
    settings = ProtocolSettings(first_turn_frames=4, max_turns=3)
    first = protocol.user_message(
        turn=1,
        frames=[0, 5, 10, 15],
        timestamps=[0.5, 5.5, 10.5, 15.5],
        question="What colour is the shape?",
        options=["A. red", "B. green"],
        pool_size=16,
        settings=settings,
    )
    messages = [protocol.system_message(settings), first]
    if turn2_reply is not None:
        messages += [
            protocol.assistant_message(turn2_reply),
            protocol.user_message(
                turn=2,
                frames=[6, 7],
                timestamps=[6.5, 7.5],
                question="What colour is the shape?",
                options=["A. red", "B. green"],
                pool_size=16,
                settings=settings,
            ),
        ]
    return messages


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    return QwenVideoLM.load(ModelSettings(model="tiny", device="cpu"))


def _reference_greedy(lm: QwenVideoLM, ids, mm, pixels, grids, n: int) -> list[int]:
    ids, mm = ids.clone(), mm.clone()
    out = []
    for _ in range(n):
        with torch.no_grad():
            logits = (
                lm.model(
                    input_ids=ids,
                    mm_token_type_ids=mm,
                    pixel_values=pixels,
                    image_grid_thw=grids,
                    use_cache=False,
                )
                .logits[0, -1]
                .float()
            )
        logits[lm.banned_ids] = float("-inf")
        token = int(torch.argmax(logits))
        out.append(token)
        if token in lm.stop_ids:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], 1)
        mm = torch.cat([mm, torch.zeros((1, 1), dtype=mm.dtype)], 1)
    return out


def test_first_turn_matches_full_forward_loop(tiny_lm):
    messages = _conversation()
    gen = tiny_lm.generate(messages, _images, settings=GREEDY, session="a")
    text = tiny_lm.processor.apply_chat_template(messages, add_generation_prompt=True)
    enc = tiny_lm.processor(text=[text], images=_images([0, 5, 10, 15]), return_tensors="pt")
    assert "mm_token_type_ids" in enc
    ref = _reference_greedy(
        tiny_lm,
        enc["input_ids"],
        enc["mm_token_type_ids"],
        enc["pixel_values"],
        enc["image_grid_thw"],
        GREEDY.max_new_tokens,
    )
    assert gen.token_ids == ref
    assert gen.prompt_tokens == enc["input_ids"].shape[1]


def test_second_turn_same_with_and_without_kv_reuse(tiny_lm):
    lm_fresh = QwenVideoLM(
        tiny_lm.model, tiny_lm.processor, ModelSettings(model="tiny", reuse_kv_cache=False)
    )
    results = []
    for lm, session in ((tiny_lm, "reuse"), (lm_fresh, "fresh")):
        first = lm.generate(_conversation(), _images, settings=GREEDY, session=session)
        second = lm.generate(_conversation(first.text), _images, settings=GREEDY, session=session)
        results.append((first, second))
    (r1, r2), (f1, f2) = results
    assert r1.token_ids == f1.token_ids
    assert r2.token_ids == f2.token_ids
    # With reuse only the new turn is prefilled; without it, everything is.
    assert r2.new_prompt_tokens < f2.new_prompt_tokens == f2.prompt_tokens


def test_second_turn_matches_full_forward_loop(tiny_lm):
    first = tiny_lm.generate(_conversation(), _images, settings=GREEDY, session="b")
    second = tiny_lm.generate(_conversation(first.text), _images, settings=GREEDY, session="b")
    state = tiny_lm._sessions["b"]
    n_prompt = second.prompt_tokens
    ids, mm = state.ids[:, :n_prompt], state.mm_types[:, :n_prompt]
    ref = _reference_greedy(
        tiny_lm, ids, mm, torch.cat(state.pixels), torch.stack(state.grids), GREEDY.max_new_tokens
    )
    assert second.token_ids == ref


def test_sampling_is_seeded_and_logprobs_are_finite(tiny_lm):
    sample = GenerationSettings(temperature=0.7, top_p=0.95, max_new_tokens=8, seed=3)
    a = tiny_lm.generate(_conversation(), _images, settings=sample)
    b = tiny_lm.generate(_conversation(), _images, settings=sample)
    assert a.token_ids == b.token_ids
    assert len(a.logprobs) == len(a.token_ids)
    assert all(np.isfinite(a.logprobs)) and all(lp <= 0 for lp in a.logprobs)
