"""The RL update run in padded micro-batches computes the same loss and step as one trajectory
at a time, for GRPO and for PPO (critic included)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vmtr.config import GenerationSettings, ProtocolSettings
from vmtr.policies.rollout import rollout, score
from vmtr.policies.trainer import RLRecipe, RLSettings, length_chunks


def recipe_after_update(data, out, settings, trajectories=None):
    recipe = RLRecipe(data, out, "tiny", settings)
    recipe.setup()
    if trajectories is None:
        trajectories = rollout(
            recipe.lm,
            recipe.items,
            group_size=2,
            seed=4,
            protocol_settings=settings.protocol,
            generation=GenerationSettings(temperature=1.0, max_new_tokens=10),
        )
        score(trajectories, recipe.by_id, settings.reward)
    losses = recipe.update(trajectories)
    return recipe, losses, trajectories


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_micro_batches_match_one_trajectory_at_a_time(data, tmp_path, algo):
    base = RLSettings(
        algo=algo,
        actor_lr=1e-3,
        critic_lr=1e-3,
        kl_coef=0.01,
        protocol=ProtocolSettings(max_turns=2, first_turn_frames=8, frames_per_retrieve=4),
    )
    one, one_losses, trajectories = recipe_after_update(
        data, tmp_path / "one", base.model_copy(update={"micro_batch": 1})
    )
    lengths = {int(t.input_ids.shape[0]) for t in trajectories}
    assert len(lengths) > 1  # the batch really needs padding
    many, many_losses, _ = recipe_after_update(
        data, tmp_path / "many", base.model_copy(update={"micro_batch": 4}), trajectories
    )
    for key in ("policy_loss", "kl", "entropy", "value_loss", "clip_frac"):
        assert many_losses[key] == pytest.approx(one_losses[key], rel=1e-4, abs=1e-6), key
    for (name, a), (_, b) in zip(
        one.policy.named_parameters(), many.policy.named_parameters(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5), name


def test_freeze_vision_trains_only_the_language_model(data, tmp_path, contrasted_rollouts):
    settings = RLSettings(
        actor_lr=1e-2,
        kl_coef=0.0,
        freeze_vision=True,
        protocol=ProtocolSettings(max_turns=2, first_turn_frames=8, frames_per_retrieve=4),
    )
    recipe = RLRecipe(data, tmp_path, "tiny", settings)
    recipe.setup()
    vision = {k: v.clone() for k, v in recipe.lm.core.visual.state_dict().items()}
    text = {k: v.clone() for k, v in recipe.lm.core.language_model.state_dict().items()}
    trajectories = contrasted_rollouts(
        recipe, GenerationSettings(temperature=1.0, max_new_tokens=10)
    )
    recipe.update(trajectories)
    after_vision = recipe.lm.core.visual.state_dict()
    after_text = recipe.lm.core.language_model.state_dict()
    assert all(torch.equal(vision[k], after_vision[k]) for k in vision)
    assert any(not torch.equal(text[k], after_text[k]) for k in text)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_cached_vision_matches_the_tower(data, tmp_path, algo):
    """With the tower fixed, the update replays the engine's image embeddings instead of running
    the tower: the same losses and the same step as from the pixels (reference and critic
    included), and the rollouts really carry one embedding per image token."""
    settings = RLSettings(
        algo=algo,
        actor_lr=1e-3,
        critic_lr=1e-3,
        kl_coef=0.01,
        micro_batch=4,
        freeze_vision=True,
        protocol=ProtocolSettings(max_turns=2, first_turn_frames=8, frames_per_retrieve=4),
    )
    cached, cached_losses, trajectories = recipe_after_update(data, tmp_path / "cached", settings)
    assert cached.cached_vision
    image_token = cached.lm.model.config.image_token_id
    for traj in trajectories:
        assert traj.image_embeds is not None
        assert traj.image_embeds.shape[0] == int((traj.input_ids == image_token).sum())
    pixels = RLRecipe(data, tmp_path / "pixels", "tiny", settings)
    pixels.setup()
    pixels.cached_vision = False
    pixel_losses = pixels.update(trajectories)
    for key in ("policy_loss", "kl", "entropy", "value_loss", "clip_frac"):
        assert cached_losses[key] == pytest.approx(pixel_losses[key], rel=1e-4, abs=1e-6), key
    for (name, a), (_, b) in zip(
        cached.policy.named_parameters(), pixels.policy.named_parameters(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5), name


def test_length_chunks_group_rows_of_like_length():
    """Every trajectory lands in exactly one micro-batch, shortest first."""
    lengths = [900, 120, 450, 2000, 130, 470]
    trajs = [SimpleNamespace(input_ids=torch.zeros(n)) for n in lengths]
    chunks = length_chunks(trajs, 2)
    assert chunks == [[1, 4], [2, 5], [0, 3]]
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))


def test_flat_groups_are_left_out_and_the_step_is_unchanged(data, tmp_path, contrasted_rollouts):
    """A GRPO group whose samples all scored the same carries no policy gradient: dropping it
    from the update (the default) leaves the same gradient as running it, and skips its passes.
    (Gradients, not parameters, are compared: Adam turns a weight's float-noise gradient, where
    the exact one is zero, into a full step.)"""
    settings = RLSettings(
        actor_lr=1e-3,
        kl_coef=0.0,
        entropy_coef=0.0,
        protocol=ProtocolSettings(max_turns=2, first_turn_frames=8, frames_per_retrieve=4),
    )
    steps = {}
    for drop in (True, False):
        recipe = RLRecipe(
            data,
            tmp_path / str(drop),
            "tiny",
            settings.model_copy(update={"drop_flat_groups": drop}),
        )
        recipe.setup()
        trajectories = contrasted_rollouts(
            recipe, GenerationSettings(temperature=1.0, max_new_tokens=10)
        )
        flat = trajectories[0].group
        for traj in trajectories:
            if traj.group == flat:
                traj.reward.per_turn = [0.0] * (len(traj.turns) - 1) + [1.0]
        in_flat = sum(t.group == flat for t in trajectories)
        losses = recipe.update(trajectories)
        expected = 1 - in_flat / len(trajectories) if drop else 1.0
        assert losses["trained_share"] == pytest.approx(expected)
        steps[drop] = {
            name: p.grad.clone()
            for name, p in recipe.policy.named_parameters()
            if p.grad is not None
        }
    assert 0 < in_flat < len(trajectories)
    assert steps[True].keys() == steps[False].keys()
    for name, a in steps[True].items():
        assert torch.allclose(a, steps[False][name], rtol=1e-4, atol=1e-7), name
