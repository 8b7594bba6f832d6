"""The GRPO update that runs a group's shared first prompt once computes what running every
sample whole computes: the same log-probs, losses and step."""

from __future__ import annotations

import pytest
import torch

from vmtr.config import GenerationSettings, ProtocolSettings
from vmtr.policies.logprobs import (
    batch_inputs,
    group_token_logprobs,
    shared_prefix,
    token_logprobs,
)
from vmtr.policies.rollout import rollout, score
from vmtr.policies.trainer import RLRecipe, RLSettings

PROTOCOL = ProtocolSettings(max_turns=2, first_turn_frames=8, frames_per_retrieve=4)


@pytest.fixture(scope="module")
def sampled(data, tmp_path_factory):
    """A fixed-vision recipe and three sampled episodes per item, with rewards that differ
    inside each group."""
    settings = RLSettings(actor_lr=1e-3, kl_coef=0.0, freeze_vision=True, protocol=PROTOCOL)
    recipe = RLRecipe(data, tmp_path_factory.mktemp("rl"), "tiny", settings)
    recipe.setup()
    with torch.no_grad():
        trajectories = rollout(
            recipe.lm,
            recipe.items,
            group_size=3,
            seed=4,
            protocol_settings=PROTOCOL,
            generation=GenerationSettings(temperature=1.0, max_new_tokens=10),
        )
    score(trajectories, recipe.by_id, settings.reward)
    for k, traj in enumerate(trajectories):
        traj.reward.per_turn = [0.0] * (len(traj.turns) - 1) + [float(k % 2)]
    return recipe, trajectories


def test_a_group_shares_its_first_prompt_and_different_items_do_not(sampled):
    _, trajectories = sampled
    group = [t for t in trajectories if t.group == trajectories[0].group]
    assert len(group) == 3
    prefix = shared_prefix(group)
    assert prefix == min(t.turn_spans[0][0] for t in group) > 0
    others = [t for t in trajectories if t.item_id != group[0].item_id]
    assert shared_prefix([group[0], others[0]]) == 0
    assert shared_prefix([]) == 0


def test_group_logprobs_equal_each_sample_run_whole(sampled):
    recipe, trajectories = sampled
    group = [t for t in trajectories if t.group == trajectories[0].group]
    model, banned = recipe.policy, recipe.lm.banned_ids
    chunks = [batch_inputs(recipe.lm, [t], cached_vision=True) for t in group]
    with torch.no_grad():
        together = group_token_logprobs(model, chunks, shared_prefix(group), banned, 1.0)
        for inputs, (logp, entropy) in zip(chunks, together, strict=True):
            whole_logp, whole_entropy = token_logprobs(model, inputs, banned, 1.0)
            assert torch.allclose(logp, whole_logp, atol=1e-4)
            assert torch.allclose(entropy, whole_entropy, atol=1e-4)
    # a padded chunk of two rows as well
    two = batch_inputs(recipe.lm, group[:2], cached_vision=True)
    with torch.no_grad():
        ((logp, _),) = group_token_logprobs(model, [two], shared_prefix(group), banned, 1.0)
        for row, traj in enumerate(group[:2]):
            alone, _ = token_logprobs(model, chunks[row], banned, 1.0)
            length = int(traj.input_ids.shape[0])
            assert torch.allclose(logp[row, :length], alone, atol=1e-4)


@pytest.mark.parametrize(("micro_batch", "lora_rank"), [(1, 0), (2, 0), (1, 4)])
def test_update_with_a_shared_prompt_takes_the_same_step(
    data, tmp_path, sampled, micro_batch, lora_rank
):
    _, trajectories = sampled
    results = {}
    for share in (False, True):
        settings = RLSettings(
            actor_lr=1e-3,
            kl_coef=0.0,
            freeze_vision=True,
            protocol=PROTOCOL,
            share_prompt=share,
            micro_batch=micro_batch,
            lora_rank=lora_rank,
        )
        recipe = RLRecipe(data, tmp_path / f"share-{share}", "tiny", settings)
        recipe.setup()
        units = recipe.backward_units(trajectories, list(range(len(trajectories))))
        assert any(prefix > 0 for prefix, _ in units) == share
        losses = recipe.update(trajectories)
        # the gradient of the step's loss (Adam's first step divides it by its own size, so the
        # weights after it would amplify rounding in gradients that are nearly zero)
        grads = {
            name: p.grad.clone()
            for name, p in recipe.policy.named_parameters()
            if p.grad is not None
        }
        results[share] = (losses, grads)
    (plain, plain_grads), (shared, shared_grads) = results[False], results[True]
    for key in ("policy_loss", "entropy", "clip_frac", "grad_norm"):
        assert shared[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), key
    assert plain_grads.keys() == shared_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        scale = float(grad.abs().max()) + 1e-8
        assert torch.allclose(shared_grads[name], grad, atol=1e-4 * scale), name
