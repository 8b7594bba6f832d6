"""Questions per minute of `vmtr eval`: micro-batched turns against one question at a time.

Both runs use the same model, settings and generated synthetic questions, in this one process,
one after the other; the ratio is what matters (absolute rates depend on the machine and its
load). It also reports whether the two runs gave the same answers (greedy decoding, so they
should, up to floating-point ties).

    python benchmarks/eval_throughput.py [--n 16] [--batch 8] [--max-new-tokens 96] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from vmtr.config import GenerationSettings, ModelSettings
from vmtr.eval.datasets import load_synthetic
from vmtr.eval.runner import EvalSettings, collect, run
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.models.qwen import QwenVideoLM


def timed_run(items, settings, lm, out: Path, batch_size: int) -> tuple[float, list[dict]]:
    """Wall seconds of one full run, and its samples."""
    started = time.perf_counter()
    outcome = run(items, settings, out, lm, batch_size=batch_size)
    seconds = time.perf_counter() - started
    if outcome.errors:
        raise SystemExit(f"{outcome.errors} question(s) failed: {outcome.unexpected[:1]}")
    return seconds, collect(out, items, settings.run_key())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=16, help="questions")
    parser.add_argument("--batch", type=int, default=8, help="questions in flight when batched")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--minutes", type=float, default=0.5, help="length of each video")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vmtr-throughput-") as tmp:
        root = Path(tmp)
        generate(root / "data", SyntheticSettings(n_items=args.n, seed=4242, minutes=args.minutes))
        items = load_synthetic(root / "data")
        model = ModelSettings(model=args.model, device=args.device)
        lm = QwenVideoLM.load(model)
        settings = EvalSettings(
            benchmark="synthetic",
            model=model,
            generation=GenerationSettings(temperature=0, max_new_tokens=args.max_new_tokens),
        )
        timed_run(items[:1], settings, lm, root / "warmup", 1)  # first-call costs out of the way
        one_s, one = timed_run(items, settings, lm, root / "one", 1)
        many_s, many = timed_run(items, settings, lm, root / "batched", args.batch)

    rate_one, rate_many = 60 * len(items) / one_s, 60 * len(items) / many_s
    same = sum(a["prediction"] == b["prediction"] for a, b in zip(one, many, strict=True))
    turns = sum(s["n_turns"] for s in one)
    print(f"model {args.model} on {args.device}: {len(items)} questions, {turns} turns")
    print(f"one at a time : {rate_one:8.1f} questions/min ({one_s:.1f} s)")
    print(f"batched (B={args.batch}) : {rate_many:8.1f} questions/min ({many_s:.1f} s)")
    print(f"speed-up      : {rate_many / rate_one:8.2f}x")
    print(f"same answers  : {same}/{len(items)}")


if __name__ == "__main__":
    main()
