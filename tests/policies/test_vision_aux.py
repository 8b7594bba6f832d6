"""The auxiliary needle loss: cell labels from needle boxes, the hook, and training through it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

from vmtr.eval.synthetic import COLOURS, SHAPES, SyntheticSettings, generate
from vmtr.models.tiny import build_tiny
from vmtr.policies import sft
from vmtr.policies.vision_aux import (
    IGNORE,
    NeedleHeads,
    capture_merged_tokens,
    cell_labels,
    example_labels,
    frame_labels,
    merged_sizes,
)

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


def test_frame_labels_name_the_one_needle_shown_and_skip_two() -> None:
    needles = [
        {"colour": "red", "shape": "square", "pool_index": 5},
        {"colour": "blue", "shape": "circle", "pool_index": 7},
        {"colour": "green", "shape": "cross", "pool_index": 7},
    ]
    colour, shape = frame_labels(needles, [4, 5, 7], NAMES, SHAPES)
    assert colour.tolist() == [0, 1 + NAMES.index("red"), IGNORE]
    assert shape.tolist() == [0, 1 + SHAPES.index("square"), IGNORE]


def test_frame_loss_pools_each_image_and_balances_needle_and_empty_frames() -> None:
    torch.manual_seed(0)
    heads = NeedleHeads(8, len(NAMES), len(SHAPES))
    for layer in (heads.frame_colour, heads.frame_shape):
        torch.nn.init.normal_(layer.weight)
    sizes = merged_sizes(torch.tensor([[1, 4, 4], [1, 4, 8], [1, 4, 4]]), 2)
    assert sizes == [4, 8, 4]
    tokens = torch.randn(16, 8)
    colour, shape = torch.tensor([0, 3, 0]), torch.tensor([0, 2, IGNORE])
    pooled = torch.stack(
        [tokens[:4].max(0).values, tokens[4:12].max(0).values, tokens[12:].max(0).values]
    )
    lc, ls = heads.frame_colour(pooled), heads.frame_shape(pooled)
    ce = torch.nn.functional.cross_entropy
    want = 0.5 * (
        ce(lc[1:2], colour[1:2])
        + ce(lc[[0, 2]], colour[[0, 2]])
        + ce(ls[1:2], shape[1:2])
        + ce(ls[:1], shape[:1])
    )
    assert torch.allclose(heads.frame_loss(tokens, sizes, colour, shape), want)


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


def test_sft_with_the_aux_loss_logs_it_and_lowers_it(data_dir: Path, tmp_path: Path) -> None:
    config = sft.SFTConfig(
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
        frame_aux_weight=1.0,
    )
    recipe = sft.SFTRecipe(config, log=lambda _: None)
    recipe.setup()
    recipe.train()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    for key in ("vision_aux_loss", "frame_aux_loss"):
        aux = [r[key] for r in log]
        assert all(a > 0 for a in aux), key
        assert sum(aux[-3:]) < sum(aux[:3]), (key, aux)
    state = torch.load(recipe.last_checkpoint() / "trainer_state.pt", weights_only=False)
    assert "needle_heads" in state
    assert not any("colour" in k for k in recipe.model.state_dict()), "heads leaked into model"

    # A new run from that checkpoint picks its heads up rather than starting them from zero.
    follow = sft.SFTRecipe(
        config.model_copy(update={"model": str(recipe.last_checkpoint()), "out": tmp_path / "b"}),
        log=lambda _: None,
    )
    follow.setup()
    for key, value in follow.heads.state_dict().items():
        assert torch.equal(value, state["needle_heads"][key]), key
