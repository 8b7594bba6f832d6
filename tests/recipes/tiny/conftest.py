"""Shared fixtures of the curriculum's tests: a small synthetic split, its items with their
frames cached, a fresh tiny model, and scripted episodes of every protocol budget."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from recipes.tiny.curriculum import episodes, frames, trainer
from vmtr.eval.datasets import load_video_mtr_json
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.models.tiny import build_tiny

ALL_SETTINGS = [episodes.MULTI_TURN, episodes.SINGLE_16, episodes.SINGLE_32]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synth")
    generate(folder, SyntheticSettings(n_items=4, seed=3, minutes=1.0))
    return folder


@pytest.fixture(scope="session")
def items(data_dir: Path):
    return load_video_mtr_json(data_dir / "annotations.json")


@pytest.fixture(scope="session")
def cached(items, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("frames")
    budget = {"max_pixels": 112 * 112, "min_pixels": 56 * 56, "factor": 28}
    return [frames.CachedItem(item, cache, budget) for item in items]


@pytest.fixture(scope="session")
def tiny(items, tmp_path_factory: pytest.TempPathFactory):
    folder = build_tiny(
        tmp_path_factory.mktemp("tiny"), seed=0, extra_texts=trainer.corpus_texts(items)
    )
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    return processor, model


@pytest.fixture(scope="session")
def trajectories(cached):
    """Scripted episodes of every cached item under every budget, ``n_seeds`` draws each."""

    def draw(n_seeds: int = 8):
        for c in cached:
            for settings in ALL_SETTINGS:
                for seed in range(n_seeds):
                    yield c, episodes.plan_trajectory(c.item, c.pool, settings, random.Random(seed))

    return draw
