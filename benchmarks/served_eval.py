"""Questions per minute of `vmtr eval` through a chat-completions server, 1 against 4 in flight.

Without ``--base-url`` it starts `transformers serve` with the bundled tiny model on 127.0.0.1
(stopped by its pid at the end); with one, it uses that server and ``--model``. Both runs ask the
same generated synthetic questions greedily, one after the other; the ratio is what matters.
What concurrency buys depends on the server: one that batches requests (vLLM, SGLang) decodes
the four together, while `transformers serve` without ``--continuous-batching`` generates one
request at a time, so there only the client's work (decoding frames, encoding images, HTTP)
overlaps with generation. It also reports whether both runs gave the same answers.

    python benchmarks/served_eval.py [--n 12] [--base-url URL --model NAME] [--max-pixels 12544]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vmtr.config import GenerationSettings, ModelSettings, ServedSettings
from vmtr.eval.datasets import load_synthetic
from vmtr.eval.runner import EvalSettings, collect, run
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.models.openai_api import QWEN_FACTOR, OpenAIVideoLM
from vmtr.models.tiny import TINY_DIR


@contextmanager
def tiny_server(log: Path) -> Iterator[str]:
    """`transformers serve` with the tiny model on a free loopback port; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
    args = [command, "serve", str(TINY_DIR), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as sink:
        process = subprocess.Popen([*args, "--device", "cpu"], stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"transformers serve did not start:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)


def timed_run(items, settings, lm, out: Path, in_flight: int) -> tuple[float, list[dict]]:
    """Wall seconds of one full run, and its samples."""
    started = time.perf_counter()
    outcome = run(items, settings, out, lm, batch_size=in_flight)
    seconds = time.perf_counter() - started
    if outcome.errors:
        raise SystemExit(f"{outcome.errors} question(s) failed: {outcome.unexpected[:1]}")
    return seconds, collect(out, items, settings.run_key())


def measure(args: argparse.Namespace, base_url: str, model: str, root: Path) -> None:
    generate(root / "data", SyntheticSettings(n_items=args.n, seed=4243, minutes=args.minutes))
    items = load_synthetic(root / "data")
    served = ServedSettings(base_url=base_url, model=model)
    model_settings = ModelSettings(model=model, max_pixels=args.max_pixels)
    budget = {
        "max_pixels": model_settings.max_pixels,
        "min_pixels": model_settings.min_pixels,
        "factor": QWEN_FACTOR,
    }
    lm = OpenAIVideoLM(served, api_key=os.environ.get(args.api_key_env), pixel_budget=budget)
    lm.check()
    settings = EvalSettings(
        benchmark="synthetic",
        model=model_settings,
        generation=GenerationSettings(temperature=0, max_new_tokens=args.max_new_tokens),
        served=served,
    )
    timed_run(items[:1], settings, lm, root / "warmup", 1)  # first-call costs out of the way
    one_s, one = timed_run(items, settings, lm, root / "one", 1)
    four_s, four = timed_run(items, settings, lm, root / "four", 4)
    rate_one, rate_four = 60 * len(items) / one_s, 60 * len(items) / four_s
    same = sum(a["prediction"] == b["prediction"] for a, b in zip(one, four, strict=True))
    turns = sum(s["n_turns"] for s in one)
    print(f"{model} at {base_url}: {len(items)} questions, {turns} turns")
    print(f"concurrency 1 : {rate_one:8.1f} questions/min ({one_s:.1f} s)")
    print(f"concurrency 4 : {rate_four:8.1f} questions/min ({four_s:.1f} s)")
    print(f"same answers  : {same}/{len(items)}")
    print(f"served_eval: concurrency_ratio={rate_four / rate_one:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=12, help="questions")
    parser.add_argument("--base-url", help="a running server (default: start the tiny model)")
    parser.add_argument("--model", help="the server's model name (with --base-url)")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY")
    parser.add_argument("--max-pixels", type=int, default=12544, help="per frame (tiny: 12544)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--minutes", type=float, default=0.5, help="length of each video")
    args = parser.parse_args()
    if args.base_url and not args.model:
        parser.error("--base-url needs --model")

    with tempfile.TemporaryDirectory(prefix="vmtr-served-") as tmp:
        root = Path(tmp)
        if args.base_url:
            measure(args, args.base_url, args.model, root)
        else:
            with tiny_server(root / "serve.log") as base_url:
                measure(args, base_url, str(TINY_DIR), root)


if __name__ == "__main__":
    main()
