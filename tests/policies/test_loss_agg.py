"""Loss aggregation: what each mode divides a trajectory's token sum by, and the update's policy
loss at ratio 1 (the first pass over fresh rollouts), which is minus the advantages aggregated."""

from __future__ import annotations

import pytest
import torch

from vmtr.config import GenerationSettings, ProtocolSettings
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.policies.loss_agg import row_divisors
from vmtr.policies.trainer import RLRecipe, RLSettings


def test_divisors_give_each_mode_its_token_weights():
    masks = [torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.zeros(2)]
    n = len(masks)

    def weights(mode: str) -> list[float]:  # what one trained token of each row weighs
        return [1 / (d * n) for d in row_divisors(masks, mode, horizon=10)]

    assert weights("seq-mean-token-mean")[:2] == pytest.approx([1 / 6, 1 / 12])
    assert weights("token-mean") == pytest.approx([1 / 6] * 3)  # 6 trained tokens in the step
    assert weights("seq-mean-token-sum-norm") == pytest.approx([1 / 30] * 3)
    with pytest.raises(ValueError, match="unknown"):
        row_divisors(masks, "token-sum", horizon=10)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_policy_loss_at_ratio_one_is_the_aggregated_advantage(tmp_path, contrasted_rollouts, mode):
    data = generate(tmp_path / "data", SyntheticSettings(n_items=2, seed=31, minutes=0.5))
    settings = RLSettings(
        actor_lr=1e-3,
        kl_coef=0.0,
        entropy_coef=0.0,
        micro_batch=1,
        max_new_tokens=96,
        loss_agg=mode,
        drop_flat_groups=False,
        protocol=ProtocolSettings(max_turns=2, first_turn_frames=8, frames_per_retrieve=4),
    )
    recipe = RLRecipe(data, tmp_path / "run", "tiny", settings)
    recipe.setup()
    trajectories = contrasted_rollouts(
        recipe, GenerationSettings(temperature=0.7, max_new_tokens=96)
    )
    # advantages that vary token by token, so no mode's aggregate cancels as GRPO's group-centred
    # ones would under the per-trajectory mean
    generator = torch.Generator().manual_seed(0)
    advantages = [
        torch.rand(t.input_ids.shape[0], generator=generator) * t.action_mask for t in trajectories
    ]
    recipe.advantages = lambda _: [(a, torch.zeros_like(a)) for a in advantages]
    sums = [float((a * t.action_mask).sum()) for a, t in zip(advantages, trajectories, strict=True)]
    counts = [float(t.action_mask.sum()) for t in trajectories]
    n = len(trajectories)
    expected = {
        "seq-mean-token-mean": -sum(s / c for s, c in zip(sums, counts, strict=True)) / n,
        "token-mean": -sum(sums) / sum(counts),
        "seq-mean-token-sum-norm": -sum(sums) / (n * 2 * 96),
    }[mode]
    assert expected != 0
    assert recipe.update(trajectories)["policy_loss"] == pytest.approx(expected, rel=1e-3)
