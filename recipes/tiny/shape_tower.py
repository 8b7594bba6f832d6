"""Can the tiny model's vision tower learn needle shapes when it is told them directly?

    python recipes/tiny/shape_tower.py --model tiny --train runs/tiny/data/drill-s1100 \\
        --train runs/tiny/data/drill-s1101 --test runs/tiny/data/train-s1001 [--steps 2000] \\
        [--lr 3e-4] [--head-only] [--cache DIR] [--save DIR]

Vision only, the language model untouched: each needle's frame (exactly as the agent feeds it)
goes through the tower, its merged tokens are max-pooled (as `recipes/tiny/probe_vision.py` pools
them) and a linear head names the shape. ``--head-only`` freezes the tower, which is the probe's
question again; without it the tower trains too. The test items are the first ``--test-items``
of ``--test``; the rest of that folder joins the training frames. A tower that reaches high
accuracy here fails the language model's shape words for want of a direct signal, not of
capacity: the warm start's auxiliary loss classes each merged cell, and a cell sees only part
of a shape. It prints the test accuracy every ``--every`` steps; ``--save DIR`` writes the whole
model with the trained tower (the head is dropped), a starting point for a warm start whose
language model must then re-learn the tower's new features.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

from vmtr.agent.ask import resolve_model
from vmtr.eval.datasets import load_video_mtr_json
from vmtr.eval.synthetic import SHAPES

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `recipes`

from recipes.tiny.curriculum.vision_aux import pooled_frames  # noqa: E402
from recipes.tiny.probe_vision import needle_images  # noqa: E402

Frame = tuple[object, int]  # (PIL image, shape class)


def needle_frames(folder: Path, cache: Path, budget, first: int, last: int | None) -> list[Frame]:
    """The frame of every needle of items ``first:last`` of a `vmtr synth` folder."""
    items = load_video_mtr_json(folder / "annotations.json")[first:last]
    return [
        (image, SHAPES.index(needle["shape"]))
        for image, needle in needle_images(items, cache, budget)
    ]


def pooled(visual, processor, frames: list[Frame]) -> torch.Tensor:
    """`pooled_frames` of the frames' images."""
    return pooled_frames(visual, processor, [f[0] for f in frames])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--train", type=Path, action="append", required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--test-items", type=int, default=300)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--head-only", action="store_true", help="Freeze the tower.")
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--cache", type=Path, default=Path("runs/shape-tower-frames"))
    parser.add_argument("--save", type=Path, help="Save the model with the trained tower here.")
    args = parser.parse_args()
    torch.manual_seed(0)
    args.cache.mkdir(parents=True, exist_ok=True)
    lm, _, _ = resolve_model(args.model, {"device": "cpu"})
    processor, visual, budget = lm.processor, lm.model.model.visual, lm.pixel_budget
    train = [f for d in args.train for f in needle_frames(d, args.cache, budget, 0, None)]
    train += needle_frames(args.test, args.cache, budget, args.test_items, None)
    test = needle_frames(args.test, args.cache, budget, 0, args.test_items)
    hidden = int(pooled(visual, processor, test[:1]).shape[-1])
    head = torch.nn.Linear(hidden, len(SHAPES))
    params = list(head.parameters()) + ([] if args.head_only else list(visual.parameters()))
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    print(f"{len(train)} training frames, {len(test)} test frames", flush=True)

    @torch.no_grad()
    def test_accuracy() -> float:
        right = 0
        for i in range(0, len(test), 64):
            batch = test[i : i + 64]
            guess = head(pooled(visual, processor, batch)).argmax(1)
            right += int((guess == torch.tensor([f[1] for f in batch])).sum())
        return right / len(test)

    rng, started = random.Random(0), time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = rng.sample(train, args.batch_size)
        logits = head(pooled(visual, processor, batch))
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([f[1] for f in batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            print(
                f"step {step}: test shape accuracy {test_accuracy():.1%} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    if args.save:
        lm.model.save_pretrained(args.save)
        processor.save_pretrained(args.save)
        print(f"saved to {args.save}")


if __name__ == "__main__":
    main()
