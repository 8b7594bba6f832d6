"""GTA against grouped-query attention in the tiny Qwen2.5-VL, side by side in one process.

Both models have the same width, heads, layers, vision tower and (for training) the same
non-attention initial weights; only the text decoder's attention differs (`vmtr.models.gta`).
Measured, as GTA / GQA ratios:

- KV-cache bytes per token per layer, read off the ``DynamicCache`` after a real prefill;
- attention FLOPs per generated token at several context lengths (counted from the layer shapes:
  projections + scores + value mixing);
- greedy decode tokens/s on the CPU with the cache (text-only prompt of ``--decode-context``
  tokens, runs interleaved, median of ``--repeats``);
- held-out accuracy on the synthetic benchmark after the same SFT budget (`recipes.tiny.curriculum`,
  identical config and seed for both), unless ``--no-train``.

A "paper shape" row puts the same formulas on GTA-1B's sizes (20 heads of 64, 5 maps, one key
head, 128-dim latent, against GQA with 5 key/value heads) for comparison with the paper's 30 %.

    python benchmarks/gta.py [--no-train] [--steps 100 --items 160 --eval-items 40] [--work DIR]

The last line is ``gta: kv_cache_ratio=… attn_flops_ratio=… decode_speed_ratio=… acc_gta=…
acc_gqa=…`` (``attn_flops_ratio`` at the longest context, ``decode_speed_ratio`` at the last
``--decode-context``; accuracies ``nan`` when not trained).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
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
)
from vmtr.models.tiny import build_processor, build_tokenizer, tiny_config
from vmtr.models.weights import load_pretrained

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `recipes`

from recipes.tiny.curriculum.config import CurriculumConfig  # noqa: E402
from recipes.tiny.curriculum.trainer import run_curriculum  # noqa: E402

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
# Training both with the tiny model's curriculum


def train_and_evaluate(name: str, data: Path, work: Path, args: argparse.Namespace):
    """One SFT run from the recipe's fresh tiny model, as it is (GQA) or with its attention
    switched to fresh GTA (``--attention gta``: same seed, so every other initial weight is
    shared); returns the recipe's report (held-out accuracy under ``eval``)."""
    out = work / f"sft-{name}"
    report_path = out / "report.json"
    if report_path.exists() and not args.retrain:
        return json.loads(report_path.read_text())
    config = CurriculumConfig(
        data=[data],
        out=out,
        model="tiny-init",
        attention="gta" if name == "gta" else "model",
        gta=json.loads(args.gta),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=min(args.warmup, args.steps),
        seed=args.seed,
        save_every=args.steps,
        eval_items=args.eval_items,
        single_turn_share=args.single_turn_share,
    )
    (out / "log.jsonl").unlink(missing_ok=True)  # the recipe appends; start this run's log afresh
    torch.set_num_threads(1)
    started = time.perf_counter()
    report = run_curriculum(config, log=lambda m: print(f"  [{name}] {m}", flush=True))
    final = load_pretrained(report["final"])
    trained_gta = isinstance(decoder_layers(final)[0].self_attn, GTAAttention)
    if trained_gta != (name == "gta"):
        raise RuntimeError(f"{name}: the recipe trained the wrong attention")
    report["seconds"] = round(time.perf_counter() - started, 1)
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    tail = losses[-max(1, len(losses) // 10) :]
    report["final_loss"] = sum(tail) / len(tail)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gta", default="{}", help="GTASettings as JSON (default: the defaults)")
    parser.add_argument("--decode-context", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-train", action="store_true", help="Skip the accuracy part.")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-gta"))
    parser.add_argument("--items", type=int, default=160, help="Synthetic items (train + eval).")
    parser.add_argument("--eval-items", type=int, default=40)
    parser.add_argument("--minutes", type=float, default=1.0, help="Synthetic video length.")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--single-turn-share", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain", action="store_true", help="Ignore finished runs in --work.")
    args = parser.parse_args()
    settings = GTASettings(**json.loads(args.gta))

    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    torch.manual_seed(0)
    gqa = Qwen2_5_VLForConditionalGeneration(tiny_config(tokenizer)).eval()
    torch.manual_seed(0)
    gta = apply_gta(Qwen2_5_VLForConditionalGeneration(tiny_config(tokenizer)), settings).eval()
    models = {"gqa": gqa, "gta": gta}
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
    if not args.no_train:
        from vmtr.eval.synthetic import SyntheticSettings, generate

        work = args.work
        data = work / "data"
        if not (data / "annotations.json").exists():
            generate(
                data, SyntheticSettings(n_items=args.items, seed=args.seed, minutes=args.minutes)
            )
        # Side by side in two processes: both runs see the same machine load.
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {
                name: pool.submit(train_and_evaluate, name, data, work, args)
                for name in ("gqa", "gta")
            }
            reports = {name: future.result() for name, future in futures.items()}
        for name, report in reports.items():
            acc[name] = report["eval"]["accuracy"]
        rows.append(
            (
                f"SFT {args.steps} steps x {args.batch_size}: seconds",
                f"{reports['gqa']['seconds']}",
                f"{reports['gta']['seconds']}",
                f"{reports['gta']['seconds'] / reports['gqa']['seconds']:.3f}",
            )
        )
        loss = {k: r["final_loss"] for k, r in reports.items()}
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
                f"held-out accuracy ({args.eval_items} items)",
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
