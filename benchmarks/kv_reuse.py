"""Per-turn latency of a 3-turn episode: KV cache kept across turns vs whole-conversation recompute.

Both runs use the same random-weight Qwen2.5-VL (big enough that model compute, not Python,
dominates on a CPU), the same frames and the same greedy replies, side by side in one process;
the ratio recompute / reuse per turn is what to read (absolute times on shared machines are noise).

    python benchmarks/kv_reuse.py [--hidden 512 --layers 8 --frame-px 224 --repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration

from vmtr import protocol
from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings
from vmtr.models.qwen import QwenVideoLM
from vmtr.models.tiny import build_processor, build_tokenizer, tiny_config
from vmtr.tools.select import first_turn_frames, select_segment


def make_lm(hidden: int, layers: int, vision_hidden: int, frame_px: int, reuse: bool, model=None):
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, max_pixels=frame_px * frame_px)
    if model is None:
        torch.manual_seed(0)
        config = tiny_config(
            tokenizer,
            hidden=hidden,
            layers=layers,
            heads=8,
            kv_heads=4,
            vision_depth=4,
            vision_hidden=vision_hidden,
        )
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    settings = ModelSettings(
        model="random", device="cpu", reuse_kv_cache=reuse, max_pixels=frame_px * frame_px
    )
    return QwenVideoLM(model, processor, settings)


def frames_for(frame_px: int):
    def fetch(indices):
        return [
            Image.fromarray(
                np.random.default_rng(i).integers(0, 255, (frame_px, frame_px, 3), dtype=np.uint8)
            )
            for i in indices
        ]

    return fetch


def episode(lm: QwenVideoLM, fetch, session: str, new_tokens: int) -> list[float]:
    """Three turns (16 + 8 + 8 frames); returns the seconds each turn took."""
    settings = ProtocolSettings()
    gen = GenerationSettings(temperature=0.0, max_new_tokens=new_tokens)
    pool = [float(i) + 0.5 for i in range(64)]
    shown = first_turn_frames(64, 16)
    messages = [
        protocol.system_message(settings),
        protocol.user_message(
            turn=1,
            frames=shown,
            timestamps=[pool[i] for i in shown],
            question="Which colour was the shape?",
            options=["A. red", "B. blue"],
            pool_size=64,
            settings=settings,
        ),
    ]
    times = []
    for turn, (start, end) in enumerate([(None, None), (8, 20), (40, 55)], start=1):
        if start is not None:
            chosen = select_segment(start, end, 8)
            messages.append(
                protocol.user_message(
                    turn=turn,
                    frames=chosen,
                    timestamps=[pool[i] for i in chosen],
                    question="Which colour was the shape?",
                    options=["A. red", "B. blue"],
                    pool_size=64,
                    settings=settings,
                )
            )
        began = time.perf_counter()
        reply = lm.generate(messages, fetch, settings=gen, session=session)
        times.append(time.perf_counter() - began)
        messages.append(protocol.assistant_message(reply.text))
    lm.end_session(session)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vision-hidden", type=int, default=256)
    parser.add_argument("--frame-px", type=int, default=224)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    reuse = make_lm(args.hidden, args.layers, args.vision_hidden, args.frame_px, True)
    recompute = make_lm(
        args.hidden, args.layers, args.vision_hidden, args.frame_px, False, model=reuse.model
    )
    params = sum(p.numel() for p in reuse.model.parameters()) / 1e6
    fetch = frames_for(args.frame_px)
    episode(reuse, fetch, "warmup", 2)
    runs: dict[str, list[list[float]]] = {"reuse": [], "recompute": []}
    for r in range(args.repeats):  # alternate (and swap the order) so drift hits both alike
        order = [("reuse", reuse), ("recompute", recompute)]
        for name, lm in order if r % 2 == 0 else order[::-1]:
            runs[name].append(episode(lm, fetch, f"{name}{r}", args.new_tokens))
    print(
        f"model: {params:.1f} M params, frames {args.frame_px}px, "
        f"{args.new_tokens} new tokens per turn, {args.repeats} repeats (median)"
    )
    print("| turn | reuse (s) | recompute (s) | recompute / reuse |")
    print("|---|---|---|---|")
    ratios = []
    for turn in range(3):
        a = statistics.median(run[turn] for run in runs["reuse"])
        b = statistics.median(run[turn] for run in runs["recompute"])
        ratios.append(b / a)
        print(f"| {turn + 1} | {a:.2f} | {b:.2f} | {b / a:.2f}x |")
    total_a = statistics.median(sum(run) for run in runs["reuse"])
    total_b = statistics.median(sum(run) for run in runs["recompute"])
    print(
        f"kv_reuse: turn2_ratio={ratios[1]:.2f} turn3_ratio={ratios[2]:.2f} "
        f"episode_ratio={total_b / total_a:.2f}"
    )


if __name__ == "__main__":
    main()
