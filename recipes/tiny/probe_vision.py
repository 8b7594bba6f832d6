"""Does the vision tower see a needle's colour and shape, or the border? Linear probes on its
output, apart from the LM.

    python recipes/tiny/probe_vision.py --model tiny --data runs/tiny/data/train-s1001 [--items 300]
    python recipes/tiny/probe_vision.py --border --model M --data runs/colour/data/heldout-s5000 --items 80

For every needle of the first ``--items`` items, the frame it is on goes through the model's own
vision tower (the frame exactly as the agent would feed it); the merged visual tokens are
max-pooled into one vector, and a logistic regression per attribute (colour, shape) is scored by
5-fold cross-validation. High probe accuracy with low teacher-forced accuracy
(`recipes.tiny.curriculum.reading`) puts the failure in the language model, not in the tower.
With ``--border`` the probe tells border frames from others instead: per item, four frames inside
the border (the cue) and four first-turn frames well outside it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vmtr.agent.ask import resolve_model
from vmtr.eval.datasets import load_video_mtr_json
from vmtr.tools.select import first_turn_frames

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `recipes`

from recipes.tiny.curriculum.episodes import needles_of  # noqa: E402
from recipes.tiny.curriculum.frames import CachedItem  # noqa: E402
from recipes.tiny.curriculum.vision_aux import pooled_frames  # noqa: E402


def needle_images(items, cache: Path, budget) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The frame of every needle of ``items`` (decoded once into ``cache``), with the needle."""
    for item in items:
        cached = CachedItem(item, cache, budget)
        for needle in needles_of(item):
            yield cached.images([needle["pool_index"]])[0], needle
        cached.release()


@torch.no_grad()
def features(
    model, processor, items, cache: Path, budget
) -> tuple[torch.Tensor, dict[str, list[str]]]:
    """One max-pooled vision vector per needle, and the needle's colour and shape."""
    xs, labels = [], {"colour": [], "shape": []}
    for image, needle in needle_images(items, cache, budget):
        xs.append(pooled_frames(model.model.visual, processor, [image])[0])
        for attribute, values in labels.items():
            values.append(needle[attribute])
    return torch.stack(xs), labels


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, classes: int, folds: int = 5) -> float:
    """Cross-validated accuracy of an L2-regularised logistic regression (``folds`` folds of a
    fixed shuffle): a few hundred samples make one split too noisy to compare layers by."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    right = 0
    for fold in order.chunk(folds):
        train = order[~torch.isin(order, fold)]
        mean, std = x[train].mean(0), x[train].std(0) + 1e-6
        xs = (x - mean) / std
        weight = torch.zeros(x.shape[1], classes, requires_grad=True)
        bias = torch.zeros(classes, requires_grad=True)
        opt = torch.optim.Adam([weight, bias], lr=1e-2)
        for _ in range(300):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xs[train] @ weight + bias, y[train])
            (loss + 1e-2 * weight.square().sum()).backward()
            opt.step()
        with torch.no_grad():
            right += int(((xs[fold] @ weight + bias).argmax(1) == y[fold]).sum())
    return right / len(y)


@torch.no_grad()
def border_features(
    model, processor, items, cache: Path, budget
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-pooled vision vectors of four frames inside each item's border and four outside it
    (first-turn frames more than one pool frame away), with 1 for inside and 0 for outside."""
    xs, ys = [], []
    for item in items:
        first, last = item.extra["cue_pool_indices"]
        outside = [i for i in first_turn_frames(64, 16) if i < first - 1 or i > last + 1]
        inside = list(range(first, last + 1))[:4]
        cached = CachedItem(item, cache, budget)
        images = cached.images(inside + outside[:4])
        xs.append(pooled_frames(model.model.visual, processor, images))
        ys += [1] * len(inside) + [0] * len(outside[:4])
        cached.release()
    return torch.cat(xs), torch.tensor(ys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--data", type=Path, required=True, help="A `vmtr synth` split folder.")
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--cache", type=Path, help="Decoded-frame cache (default: DATA/frames).")
    parser.add_argument("--border", action="store_true", help="Probe border frames vs others.")
    args = parser.parse_args()
    torch.manual_seed(0)
    lm, _, _ = resolve_model(args.model, {"device": "cpu"})
    items = load_video_mtr_json(args.data / "annotations.json")[: args.items]
    cache = args.cache or args.data / "frames"
    cache.mkdir(parents=True, exist_ok=True)
    if args.border:
        x, y = border_features(lm.model.eval(), lm.processor, items, cache, lm.pixel_budget)
        print(
            f"vision probe: {len(y)} frames, border or not; cross-validated accuracy "
            f"{probe_accuracy(x, y, 2):.1%} (majority class {max(y.float().mean(), 1 - y.float().mean()):.1%})"
        )
        return
    x, labels = features(lm.model.eval(), lm.processor, items, cache, lm.pixel_budget)
    for attribute, values in labels.items():
        names = sorted(set(values))
        y = torch.tensor([names.index(v) for v in values])
        accuracy = probe_accuracy(x, y, len(names))
        majority = max(values.count(v) for v in names) / len(values)
        print(
            f"vision probe: {len(y)} needles, {len(names)} {attribute}s; cross-validated "
            f"{attribute} accuracy {accuracy:.1%} (majority class {majority:.1%})"
        )


if __name__ == "__main__":
    main()
