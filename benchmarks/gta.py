"""GTA against grouped-query attention in the tiny Qwen2.5-VL, side by side in one process.

Both models have the same width, heads, layers, vision tower and (for training) the same
non-attention initial weights; only the text decoder's attention differs (`vmtr.models.gta`).
Measured, as GTA / GQA ratios:

- KV-cache bytes per token per layer, read off the ``DynamicCache`` after a real prefill;
- attention FLOPs per generated token at several context lengths (counted from the layer shapes:
  projections + scores + value mixing);
- greedy decode tokens/s on the CPU with the cache (text-only prompt of ``--decode-context``
  tokens, runs interleaved, median of ``--repeats``);
- with ``--readers``: the same on two trained checkpoints (`recipes/tiny/gta_readers.sh` trains a
  GQA and a GTA colour reader with one recipe and seed), plus their held-out accuracy with oracle
  aim (`vmtr eval synthetic --oracle-aim`: the needle is shown, so it measures reading).

A "paper shape" row puts the same formulas on GTA-1B's sizes (20 heads of 64, 5 maps, one key
head, 128-dim latent, against GQA with 5 key/value heads) for comparison with the paper's 30 %.

    python benchmarks/gta.py [--readers GQA GTA --heldout DIR] [--work DIR]

The last line is ``gta: kv_cache_ratio=… attn_flops_ratio=… decode_speed_ratio=… acc_gta=…
acc_gqa=…`` (``attn_flops_ratio`` at the longest context, ``decode_speed_ratio`` at the last
``--decode-context``; accuracies ``nan`` without ``--readers``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformers import (
    DynamicCache,
    Qwen2_5_VLForConditionalGeneration,
)

from vmtr.models.cache_names import cache_kwargs, output_cache
from vmtr.models.gta import (
    GTAAttention,
    GTASettings,
    apply_gta,
    attention_flops_per_token,
    cache_numbers_per_token,
    decoder_layers,
    gta_settings,
)
from vmtr.models.tiny import build_processor, build_tokenizer, tiny_config
from vmtr.models.weights import load_pretrained

CONTEXTS = (256, 1024, 4096, 16384)


def cache_bytes_per_token_per_layer(model: Any, processor: Any) -> float:
    """Bytes the cache really holds after prefilling a prompt with one image."""
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (112, 112, 3), np.uint8))
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    with torch.no_grad():
        cache = output_cache(model(**inputs, use_cache=True))
    total = 0
    for layer in cache.layers:
        total += layer.keys.numel() * layer.keys.element_size()
        total += layer.values.numel() * layer.values.element_size()
    return total / len(cache.layers) / inputs["input_ids"].shape[1]


def decode_tokens_per_s(model: Any, context: int, new_tokens: int, vocab: int) -> float:
    """Greedy cached decoding speed after a text-only prefill of ``context`` tokens."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (1, context), generator=generator)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        logits = model(input_ids=ids, **cache_kwargs(cache), use_cache=True).logits
        token = logits[:, -1:].argmax(-1)
        started = time.perf_counter()
        for _ in range(new_tokens):
            logits = model(input_ids=token, **cache_kwargs(cache), use_cache=True).logits
            token = logits[:, -1:].argmax(-1)
        elapsed = time.perf_counter() - started
    return new_tokens / elapsed


def paper_shape_ratio() -> float:
    """Cache numbers per token per layer at GTA-1B's sizes, GTA over GQA (paper: 30 %)."""
    text = dict(hidden_size=1280, num_attention_heads=20, num_key_value_heads=5)
    gqa = SimpleNamespace(**text)
    gta = SimpleNamespace(
        **text, gta=GTASettings(groups=5, key_heads=1, latent_dim=128).model_dump()
    )
    return cache_numbers_per_token(gta) / cache_numbers_per_token(gqa)


# ---------------------------------------------------------------------------------------------
# Accuracy of two readers trained the same way (recipes/tiny/gta_readers.sh)


def oracle_aim_accuracy(checkpoints: dict[str, Path], heldout: Path, work: Path) -> dict[str, Any]:
    """`vmtr eval synthetic --oracle-aim` (greedy) of each checkpoint on ``heldout``, the two
    side by side with one thread each; returns each one's ``results.json``. Oracle aim shows the
    needle on the retrieve's turn, so the figure measures reading, what attention changes, not
    aiming. A finished evaluation is read back; an interrupted one resumes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running = {}
    for name, checkpoint in checkpoints.items():
        out = work / f"eval-{name}"
        if (out / "results.json").exists():
            continue
        command = ["vmtr", "eval", "synthetic", "--data", str(heldout), "-o", str(out)]
        command += ["--model", str(checkpoint), "--oracle-aim", "--temperature", "0"]
        command += ["--max-new-tokens", "96"]
        running[name] = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    for name, process in running.items():
        if process.wait() != 0:
            raise SystemExit(f"error: evaluating the {name} reader failed")
    return {
        name: json.loads((work / f"eval-{name}" / "results.json").read_text())
        for name in checkpoints
    }


def final_train_loss(checkpoint: Path) -> float:
    """Mean loss over the last tenth of the steps that wrote ``checkpoint`` (its run's log)."""
    log = checkpoint.parent / "log.jsonl"
    losses = [json.loads(line)["loss"] for line in log.read_text().splitlines() if line.strip()]
    tail = losses[-max(1, len(losses) // 10) :]
    return sum(tail) / len(tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gta", default="{}", help="GTASettings as JSON (default: the defaults)")
    parser.add_argument("--decode-context", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--readers",
        nargs=2,
        type=Path,
        metavar=("GQA", "GTA"),
        help="Two checkpoints trained the same way, GQA then GTA (recipes/tiny/gta_readers.sh): "
        "every row is measured on them, plus accuracy on --heldout. Without it, fresh models "
        "and no accuracy.",
    )
    parser.add_argument("--heldout", type=Path, help="`vmtr synth` folder for --readers.")
    parser.add_argument(
        "--work", type=Path, default=Path("runs/bench-gta"), help="Where evaluations are kept."
    )
    args = parser.parse_args()
    if args.readers and not args.heldout:
        parser.error("--readers needs --heldout")
    settings = GTASettings(**json.loads(args.gta))

    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    if args.readers:
        readers = dict(zip(("gqa", "gta"), args.readers, strict=True))
        models = {name: load_pretrained(path).eval() for name, path in readers.items()}
        if not isinstance(decoder_layers(models["gta"])[0].self_attn, GTAAttention):
            raise SystemExit(f"error: {args.readers[1]} is not a GTA checkpoint")
        if isinstance(decoder_layers(models["gqa"])[0].self_attn, GTAAttention):
            raise SystemExit(f"error: {args.readers[0]} is a GTA checkpoint, not GQA")
        settings = gta_settings(models["gta"].config) or settings
    else:
        torch.manual_seed(0)
        gqa = Qwen2_5_VLForConditionalGeneration(tiny_config(tokenizer)).eval()
        torch.manual_seed(0)
        fresh = Qwen2_5_VLForConditionalGeneration(tiny_config(tokenizer))
        models = {"gqa": gqa, "gta": apply_gta(fresh, settings).eval()}
    gqa = models["gqa"]
    text = gqa.config.text_config
    print(
        f"tiny text decoder: hidden {text.hidden_size}, {text.num_attention_heads} heads of "
        f"{text.hidden_size // text.num_attention_heads}, {text.num_hidden_layers} layers; "
        f"GQA {text.num_key_value_heads} key/value heads; GTA {settings.model_dump()}"
    )
    params = {
        k: sum(p.numel() for p in m.model.language_model.parameters()) for k, m in models.items()
    }

    rows: list[tuple[str, str, str, str]] = []
    cache = {k: cache_bytes_per_token_per_layer(m, processor) for k, m in models.items()}
    kv_ratio = cache["gta"] / cache["gqa"]
    rows.append(
        (
            "text decoder parameters",
            f"{params['gqa']}",
            f"{params['gta']}",
            f"{params['gta'] / params['gqa']:.3f}",
        )
    )
    rows.append(
        (
            "KV cache bytes/token/layer",
            f"{cache['gqa']:.0f}",
            f"{cache['gta']:.0f}",
            f"{kv_ratio:.3f}",
        )
    )
    rows.append(
        ("  same, paper shape (GTA-1B)", "640 numbers", "192 numbers", f"{paper_shape_ratio():.3f}")
    )
    flops_ratio = float("nan")
    for context in CONTEXTS:
        f = {k: attention_flops_per_token(m, context)["total"] for k, m in models.items()}
        flops_ratio = f["gta"] / f["gqa"]
        rows.append(
            (
                f"attn FLOPs/token/layer @ {context}",
                f"{f['gqa']:,}",
                f"{f['gta']:,}",
                f"{flops_ratio:.3f}",
            )
        )

    torch.set_num_threads(1)
    speed_ratio = float("nan")
    for context in args.decode_context:
        runs: dict[str, list[float]] = {"gqa": [], "gta": []}
        for _ in range(args.repeats):
            for name, model in models.items():
                runs[name].append(
                    decode_tokens_per_s(model, context, args.new_tokens, len(tokenizer))
                )
        speed = {k: statistics.median(v) for k, v in runs.items()}
        speed_ratio = speed["gta"] / speed["gqa"]
        rows.append(
            (
                f"decode tokens/s @ {context} (CPU, 1 thread)",
                f"{speed['gqa']:.1f}",
                f"{speed['gta']:.1f}",
                f"{speed_ratio:.3f}",
            )
        )

    acc = {"gqa": float("nan"), "gta": float("nan")}
    if args.readers:
        results = oracle_aim_accuracy(readers, args.heldout, args.work)
        acc = {name: r["accuracy"] for name, r in results.items()}
        loss = {name: final_train_loss(Path(path)) for name, path in readers.items()}
        rows.append(
            (
                "train loss, mean of last 10% steps",
                f"{loss['gqa']:.3f}",
                f"{loss['gta']:.3f}",
                f"{loss['gta'] - loss['gqa']:+.3f} (diff)",
            )
        )
        rows.append(
            (
                f"held-out accuracy, oracle aim ({results['gqa']['n']} items)",
                f"{acc['gqa']:.3f}",
                f"{acc['gta']:.3f}",
                f"{acc['gta'] - acc['gqa']:+.3f} (diff)",
            )
        )

    widths = [
        max(len(r[i]) for r in rows + [("measure", "GQA", "GTA", "GTA/GQA")]) for i in range(4)
    ]
    header = ("measure", "GQA", "GTA", "GTA/GQA")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print(
        f"gta: kv_cache_ratio={kv_ratio:.3f} attn_flops_ratio={flops_ratio:.3f} "
        f"decode_speed_ratio={speed_ratio:.3f} acc_gta={acc['gta']:.3f} acc_gqa={acc['gqa']:.3f}"
    )


if __name__ == "__main__":
    main()
