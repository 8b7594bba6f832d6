"""The example's launch overrides compose against verl's own trainer config (every key exists,
every value parses), and its agent-loop file builds the loop's settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("verl")

import yaml  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from vmtr.config import ProtocolSettings  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "verl"


def _overrides() -> list[str]:
    script = (EXAMPLE / "run_qwen2_5_vl_7b.sh").read_text()
    found = re.findall(r"^\s+(\+?[\w.@/]+=\S+) \\$", script, flags=re.MULTILINE)
    values = {"TRAIN": "train.parquet", "VAL": "val.parquet", "MODEL": "model", "HERE": "."}
    return [re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], line) for line in found]


def test_example_overrides_compose_with_verls_config() -> None:
    import verl

    overrides = _overrides()
    assert len(overrides) > 40
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        config = compose(config_name="ppo_trainer", overrides=overrides)
    rollout = config.actor_rollout_ref.rollout
    assert rollout.agent.default_agent_loop == "vmtr_video_mtr"
    assert rollout.n == 2 and config.data.train_batch_size == 16
    assert config.algorithm.gamma == 1.0 and config.algorithm.lam == 1.0
    assert config.reward.reward_kwargs.vmtr.variant == "code"


def test_agent_loop_file_names_the_loop_and_valid_settings() -> None:
    [entry] = yaml.safe_load((EXAMPLE / "agent_loop.yaml").read_text())
    assert entry["name"] == "vmtr_video_mtr"
    assert entry["_target_"] == "vmtr.integrations.verl.agent_loop.VideoMTRAgentLoop"
    assert ProtocolSettings(**entry["protocol"]).max_turns == 3
