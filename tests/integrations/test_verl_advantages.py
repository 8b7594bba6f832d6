"""verl's own GAE on vmtr's per-turn rewards is vmtr's bi-level GAE (gamma = lam = 1); the
registered turn-level estimator and the batch scoring go through verl's real entry points."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

from tensordict import TensorDict  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.utils import torch_functional as verl_F  # noqa: E402

from vmtr.integrations.verl import ESTIMATOR, VideoMTRRewardManager  # noqa: E402
from vmtr.integrations.verl.advantages import reply_spans  # noqa: E402
from vmtr.integrations.verl.agent_loop import score_batch  # noqa: E402
from vmtr.integrations.verl.rewards import reward_tensor  # noqa: E402
from vmtr.policies.advantages import bilevel_gae, grpo_turn_advantages  # noqa: E402
from vmtr.policies.rewards import RewardSettings  # noqa: E402


def _turn(action: str, seen: list[int]) -> dict:
    return {"valid": True, "action": action, "seen_after": seen}


RECORDS = [
    {
        "turns": [_turn("retrieve", [0, 1, 2, 3]), _turn("answer", [0, 1, 2, 3])],
        "turn_ends": [3, 9],
        "correct": True,
        "relevant": [3],
        "first_seen": [0, 1, 2],
    },
    {
        "turns": [_turn("answer", [0, 1, 2])],
        "turn_ends": [4],
        "correct": True,
        "relevant": [3],
        "first_seen": [0, 1, 2],
    },
    {
        "turns": [_turn("retrieve", [0, 5]), _turn("retrieve", [0, 5, 6]), _turn("answer", [6])],
        "turn_ends": [1, 5, 10],
        "correct": False,
        "relevant": [3],
        "first_seen": [0],
    },
]
SPANS = [[(0, 3), (6, 9)], [(0, 4)], [(0, 1), (4, 5), (8, 10)]]
LENGTH = 12


def _mask() -> torch.Tensor:
    mask = torch.zeros(len(SPANS), LENGTH)
    for row, spans in enumerate(SPANS):
        for first, last in spans:
            mask[row, first : last + 1] = 1
    return mask


def test_verl_gae_is_vmtr_bilevel_gae_at_gamma_lam_one() -> None:
    mask = _mask()
    scores, rewards = reward_tensor(RECORDS, LENGTH)
    values = torch.randn(len(SPANS), LENGTH, generator=torch.Generator().manual_seed(0))
    advantages, returns = core_algos.compute_gae_advantage_return(
        token_level_rewards=scores, values=values, response_mask=mask, gamma=1.0, lam=1.0
    )
    ours = torch.zeros_like(values)
    for row, spans in enumerate(SPANS):
        assert reply_spans(mask[row]) == spans
        adv, ret = bilevel_gae(values[row], spans, rewards[row].per_turn)
        ours[row] = adv
        on = mask[row].bool()
        # verl's returns are its advantages before whitening, plus the values
        torch.testing.assert_close(returns[row][on], ret[on])
        torch.testing.assert_close((returns[row] - values[row])[on], adv[on])
    # ... and its advantages are those whitened over the batch's response tokens
    torch.testing.assert_close(
        advantages[mask.bool()], verl_F.masked_whiten(ours, mask)[mask.bool()]
    )


def test_verl_gae_differs_from_the_bilevel_form_below_one() -> None:
    mask = _mask()
    scores, rewards = reward_tensor(RECORDS, LENGTH)
    values = torch.randn(len(SPANS), LENGTH, generator=torch.Generator().manual_seed(1))
    _, returns = core_algos.compute_gae_advantage_return(
        token_level_rewards=scores, values=values, response_mask=mask, gamma=0.9, lam=0.9
    )
    _, ret = bilevel_gae(values[0], SPANS[0], rewards[0].per_turn, gamma=0.9, lam=0.9)
    on = mask[0].bool()
    assert not torch.allclose(returns[0][on], ret[on])


def test_registered_turn_grpo_equals_vmtr_credit_turn() -> None:
    mask = _mask()
    scores, rewards = reward_tensor(RECORDS, LENGTH)
    index = np.array(["q1", "q1", "q2"], dtype=object)
    fn = core_algos.get_adv_estimator_fn(ESTIMATOR)
    config = {"gamma": 1.0, "norm_adv_by_std_in_grpo": True}
    advantages, _ = fn(token_level_rewards=scores, response_mask=mask, index=index, config=config)
    expected = grpo_turn_advantages([r.per_turn for r in rewards], [0, 0, 1])
    for row, spans in enumerate(SPANS):
        for (first, last), a in zip(spans, expected[row], strict=True):
            assert advantages[row, first : last + 1].tolist() == pytest.approx(
                [a] * (last - first + 1)
            )
    assert advantages[mask == 0].abs().sum() == 0


def _output() -> DataProto:
    batch = TensorDict(
        {
            "responses": torch.zeros(len(RECORDS), LENGTH, dtype=torch.long),
            "response_mask": _mask(),
        },
        batch_size=len(RECORDS),
    )
    records = np.empty(len(RECORDS), dtype=object)
    records[:] = RECORDS
    extra = np.empty(len(RECORDS), dtype=object)
    extra[:] = [{"vmtr": r} for r in RECORDS]
    return DataProto(
        batch=batch,
        non_tensor_batch={"vmtr": records, "tool_extra_fields": extra},
        meta_info={"reward_extra_keys": []},
    )


def test_batch_scoring_replaces_rm_scores_with_per_turn_rewards() -> None:
    output = score_batch(_output(), RewardSettings())
    expected, _ = reward_tensor(RECORDS, LENGTH)
    torch.testing.assert_close(output.batch["rm_scores"], expected)
    assert "vmtr_bonus" in output.meta_info["reward_extra_keys"]
    assert output.non_tensor_batch["vmtr_turns"].tolist() == [2, 1, 3]


def test_reward_manager_scores_one_episode_and_a_batch() -> None:
    from omegaconf import OmegaConf

    config = OmegaConf.create({"reward": {"reward_kwargs": {}}})
    # constructed as verl's reward loop worker constructs reward managers
    manager = VideoMTRRewardManager(
        config=config,
        tokenizer=None,
        compute_score=None,
        reward_router_address=None,
        reward_model_tokenizer=None,
    )
    data = _output()
    single = asyncio.run(manager.run_single(data[0:1]))
    # the first episode alone: 0.1 + 0.5 then 0.1 + 0.9 (no batch, so no exploration bonus)
    assert single["reward_score"] == pytest.approx(1.6)
    scores = VideoMTRRewardManager.assemble_rm_scores(data, [0.0] * len(RECORDS))
    torch.testing.assert_close(scores, reward_tensor(RECORDS, LENGTH)[0])
