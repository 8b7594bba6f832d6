"""Fixtures of the RL tests: episodes sampled from a recipe's own model, with rewards that
differ inside every group (so GRPO has an advantage to follow on any seed)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vmtr.config import GenerationSettings
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.policies.rollout import Trajectory, rollout, score
from vmtr.policies.trainer import RLRecipe


def _contrasted(recipe: RLRecipe, generation: GenerationSettings) -> list[Trajectory]:
    """Two sampled episodes per item of ``recipe`` (seed 4), scored, then rewarded 0 and 1 on
    their last turn in turn."""
    trajectories = rollout(
        recipe.lm,
        recipe.items,
        group_size=2,
        seed=4,
        protocol_settings=recipe.s.protocol,
        generation=generation,
    )
    score(trajectories, recipe.by_id, recipe.s.reward)
    for k, traj in enumerate(trajectories):
        traj.reward.per_turn = [0.0] * (len(traj.turns) - 1) + [float(k % 2)]
    return trajectories


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two short generated questions (seed 31), once per test module; a module that needs other
    items defines its own ``data``."""
    return generate(
        tmp_path_factory.mktemp("synthetic"), SyntheticSettings(n_items=2, seed=31, minutes=0.5)
    )


@pytest.fixture
def contrasted_rollouts() -> Callable[[RLRecipe, GenerationSettings], list[Trajectory]]:
    return _contrasted
