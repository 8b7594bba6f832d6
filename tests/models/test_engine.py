"""The episode engine must not change what the model says or what RL records.

Greedy episodes run together equal the one-at-a-time backend token for token; a sampled
episode's tokens depend on its seed alone, not on what else shares the batch; the cached
per-frame preprocessing equals the processor's output; batched rollouts record the same tokens,
masks and log-probs as sequential ones.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from vmtr.agent.ask import ask
from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings
from vmtr.eval.datasets import load_video_mtr_json
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.models.engine import EpisodeEngine
from vmtr.models.qwen import QwenVideoLM
from vmtr.models.turn_inputs import TurnEncoder
from vmtr.policies.rollout import rollout


@pytest.fixture(scope="module")
def lm() -> QwenVideoLM:
    return QwenVideoLM.load(ModelSettings(model="tiny", device="cpu"))


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine")
    return load_video_mtr_json(generate(folder, SyntheticSettings(n_items=4, seed=21, minutes=0.5)))


def episode(model, item, **gen) -> list[tuple[str, str]]:
    result = ask(item.video, item.question, item.options, model=model, max_new_tokens=24, **gen)
    return [(t["action"], t["raw"]) for t in result.turns]


def together(engine: EpisodeEngine, jobs: list, **gen) -> list:
    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: episode(engine, job[0], **job[1], **gen), jobs))


def test_greedy_episodes_together_equal_one_at_a_time(lm, items):
    alone = [episode(lm, item, temperature=0.0) for item in items]
    with EpisodeEngine(lm, max_episodes=len(items)) as engine:
        batched = together(engine, [(item, {}) for item in items], temperature=0.0)
        assert engine.rows > engine.forwards  # episodes really shared forwards
    assert batched == alone
    assert any(len(turns) > 1 for turns in alone)  # later turns (cache reuse) are covered


def test_a_sampled_episode_depends_on_its_seed_not_on_its_batch(lm, items):
    sampled = {"temperature": 1.0, "top_p": 0.95}
    reference = episode(lm, items[0], seed=7, **sampled)
    with EpisodeEngine(lm, max_episodes=8) as engine:
        crowd = [(items[0], {"seed": 7})] + [
            (item, {"seed": 100 + k}) for k, item in enumerate(items * 2)
        ][:7]
        crowded = together(engine, crowd, **sampled)[0]
        alone = together(engine, [(items[0], {"seed": 7})], **sampled)[0]
    assert crowded == alone == reference


def test_more_sessions_than_slots_wait_for_a_slot(lm, items):
    alone = [episode(lm, item, temperature=0.0) for item in items[:3]]
    with EpisodeEngine(lm, max_episodes=1) as engine:
        assert together(engine, [(item, {}) for item in items[:3]], temperature=0.0) == alone


def test_turn_encoder_equals_the_processor(lm):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (56, 84, 3), dtype=np.uint8)) for _ in range(3)]
    text = "".join(f"frame {i}: <|vision_start|><|image_pad|><|vision_end|>\n" for i in range(3))
    expected = lm.processor(text=[text], images=images, return_tensors="pt")
    encoder = TurnEncoder(lm.processor)
    for _ in range(2):  # the second call is served from the frame cache
        got = encoder(text, images)
        for key in ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
            assert torch.equal(got[key], expected[key]), key
    assert encoder.misses == 3 and encoder.hits == 3


def test_batched_rollouts_record_what_sequential_ones_do(lm, items):
    settings = dict(
        group_size=2,
        seed=3,
        protocol_settings=ProtocolSettings(max_turns=2),
        generation=GenerationSettings(temperature=1.0, top_p=0.95, max_new_tokens=12),
    )
    sequential = rollout(lm, items[:2], batched=False, **settings)
    batched = rollout(lm, items[:2], **settings)
    assert len(sequential) == len(batched) == 4
    for a, b in zip(sequential, batched, strict=True):
        assert torch.equal(a.input_ids, b.input_ids)
        assert torch.equal(a.mm_token_type_ids, b.mm_token_type_ids)
        assert torch.equal(a.action_mask, b.action_mask)
        assert a.turn_spans == b.turn_spans
        assert torch.allclose(a.old_logprobs, b.old_logprobs, atol=1e-4)
        assert torch.equal(a.pixel_values, b.pixel_values)
