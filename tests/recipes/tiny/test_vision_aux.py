"""The auxiliary needle loss: cell labels from needle boxes, the hook, and training through it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from recipes.tiny.curriculum import trainer
from recipes.tiny.curriculum.config import CurriculumConfig
from recipes.tiny.curriculum.vision_aux import (
    NeedleHeads,
    capture_merged_tokens,
    cell_labels,
    example_labels,
    merged_sizes,
    pooled_frames,
)
from vmtr.eval.synthetic import COLOURS, SHAPES, SyntheticSettings, generate
from vmtr.models.tiny import build_tiny
from vmtr.policies.conversation import IGNORE

NAMES = list(COLOURS)


def test_cells_under_a_needle_get_its_colour_and_shape() -> None:
    # A 112 px frame in a 4x4 grid of 28 px cells; the box covers cells (1,1) and (1,2) fully
    # and grazes (2,1) and (2,2) by 2 px (7 % of a cell: left out, not called empty).
    needle = {"colour": "blue", "shape": "circle", "box": [28, 28, 84, 58]}
    colour, shape = cell_labels([needle], 112, (4, 4), NAMES, SHAPES)
    blue, circle = 1 + NAMES.index("blue"), 1 + SHAPES.index("circle")
    assert colour.view(4, 4)[1].tolist() == [0, blue, blue, 0]
    assert shape.view(4, 4)[1].tolist() == [0, circle, circle, 0]
    assert colour.view(4, 4)[2].tolist() == [0, IGNORE, IGNORE, 0]
    assert (colour.view(4, 4)[[0, 3]] == 0).all()


def test_example_labels_follow_the_frames_in_order() -> None:
    needles = [{"colour": "red", "shape": "square", "pool_index": 5, "box": [0, 0, 56, 56]}]
    grid = torch.tensor([[1, 8, 8], [1, 8, 8]])
    colour, shape = example_labels(needles, [4, 5], grid, 2, 112, NAMES, SHAPES)
    assert colour.shape == (32,)
    assert (colour[:16] == 0).all()
    red = 1 + NAMES.index("red")
    assert colour[16:].view(4, 4)[:2, :2].flatten().tolist() == [red] * 4
    assert int((colour[16:] == red).sum()) == 4


def test_loss_balances_needle_and_empty_cells_and_skips_ignored() -> None:
    torch.manual_seed(0)
    heads = NeedleHeads(8, len(NAMES), len(SHAPES))
    tokens = torch.randn(6, 8)
    colour = torch.tensor([0, 0, 0, 0, 2, IGNORE])
    shape = torch.tensor([0, 0, 0, 0, 1, IGNORE])
    logits_c, logits_s = heads.colour(tokens), heads.shape(tokens)
    ce = torch.nn.functional.cross_entropy
    want = 0.5 * (
        ce(logits_c[4:5], colour[4:5])
        + ce(logits_c[:4], colour[:4])
        + ce(logits_s[4:5], shape[4:5])
        + ce(logits_s[:4], shape[:4])
    )
    assert torch.allclose(heads.loss(tokens, colour, shape), want)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synth")
    generate(folder, SyntheticSettings(n_items=3, seed=4, minutes=0.5, kinds=("colour",)))
    return folder


def test_hook_sees_one_merged_token_per_cell(data_dir: Path, tmp_path: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(build_tiny(tmp_path / "m"))
    pixels = torch.randn(2 * 64, 3 * 2 * 14 * 14)
    grid = torch.tensor([[1, 8, 8], [1, 8, 8]])
    with capture_merged_tokens(model.model.visual) as seen:
        model.model.get_image_features(pixels, grid)
    assert len(seen) == 1 and seen[0].shape == (32, model.config.vision_config.out_hidden_size)


@torch.no_grad()
def test_pooled_frames_are_each_images_merged_tokens_max_pooled(tmp_path: Path) -> None:
    folder = build_tiny(tmp_path / "m")
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    images = [Image.new("RGB", (112, 112), "red"), Image.new("RGB", (112, 224), "blue")]
    with capture_merged_tokens(model.model.visual) as seen:
        pooled = pooled_frames(model.model.visual, processor, images)
    grid = processor.image_processor(images=images, return_tensors="pt")["image_grid_thw"]
    sizes = merged_sizes(grid, model.model.visual.spatial_merge_size)
    assert len(sizes) == 2 and sum(sizes) == seen[0].shape[0]
    parts = seen[0].split(sizes)
    assert pooled.shape == (2, model.config.vision_config.out_hidden_size)
    for row, part in zip(pooled, parts, strict=True):
        assert torch.equal(row, part.max(0).values)


def test_sft_with_the_aux_loss_logs_it_and_lowers_it(data_dir: Path, tmp_path: Path) -> None:
    config = CurriculumConfig(
        data=[data_dir],
        out=tmp_path,
        steps=12,
        batch_size=2,
        warmup=1,
        save_every=6,
        eval_items=1,
        single_turn_share=1.0,
        tiny_sizes={},
        lr=3e-3,
        vision_aux_weight=1.0,
    )
    recipe = trainer.Curriculum(config, log=lambda _: None)
    recipe.setup()
    recipe.train()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    aux = [r["vision_aux_loss"] for r in log]
    assert all(a > 0 for a in aux)
    assert sum(aux[-3:]) < sum(aux[:3]), aux
    state = torch.load(recipe.last_checkpoint() / "trainer_state.pt", weights_only=False)
    assert "needle_heads" in state
    assert not any("colour" in k for k in recipe.model.state_dict()), "heads leaked into model"

    # A new run from that checkpoint picks its heads up rather than starting them from zero.
    follow = trainer.Curriculum(
        config.model_copy(update={"model": str(recipe.last_checkpoint()), "out": tmp_path / "b"}),
        log=lambda _: None,
    )
    follow.setup()
    for key, value in follow.heads.state_dict().items():
        assert torch.equal(value, state["needle_heads"][key]), key
