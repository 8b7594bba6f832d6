"""verl's own agent-loop worker, on CPU: it loads the example's agent-loop file, runs the loop on
rows written by `vmtr.integrations.verl.data`, and pads, re-encodes the images and computes the
M-RoPE positions as training will see them; all of that equals vmtr's rollout of the same
episodes. The rollout manager's rescoring then puts each turn's reward on its reply's end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

import verl  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from tiny_server import TinyServer  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker  # noqa: E402

from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings  # noqa: E402
from vmtr.eval.datasets import load_video_mtr_json  # noqa: E402
from vmtr.eval.synthetic import SyntheticSettings, generate  # noqa: E402
from vmtr.integrations.verl.agent_loop import score_batch  # noqa: E402
from vmtr.integrations.verl.data import rows, write_parquet  # noqa: E402
from vmtr.models.qwen import QwenVideoLM, _Session  # noqa: E402
from vmtr.models.tiny import TINY_DIR  # noqa: E402
from vmtr.policies.rewards import RewardSettings  # noqa: E402
from vmtr.policies.rollout import run_episode, score  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "verl"
# on these two items the bundled model breaks the format on its first turn, then retrieves and
# answers in one episode, and retrieves twice and then answers in the other: three turns each, one
# of them an invalid reply the environment answers
SEED = 1


def _config():
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(
            config_name="ppo_trainer",
            overrides=[
                f"actor_rollout_ref.model.path={TINY_DIR}",
                "actor_rollout_ref.rollout.name=vllm",
                "actor_rollout_ref.rollout.prompt_length=4096",
                "actor_rollout_ref.rollout.response_length=2048",
                f"actor_rollout_ref.rollout.agent.agent_loop_config_path={EXAMPLE / 'agent_loop.yaml'}",
                "actor_rollout_ref.rollout.agent.default_agent_loop=vmtr_video_mtr",
            ],
        )


@pytest.mark.slow
def test_verl_worker_output_equals_vmtr_rollout(tmp_path) -> None:
    import yaml

    [entry] = yaml.safe_load((EXAMPLE / "agent_loop.yaml").read_text())
    protocol = ProtocolSettings(**entry["protocol"])
    lm = QwenVideoLM.load(
        ModelSettings(
            model="tiny",
            device="cpu",
            reuse_kv_cache=False,
            max_pixels=entry["max_pixels"],
            min_pixels=entry["min_pixels"],
        )
    )
    gen = GenerationSettings(temperature=0.7, top_p=1.0, max_new_tokens=entry["max_new_tokens"])
    items = load_video_mtr_json(
        generate(
            tmp_path,
            SyntheticSettings(
                n_items=2, seed=7, minutes=2.0, kinds=("colour",), avoid_first_turn=True
            ),
        )
    )
    write_parquet(items, tmp_path / "train.parquet")  # the converter's output is valid parquet

    worker = AgentLoopWorker(_config(), TinyServer(lm, gen.model_copy(update={"seed": SEED})))
    table = rows(items)
    non_tensors = {k: np.array([r[k] for r in table], dtype=object) for k in table[0]}
    non_tensors["raw_prompt"] = non_tensors.pop("prompt")
    output = asyncio.run(worker.generate_sequences(DataProto.from_dict(non_tensors=non_tensors)))

    trajectories = [
        run_episode(lm, item, group=g, seed=SEED, protocol_settings=protocol, generation=gen)
        for g, item in enumerate(items)
    ]
    actions = [[t["action"] for t in traj.turns] for traj in trajectories]
    assert actions == [["invalid", "retrieve", "answer"], ["retrieve", "retrieve", "answer"]]
    prompt_width = output.batch["prompts"].shape[1]
    for row, traj in enumerate(trajectories):
        valid = output.batch["attention_mask"][row].bool()
        ids = output.batch["input_ids"][row][valid]
        assert ids.tolist() == traj.input_ids.tolist()
        start = int(valid[:prompt_width].sum())
        response = output.batch["response_mask"][row][: len(ids) - start]
        assert response.tolist() == traj.action_mask[start:].int().tolist()
        logprobs = output.batch["rollout_log_probs"][row][: len(ids) - start]
        torch.testing.assert_close(logprobs, traj.old_logprobs[start:], rtol=0, atol=1e-5)
        inputs = output.non_tensor_batch["multi_modal_inputs"][row]
        torch.testing.assert_close(inputs["pixel_values"], traj.pixel_values)
        assert torch.equal(inputs["image_grid_thw"], traj.image_grid_thw)
        state = _Session(
            ids=traj.input_ids[None],
            mm_types=traj.mm_token_type_ids[None],
            grids=list(traj.image_grid_thw),
        )
        positions = lm.positions(state)[:, 0]  # [3, L], vmtr's M-RoPE positions
        assert torch.equal(output.batch["position_ids"][row, 1:, valid], positions)

    # the rollout manager's rescoring equals vmtr's reward, turn by turn, at each reply's end
    scored = score_batch(output, RewardSettings())
    score(trajectories, {item.id: item for item in items}, RewardSettings())
    for row, traj in enumerate(trajectories):
        start = int(output.batch["attention_mask"][row][:prompt_width].sum())
        ends = [last - start for _, last in traj.turn_spans]
        rm = scored.batch["rm_scores"][row]
        assert rm[ends].tolist() == pytest.approx(traj.reward.per_turn)
        assert float(rm.sum()) == pytest.approx(traj.reward.total)
