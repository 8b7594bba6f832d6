"""torch intra-op threads for a small model: engine rollouts at 1 thread against N, in one process.

Why it matters: the tiny model's ops are small, so splitting each across threads costs more in
synchronisation than it saves, and the episode engine already runs the graphs' own work (frame
decoding, tokenising) in other threads. The runs alternate (1, N, 1, N) on the same seeds; the
last line is ``threads: speed_ratio=R`` (1 thread's speed over N threads').

    python benchmarks/threads.py [--threads 2] [--prompts 4] [--samples 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings
from vmtr.eval.datasets import load_synthetic
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.models.qwen import QwenVideoLM
from vmtr.policies.rollout import rollout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmtr-threads-") as tmp:
        generate(Path(tmp), SyntheticSettings(n_items=args.prompts, seed=99, minutes=1.0))
        items = load_synthetic(Path(tmp))
        lm = QwenVideoLM.load(ModelSettings(model="tiny", device="cpu"))
        gen = GenerationSettings(temperature=1.0, max_new_tokens=96)
        seconds = {1: 0.0, args.threads: 0.0}
        for repeat in range(args.repeats + 1):
            for threads in (1, args.threads):
                torch.set_num_threads(threads)
                started = time.perf_counter()
                rollout(
                    lm,
                    items,
                    group_size=args.samples,
                    seed=repeat,
                    protocol_settings=ProtocolSettings(),
                    generation=gen,
                )
                if repeat:  # the first round warms up
                    seconds[threads] += time.perf_counter() - started
    for threads, total in seconds.items():
        print(f"{threads} thread(s): {total / args.repeats:6.1f} s per rollout")
    print(f"threads: speed_ratio={seconds[args.threads] / seconds[1]:.2f}")


if __name__ == "__main__":
    main()
