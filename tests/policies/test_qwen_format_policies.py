"""RL rollouts and SFT encoding on the real Qwen2.5-VL format, where the protocol's tags are
several tokens and a reply ends in Qwen's <|im_end|> (id 151645)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vmtr import protocol
from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings
from vmtr.eval.datasets import load_video_mtr_json
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.models.qwen import QwenVideoLM
from vmtr.policies.advantages import bilevel_gae
from vmtr.policies.conversation import IGNORE, encode_conversation
from vmtr.policies.logprobs import model_inputs, token_logprobs
from vmtr.policies.rewards import RewardSettings
from vmtr.policies.rollout import rollout, score
from vmtr.policies.trainer import turn_token_advantages

IM_END, NEWLINE = 151645, 198
RETRIEVE = "<think>I need frames 12 to 20.</think><retrieve>12, 20</retrieve>"
ANSWER = "<think>The red circle is near frame 12.</think><answer>B</answer>"


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return load_video_mtr_json(generate(folder, SyntheticSettings(n_items=1, seed=99, minutes=0.5)))


@pytest.fixture(scope="module")
def lm(qwen_format_dir):
    return QwenVideoLM.load(ModelSettings(model=str(qwen_format_dir), device="cpu"))


def _rendered(lm, traj) -> str:
    text = lm.processor.apply_chat_template(traj.messages, tokenize=False).removesuffix("\n")
    return text.replace("<|image_pad|>", "")


@pytest.mark.slow
def test_sampled_rollout_records_the_template_rendering_and_its_logprobs(items, lm) -> None:
    gen = GenerationSettings(temperature=0.7, top_p=0.95, max_new_tokens=6, seed=1)
    [traj] = rollout(
        lm,
        items,
        group_size=1,
        seed=3,
        protocol_settings=ProtocolSettings(max_turns=2),
        generation=gen,
    )
    decoded = lm.processor.tokenizer.decode(traj.input_ids, skip_special_tokens=False)
    assert decoded.replace("<|image_pad|>", "") == _rendered(lm, traj)
    assert len(traj.turn_spans) == len(traj.turns) == 2
    mask = traj.action_mask.bool()
    assert int(mask.sum()) == sum(last - first + 1 for first, last in traj.turn_spans)
    assert traj.mm_token_type_ids[mask].sum() == 0
    for _, last in traj.turn_spans:
        # a reply cut by the length limit is closed by the environment's <|im_end|>, unmasked
        closing = last if traj.input_ids[last] == IM_END else last + 1
        assert traj.input_ids[closing] == IM_END
        assert last + 1 == len(mask) or not mask[last + 1]
    logp, _ = token_logprobs(lm.model, model_inputs(lm, traj), lm.banned_ids, 0.7)
    assert torch.allclose(logp[mask], traj.old_logprobs[mask], atol=1e-4)


def test_rewards_land_on_each_replys_closing_token(items, lm, force_replies) -> None:
    force_replies(lm.model, lm.processor.tokenizer, [RETRIEVE, ANSWER])
    gen = GenerationSettings(temperature=0.0, max_new_tokens=64)
    [traj] = rollout(
        lm,
        items,
        group_size=1,
        seed=0,
        protocol_settings=ProtocolSettings(max_turns=3),
        generation=gen,
    )
    assert [t["action"] for t in traj.turns] == ["retrieve", "answer"]
    assert traj.answer == "B"
    tok = lm.processor.tokenizer
    assert lm.processor.tokenizer.decode(traj.input_ids).replace("<|image_pad|>", "") == (
        _rendered(lm, traj)
    )
    for (first, last), reply in zip(traj.turn_spans, [RETRIEVE, ANSWER], strict=True):
        assert tok.decode(traj.input_ids[first : last + 1]) == reply + "<|im_end|>"
        assert traj.input_ids[last] == IM_END and traj.action_mask[last] == 1
        assert traj.input_ids[first - 1] == NEWLINE and traj.action_mask[first - 1] == 0
    score([traj], {items[0].id: items[0]}, RewardSettings())
    rewards = traj.reward.per_turn
    assert len(rewards) == 2
    # turn-level GAE with no critic: each turn's reward-to-go sits on its <|im_end|>
    advantages, _ = bilevel_gae(torch.zeros(len(traj.input_ids)), traj.turn_spans, rewards)
    lasts = [last for _, last in traj.turn_spans]
    assert advantages[lasts].tolist() == pytest.approx([rewards[0] + rewards[1], rewards[1]])
    per_token = turn_token_advantages(traj, [1.0, 2.0])
    assert per_token[traj.action_mask == 0].abs().sum() == 0
    assert per_token[lasts].tolist() == [1.0, 2.0]


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)) for _ in range(n)]


def test_sft_labels_only_the_replies_and_masks_a_guess(lm) -> None:
    processor = lm.processor
    tok = processor.tokenizer
    settings = ProtocolSettings(first_turn_frames=2, max_turns=2)
    ask = {"question": "What colour?", "options": ["A. red", "B. green"], "pool_size": 8}
    messages = [
        protocol.system_message(settings),
        protocol.user_message(
            turn=1, frames=[0, 4], timestamps=[0.0, 4.0], settings=settings, **ask
        ),
        protocol.assistant_message(RETRIEVE),
        protocol.user_message(turn=2, frames=[5], timestamps=[5.0], settings=settings, **ask),
        protocol.assistant_message(ANSWER),
    ]
    enc = encode_conversation(processor, messages, _images(3), guesses=[False, True])
    ids, labels = enc["input_ids"], enc["labels"]
    labelled = (labels != IGNORE).nonzero().flatten().tolist()
    runs, run = [], [labelled[0]]
    for i in labelled[1:]:
        if i != run[-1] + 1:
            runs.append(run)
            run = []
        run.append(i)
    runs.append(run)
    # the retrieve reply whole; the guessed answer's letter (">B", one Qwen token) carries no loss
    assert tok.decode(ids[runs[0]]) == RETRIEVE + "<|im_end|>"
    assert tok.decode(ids[runs[1]]) == "<think>The red circle is near frame 12.</think><answer"
    assert tok.decode(ids[runs[2]]) == "</answer><|im_end|>"
    assert len(runs) == 3
    assert enc["mm_token_type_ids"][labelled].sum() == 0
