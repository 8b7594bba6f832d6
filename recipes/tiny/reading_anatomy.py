"""Where does reading a needle's colour or shape fail: finding the needle, what is found there,
or carrying it to the word?

    python recipes/tiny/reading_anatomy.py --model runs/tiny/7-weighted/best \\
        --data runs/table/heldout-s5000 [--items 200] [--attribute colour|shape] \\

Over the scripted multi-turn episodes of `recipes.tiny.curriculum.reading` ("frame 37 red
circle"), at each colour (or shape) word of a needle it reports:
- top-1 accuracy of the word (as the reading check does);
- per layer and head, the attention mass from the position that predicts the word to the
  image tokens of the frame just named, against the mean other frame, and the share of that
  frame's mass on the merged-token cells the needle covers;
- linear probes (5-fold cross-validated) for the attribute on the needle cells' hidden state
  entering each layer (how much the attended tokens carry) and on the hidden state of the
  position that predicts the word (how much of it reached the reply).
High attention on the needle with a weak cell probe puts the failure in what the tokens carry;
a strong cell probe with a weak probe at the word puts it in the routing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from vmtr.eval.datasets import load_video_mtr_json
from vmtr.models.tiny import TINY_DIR

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `recipes`

from recipes.tiny.curriculum.frames import backend_pixel_budget  # noqa: E402
from recipes.tiny.curriculum.reading import (  # noqa: E402
    reading_marks,
    reading_positions,
    scripted_episodes,
)
from recipes.tiny.probe_vision import probe_accuracy  # noqa: E402


def needle_cells(box: list[int], frame_px: int, grid: int) -> list[int]:
    """Raster indices of the merged-token cells a needle's box overlaps."""
    cell = frame_px / grid
    return [
        gy * grid + gx
        for gy in range(grid)
        for gx in range(grid)
        if gx * cell < box[2]
        and (gx + 1) * cell > box[0]
        and gy * cell < box[3]
        and (gy + 1) * cell > box[1]
    ]


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(TINY_DIR))
    parser.add_argument("--data", type=Path, default=Path("runs/table/heldout-s5000"))
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--attribute", choices=("colour", "shape"), default="colour")
    args = parser.parse_args()
    model = AutoModelForImageTextToText.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    budget = backend_pixel_budget(model, processor)
    items = load_video_mtr_json(args.data / "annotations.json")[: args.items]
    cache = args.data / "frames"
    cache.mkdir(parents=True, exist_ok=True)
    tok, marks = processor.tokenizer, reading_marks(processor.tokenizer)
    text = model.config.text_config
    on_named = torch.zeros(text.num_hidden_layers, text.num_attention_heads)
    on_other, on_needle = torch.zeros_like(on_named), torch.zeros_like(on_named)
    features, at_word, labels, hits, cell_share = [], [], [], 0, 0.0
    attribute = args.attribute
    frame_px = json.loads((args.data / "settings.json").read_text())["frame_size"]  # box units
    episodes = scripted_episodes(processor, items, cache, budget)
    for item, traj, inputs, targets in episodes:
        out = model(**inputs, output_attentions=True, output_hidden_states=True)
        image_positions = (
            (inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
        )
        per_frame = len(image_positions) // len(traj.frames)
        grid = int(per_frame**0.5)
        spans = image_positions.view(len(traj.frames), per_frame)
        predicted = out.logits[0, :-1].argmax(-1)
        needles = {n["colour"]: n for n in item.extra["needles"]}
        for kind, i in reading_positions(targets, marks):
            if kind != attribute:
                continue
            word = tok.decode([targets[i]]).strip()
            # the needle by its colour word, just before its shape ("red circle")
            colour = word if attribute == "colour" else tok.decode([targets[i - 1]]).strip()
            needle = needles.get(colour)
            if needle is None or needle[attribute] != word:
                continue
            named = [
                s for f, s in zip(traj.frames, spans, strict=True) if f == needle["pool_index"]
            ]
            other = [
                s for f, s in zip(traj.frames, spans, strict=True) if f != needle["pool_index"]
            ]
            if not named or not other:
                continue
            cells = named[0][needle_cells(needle["box"], frame_px, grid)]
            cell_share += len(cells) / per_frame
            for layer, attention in enumerate(out.attentions):
                row = attention[0, :, i]
                on_named[layer] += row[:, torch.cat(named)].sum(-1) / len(named)
                on_other[layer] += row[:, torch.cat(other)].sum(-1) / len(other)
                on_needle[layer] += row[:, cells].sum(-1) / row[:, named[0]].sum(-1).clamp_min(1e-9)
            features.append(torch.stack([h[0, cells].mean(0) for h in out.hidden_states]))
            at_word.append(torch.stack([h[0, i] for h in out.hidden_states]))
            labels.append(word)
            hits += int(predicted[i] == targets[i])
    n = len(labels)
    if n == 0:
        raise SystemExit(f"error: no needle {attribute} word in these items' scripted episodes")
    print(f"{n} needle {attribute} words; top-1 {hits / n:.0%}")
    print(
        f"attention at the {attribute} word: named frame / mean other frame (ratio); share on needle"
    )
    print(f"(the needle covers {cell_share / n:.0%} of a frame's tokens)")
    for layer in range(on_named.shape[0]):
        heads = [
            f"h{h} {on_named[layer, h] / n:.3f}/{on_other[layer, h] / n:.3f} "
            f"({on_named[layer, h] / on_other[layer, h].clamp_min(1e-9):.0f}x; "
            f"{on_needle[layer, h] / n:.0%})"
            for h in range(on_named.shape[1])
        ]
        print(f"layer {layer}: " + "  ".join(heads))
    names = sorted(set(labels))
    y = torch.tensor([names.index(c) for c in labels])
    majority = max(labels.count(c) for c in names) / n
    for where, rows in (("the needle cells", features), (f"the {attribute} word", at_word)):
        x = torch.stack(rows)
        with torch.enable_grad():
            probes = [probe_accuracy(x[:, k], y, len(names)) for k in range(x.shape[1])]
        print(
            f"linear probe for the {attribute} on {where} entering each layer (5-fold CV; "
            f"majority {majority:.0%}): "
            + ", ".join(f"layer {k} {a:.0%}" for k, a in enumerate(probes[:-1]))
            + f", after the last {probes[-1]:.0%}"
        )


if __name__ == "__main__":
    main()
