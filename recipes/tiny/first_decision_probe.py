"""Would branching at the first decision have first aims to compare? The ranges a policy samples
after its own border sentence.

    python recipes/tiny/first_decision_probe.py MODEL EVAL_DIR --data HELDOUT [--k 8]
        [--temperature 1.0] [--items 200]

EVAL_DIR is a greedy `vmtr eval synthetic` run of MODEL on HELDOUT (its ``samples.jsonl``). For
each question whose first turn did not show the needle and whose greedy first reply retrieved,
the reply is cut after its ``<retrieve>`` tag (the think text, border sentence included, kept as
the policy wrote it) and ``--k`` range completions are sampled from there with the prompt the
agent builds (transformers' ``generate``, ``num_return_sequences``). Per question: how many
distinct valid ranges the k samples write, whether any of them shows the needle (8 frames spread
over the range, as a retrieve shows them), whether some do and some do not (the questions a
GRPO group over these ranges would carry an advantage on), and the share that do; against the
greedy range's own hit. GRPO over whole episodes at the recipe's temperature tries 1.0-1.2 distinct first retrieves
a group (`group_outcomes.py`); a first-decision branch would compare these instead.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from vmtr import protocol
from vmtr.agent.graph import first_turn_messages, frame_fetcher
from vmtr.config import ModelSettings, ProtocolSettings
from vmtr.eval.datasets import load_synthetic
from vmtr.models.qwen import QwenVideoLM
from vmtr.tools import video as video_tools
from vmtr.tools.select import first_turn_frames
from vmtr.tools.spread import uniform_indices

RANGE = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*</retrieve>")


def sampled_ranges(
    lm: QwenVideoLM, item, prefix: str, k: int, temperature: float, seed: int
) -> list[tuple[int, int] | None]:
    """``k`` completions of the first reply after ``prefix``, parsed as ranges (None: invalid)."""
    settings = ProtocolSettings()
    info = video_tools.probe(str(item.video))
    pool = video_tools.pool_timestamps(
        info, max_frames=settings.pool_size, max_fps=settings.pool_max_fps
    )
    shown = first_turn_frames(len(pool), settings.first_turn_frames)
    options = protocol.format_options(item.options)
    messages = first_turn_messages(settings, pool, shown, item.question, options)
    text = lm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images = frame_fetcher(video_tools.FrameCache(), lm)(str(item.video), pool)(shown)
    encoded = lm.processor(text=[text + prefix], images=images, return_tensors="pt")
    torch.manual_seed(seed)
    out = lm.model.generate(
        **encoded,
        do_sample=True,
        temperature=temperature,
        top_p=1.0,
        top_k=0,
        num_return_sequences=k,
        max_new_tokens=12,
    )
    width = encoded["input_ids"].shape[1]
    ranges: list[tuple[int, int] | None] = []
    for row in out[:, width:]:
        match = RANGE.match(lm.processor.tokenizer.decode(row, skip_special_tokens=False))
        if match and int(match[1]) <= int(match[2]) < len(pool):
            ranges.append((int(match[1]), int(match[2])))
        else:
            ranges.append(None)
    return ranges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--items", type=int, default=200)
    args = parser.parse_args()
    lm = QwenVideoLM.load(ModelSettings(model=args.model, device="cpu"))
    items = {item.id: item for item in load_synthetic(str(args.data))}
    lines = (args.eval_dir / "samples.jsonl").read_text().splitlines()[: args.items]
    asked = greedy_hits = any_hit = mixed = 0
    distinct: list[int] = []
    shares: list[float] = []
    invalid = 0
    for index, line in enumerate(lines):
        sample = json.loads(line)
        first = sample["turns"][0]
        wanted = set(items[sample["id"]].extra["needle_pool_indices"])
        if first["action"] != "retrieve" or wanted & set(first["frames"]):
            continue
        raw = first["raw"] or ""
        prefix = raw[: raw.index("<retrieve>") + len("<retrieve>")]
        start, end = first["retrieve"]
        asked += 1
        greedy_hits += bool(wanted & set(uniform_indices(start, end, 8)))
        ranges = sampled_ranges(
            lm, items[sample["id"]], prefix, args.k, args.temperature, seed=index
        )
        valid = [r for r in ranges if r is not None]
        invalid += len(ranges) - len(valid)
        hits = [bool(wanted & set(uniform_indices(s, e, 8))) for s, e in valid]
        distinct.append(len(set(valid)))
        any_hit += any(hits)
        mixed += any(hits) and not all(hits)
        shares.append(sum(hits) / len(ranges))
    print(
        f"| {args.eval_dir} | questions | greedy range shows it | distinct ranges in {args.k} "
        f"| any of {args.k} shows it | some show it, some not | share showing it | invalid |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| T={args.temperature} | {asked} | {greedy_hits / asked:.0%} | "
        f"{sum(distinct) / asked:.2f} | {any_hit / asked:.0%} | {mixed / asked:.0%} | "
        f"{sum(shares) / asked:.0%} | {invalid / (asked * args.k):.0%} |"
    )


if __name__ == "__main__":
    main()
