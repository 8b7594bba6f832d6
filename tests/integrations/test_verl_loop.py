"""The verl agent loop, driven by the bundled tiny model through a fake server manager, records
the conversation, token ids, mask and log-probs that `vmtr.policies.rollout` records."""

from __future__ import annotations

import asyncio

import pytest
import torch

pytest.importorskip("verl")

from omegaconf import OmegaConf  # noqa: E402
from tiny_server import TinyServer  # noqa: E402
from verl.experimental.agent_loop.agent_loop import DictConfigWrap  # noqa: E402
from verl.utils.dataset.rl_dataset import RLHFDataset  # noqa: E402

from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings  # noqa: E402
from vmtr.eval.datasets import load_video_mtr_json  # noqa: E402
from vmtr.eval.synthetic import SyntheticSettings, generate  # noqa: E402
from vmtr.integrations.verl import VideoMTRAgentLoop  # noqa: E402
from vmtr.integrations.verl.data import item_json  # noqa: E402
from vmtr.models.qwen import QwenVideoLM  # noqa: E402
from vmtr.policies.rollout import run_episode, turn_outcomes  # noqa: E402

PROTOCOL = ProtocolSettings(max_turns=3)


@pytest.fixture(scope="module")
def item(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return load_video_mtr_json(
        generate(folder, SyntheticSettings(n_items=1, seed=99, minutes=0.5))
    )[0]


@pytest.fixture(scope="module")
def lm():
    # both paths prefill the whole sequence each turn, so their logits agree bit for bit
    return QwenVideoLM.load(ModelSettings(model="tiny", device="cpu", reuse_kv_cache=False))


def _loop(lm, server, max_new_tokens: int, response_length: int = 8192) -> VideoMTRAgentLoop:
    config = OmegaConf.create(
        {
            "actor_rollout_ref": {
                "rollout": {"prompt_length": 8192, "response_length": response_length}
            },
            "data": {},
        }
    )
    return VideoMTRAgentLoop(
        trainer_config=DictConfigWrap(config),
        server_manager=server,
        tokenizer=lm.processor.tokenizer,
        processor=lm.processor,
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(config.data),
        hf_model_type="qwen2_5_vl",
        protocol=PROTOCOL.model_dump(),
        max_new_tokens=max_new_tokens,
    )


def _both(lm, item, gen: GenerationSettings, seed: int, force=None):
    """(vmtr's trajectory, the verl loop's output, the fake server) for one episode."""
    if force:
        force()
    traj = run_episode(lm, item, group=0, seed=seed, protocol_settings=PROTOCOL, generation=gen)
    if force:
        force()
    server = TinyServer(lm, gen.model_copy(update={"seed": seed}))
    loop = _loop(lm, server, gen.max_new_tokens)
    output = asyncio.run(
        loop.run({"temperature": gen.temperature}, vmtr_item=item_json(item), raw_prompt=[])
    )
    return traj, output, server


def _assert_same(traj, output) -> None:
    ids = traj.input_ids.tolist()
    start = len(output.prompt_ids)
    assert output.prompt_ids + output.response_ids == ids
    assert traj.action_mask[:start].sum() == 0  # the first prompt is all environment
    assert output.response_mask == traj.action_mask[start:].int().tolist()
    torch.testing.assert_close(
        torch.tensor(output.response_logprobs), traj.old_logprobs[start:], rtol=0, atol=1e-5
    )
    assert output.extra_fields["messages"] == traj.messages
    record = output.extra_fields["vmtr"]
    assert record["turn_ends"] == [last - start for _, last in traj.turn_spans]
    outcomes, first = turn_outcomes(traj.turns)
    assert [t["action"] for t in record["turns"]] == [o.action for o in outcomes]
    assert [t["valid"] for t in record["turns"]] == [o.valid for o in outcomes]
    assert [set(t["seen_after"]) for t in record["turns"]] == [set(o.seen_after) for o in outcomes]
    assert set(record["first_seen"]) == first
    assert record["correct"] == traj.correct and record["answer"] == traj.answer
    frames = sum(len(t["frames"]) for t in traj.turns)
    assert len(output.multi_modal_data["images"]) == frames


@pytest.mark.slow
def test_sampled_episode_matches_vmtr_rollout(lm, item) -> None:
    gen = GenerationSettings(temperature=0.7, top_p=0.95, max_new_tokens=24)
    traj, output, server = _both(lm, item, gen, seed=5)
    _assert_same(traj, output)
    assert sum(output.response_mask) > 0
    assert len({request for request, _, _ in server.requests}) == 1  # one sticky id per episode


def test_retrieve_shows_new_frames_as_images(lm, item, force_replies) -> None:
    retrieve = "<think>I need frames 12 to 20.</think><retrieve>12, 20</retrieve>"
    answer = f"<think>Seen enough.</think><answer>{item.answer}</answer>"
    tok = lm.processor.tokenizer
    gen = GenerationSettings(temperature=0.0, max_new_tokens=64)

    def force():
        force_replies(lm.model, tok, [retrieve, answer])

    traj, output, server = _both(lm, item, gen, seed=0, force=force)
    assert [t["action"] for t in traj.turns] == ["retrieve", "answer"]
    _assert_same(traj, output)
    # turn 2's request carried turn 1's frames and the retrieved ones, as images
    first, retrieved = (len(t["frames"]) for t in traj.turns)
    assert [images for _, _, images in server.requests] == [first, first + retrieved]
    record = output.extra_fields["vmtr"]
    assert record["correct"] and record["stop_reason"] == "answered"
    # each reply's reward position is its sampled closing <|im_end|>
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert all(
        output.response_ids[e] == end and output.response_mask[e] for e in record["turn_ends"]
    )


def test_the_response_length_ends_the_episode(lm, item, force_replies) -> None:
    retrieve = "<think>I need frames 12 to 20.</think><retrieve>12, 20</retrieve>"
    answer = f"<think>Seen enough.</think><answer>{item.answer}</answer>"
    gen = GenerationSettings(temperature=0.0, max_new_tokens=64)
    force_replies(lm.model, lm.processor.tokenizer, [retrieve, answer])
    traj = run_episode(lm, item, group=0, seed=0, protocol_settings=PROTOCOL, generation=gen)
    force_replies(lm.model, lm.processor.tokenizer, [retrieve, answer])
    server = TinyServer(lm, gen)
    # room for the first reply and 40 more tokens, not for the next turn's frames
    prompt_length, first_end = traj.turn_spans[0]
    budget = first_end + 1 + 40 - prompt_length
    loop = _loop(lm, server, gen.max_new_tokens, response_length=budget)
    output = asyncio.run(loop.run({"temperature": 0.0}, vmtr_item=item_json(item), raw_prompt=[]))
    record = output.extra_fields["vmtr"]
    assert record["stop_reason"] == "length" and len(server.requests) == 1
    assert [t["action"] for t in record["turns"]] == ["retrieve"]
    assert len(output.response_ids) == budget
    assert (
        output.prompt_ids + output.response_ids == traj.input_ids[: prompt_length + budget].tolist()
    )
    assert (
        output.response_mask
        == traj.action_mask[prompt_length : prompt_length + budget].int().tolist()
    )
