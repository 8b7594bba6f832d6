"""Chunked prefill + bi-level KV (vmtr.models.kv_sparse) against dense prefill, side by side.

    python benchmarks/kv_sparse.py [--frames 128 256 512 1024] [--hidden 128 --layers 4]
                                   [--frame-px 224] [--frames-per-label 4]
                                   [--acc-n 60 --model tiny] [--plot out.png]

1. Scaling, on a random-weight Qwen2.5-VL whose text decoder dominates the compute (the vision
   tower is kept small, as the 7B model's is next to its LLM): for each frame count, the first
   turn of the long-context mode (every frame as its own image, one ``frame_idx:s-e`` label per
   ``--frames-per-label`` frames, then the question) is prefilled densely (one forward, as
   `QwenVideoLM` does) and sparsely (chunk by chunk, window of earlier chunks, pooled KV, dense
   KV to disk, the model's attention picking ``top_k`` dense chunks, then the question over the
   bi-level cache). Each measurement runs in its own process: wall time of the model calls and
   peak resident memory above the level just before them (VmHWM reset through
   /proc/self/clear_refs). Dense and sparse alternate.
2. Decoding KV held: bytes of the cache the reply is decoded from, dense vs bi-level.
3. Agreement: next-token distributions at every question token, dense vs sparse: top-1 match and
   KL(dense || sparse). With random weights these distributions are flat, so this is a
   numerical check more than a quality one; part 4 is the quality check.
4. Accuracy on a held-out synthetic benchmark with the trained tiny model (``--model tiny``),
   dense vs kv-sparse: by default on the Video-MTR protocol the model was trained on (turn 1's 16
   frames prefilled in chunks of 4 with a window of 1 and held as pooled KV, the model's own
   attention choosing 1 dense chunk; retrieved frames come dense), or with ``--acc-protocol
   long`` in the long-context mode. Reported as not measured while the bundled model is untrained.

The last line is ``kv_sparse: key=value ...`` at the largest frame count (time and memory ratios
dense / sparse, the KV ratio sparse / dense).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vmtr.models.cache_names import cache_kwargs, output_cache

ALL_KINDS = "colour,shape,order,count"
"""The generator's default question kinds (`vmtr synth --kinds`)."""

QUESTION = "Which colour was the shape shown while the border was visible?"
OPTIONS = ["A. red", "B. blue", "C. green", "D. yellow"]


# -- one measurement (runs in its own process) ------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Return freed heap to the system, then reset VmHWM so it measures from here on."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _first_turn(processor: Any, n: int, frame_px: int, frames_per_label: int) -> dict[str, Any]:
    from PIL import Image

    from vmtr import protocol
    from vmtr.agent.long_context import first_message
    from vmtr.config import ProtocolSettings

    settings = ProtocolSettings(pool_size=n, first_turn_frames=n)
    pool = [float(i) + 0.5 for i in range(n)]
    messages = [
        protocol.system_message(settings),
        first_message(pool, QUESTION, OPTIONS, settings, frames_per_label=frames_per_label),
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (frame_px, frame_px, 3), dtype=np.uint8))
        for _ in range(n)
    ]
    return dict(processor(text=[text], images=images, return_tensors="pt"))


def _cache_bytes(cache: Any) -> int:
    return int(sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers))


def _prefill(model: Any, encoded: dict[str, Any], mode: str, sparse: Any, folder: str) -> Any:
    """Run one first-turn prefill; returns (cache, logits over the question tokens, extra)."""
    from vmtr.models.kv_sparse import (
        DenseStore,
        attention_relevance,
        bias_mask,
        chunked_prefill,
        plan_chunks,
        top_chunks,
    )

    positions, _ = model.model.get_rope_index(
        encoded["input_ids"],
        mm_token_type_ids=encoded["mm_token_type_ids"],
        image_grid_thw=encoded["image_grid_thw"],
    )
    merge = model.config.vision_config.spatial_merge_size
    layout = plan_chunks(
        encoded["mm_token_type_ids"][0],
        encoded["image_grid_thw"],
        merge,
        sparse.frames_per_chunk,
        encoded["input_ids"][0],
        (model.config.vision_start_token_id, model.config.vision_end_token_id),
    )
    end = layout.end
    tail_len = int(encoded["input_ids"].shape[1]) - end
    with torch.inference_mode():
        if mode == "dense":
            out = model(**encoded, position_ids=positions, use_cache=True, logits_to_keep=tail_len)
            cache = output_cache(out)
            return cache, out.logits[0], {"kv_bytes": _cache_bytes(cache)}
        store = DenseStore("disk", folder)
        video = chunked_prefill(model, encoded, positions, sparse, store=store, layout=layout)
        tail = {
            "input_ids": encoded["input_ids"][:, end:],
            "mm_token_type_ids": encoded["mm_token_type_ids"][:, end:],
            "position_ids": positions[:, :, end:],
        }
        scores = attention_relevance(model, video, tail, proportional=sparse.proportional)
        dense = top_chunks(scores, sparse.top_k)
        cache = video.build_cache(dense, model.config)
        if sparse.proportional:  # pooled keys count for the tokens they average
            mask = bias_mask(
                video.key_bias(dense), cache.get_seq_length(), tail_len, torch.float32, "cpu"
            )
            tail["attention_mask"] = {"full_attention": mask}
        out = model(**tail, **cache_kwargs(cache), use_cache=True, logits_to_keep=tail_len)
        extra = {
            "dense_chunks": dense,
            "chunks": len(video.chunks),
            "kv_bytes": _cache_bytes(cache),
        }
        return cache, out.logits[0], extra


def worker(args: argparse.Namespace) -> None:
    """One prefill in this process; writes a JSON line and the question logits."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from vmtr.models.kv_sparse import SparseSettings

    torch.set_num_threads(args.threads)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.model_dir, dtype=torch.float32)
    model.eval()
    processor = AutoProcessor.from_pretrained(args.model_dir)
    sparse = SparseSettings(**json.loads(args.sparse), offload="disk")
    with tempfile.TemporaryDirectory(prefix="vmtr-kvb-") as folder:
        warm = _first_turn(processor, 2, args.frame_px, args.frames_per_label)
        _prefill(model, warm, args.mode, sparse, folder)
        encoded = _first_turn(processor, args.n, args.frame_px, args.frames_per_label)
        gc.collect()
        exact = _reset_peak()
        before = _status_kb("VmRSS") if exact else _status_kb("VmHWM")
        started = time.perf_counter()
        cache, logits, extra = _prefill(model, encoded, args.mode, sparse, folder)
        seconds = time.perf_counter() - started
        peak = _status_kb("VmHWM") - before
        del cache
        for _ in range(args.repeats - 1):  # the fastest of a few runs: the machine is shared
            if seconds > args.repeat_limit:
                break
            started = time.perf_counter()
            cache, _, _ = _prefill(model, encoded, args.mode, sparse, folder)
            seconds = min(seconds, time.perf_counter() - started)
            del cache
    kv = extra.pop("kv_bytes")
    torch.save(logits.float(), args.out + ".pt")
    record = {
        "mode": args.mode,
        "frames": args.n,
        "tokens": int(encoded["input_ids"].shape[1]),
        "seconds": seconds,
        "peak_mb": peak / 1024,
        "peak_exact": exact,
        "kv_bytes": int(kv),
        **extra,
    }
    Path(args.out + ".json").write_text(json.dumps(record))


# -- the parent -------------------------------------------------------------------------------


def build_random_model(args: argparse.Namespace, folder: Path) -> float:
    """Save a random-weight Qwen2.5-VL and its processor; returns millions of parameters."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vmtr.models.tiny import build_processor, build_tokenizer, tiny_config

    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, max_pixels=args.frame_px * args.frame_px)
    torch.manual_seed(0)
    config = tiny_config(
        tokenizer,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        vision_depth=2,
        vision_hidden=64,
    )
    config.text_config.max_position_embeddings = 65536
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.save_pretrained(folder)
    processor.tokenizer.model_max_length = 1 << 20  # long prompts are the point here
    processor.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters()) / 1e6


def measure(args: argparse.Namespace, folder: Path, mode: str, n: int) -> dict[str, Any]:
    out = str(folder / f"{mode}-{n}")
    command = [
        sys.executable,
        __file__,
        "--worker",
        mode,
        "--n",
        str(n),
        "--model-dir",
        str(folder),
        "--out",
        out,
        "--frame-px",
        str(args.frame_px),
        "--threads",
        str(args.threads),
        "--sparse",
        args.sparse,
        "--repeats",
        str(args.repeats),
        "--repeat-limit",
        str(args.repeat_limit),
        "--frames-per-label",
        str(args.frames_per_label),
    ]
    # A fixed mmap threshold makes glibc hand big freed blocks back at once, so peak RSS tracks
    # live tensors in both modes instead of the allocator's fragmentation.
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MALLOC_MMAP_THRESHOLD_": "65536"}
    subprocess.run(command, check=True, env=env)
    record = json.loads(Path(out + ".json").read_text())
    record["logits"] = torch.load(out + ".pt")
    return record


def agreement(dense: torch.Tensor, sparse: torch.Tensor) -> tuple[float, float]:
    """Top-1 match rate and mean KL(dense || sparse) over positions."""
    top1 = (dense.argmax(-1) == sparse.argmax(-1)).float().mean().item()
    logp = torch.log_softmax(dense, -1)
    logq = torch.log_softmax(sparse, -1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean().item()
    return top1, kl


def accuracy(args: argparse.Namespace) -> tuple[float | None, float | None, str]:
    """Synthetic-benchmark accuracy with the trained tiny model, dense vs kv-sparse encoding.

    ``--acc-protocol default``: the Video-MTR agent as the model was trained on it (16 frames,
    retrieves of 8 new frames); kv-sparse prefills turn 1 chunk by chunk and holds it as bi-level
    KV, retrieved frames come dense. ``long``: the long-context mode with ``--acc-frames``.
    """
    from vmtr.agent.ask import ask
    from vmtr.agent.long_context import ask_long
    from vmtr.config import ModelSettings
    from vmtr.eval.datasets import load_video_mtr_json
    from vmtr.eval.synthetic import SyntheticSettings, generate
    from vmtr.models.kv_sparse import SparseSettings
    from vmtr.models.qwen import QwenVideoLM
    from vmtr.models.sparse_lm import SparseVideoLM
    from vmtr.models.tiny import tiny_info

    if args.acc_n <= 0:
        return None, None, "not measured (--acc-n 0)"
    if args.model == "tiny" and not tiny_info().get("trained"):
        return None, None, "not measured: the bundled tiny model is not trained yet"
    torch.set_num_threads(args.threads)
    # item i depends only on (seed, i), so a larger set of the same seed serves a smaller run
    kinds = tuple(args.acc_kinds.split(","))
    tag = "" if args.acc_kinds == ALL_KINDS else "-" + args.acc_kinds.replace(",", "+")
    sets = sorted(Path(args.data).glob(f"seed{args.acc_seed}{tag}-n*/annotations.json"))
    found = [p for p in sets if int(p.parent.name.rsplit("-n", 1)[1]) >= args.acc_n]
    if args.acc_data:
        path = Path(args.acc_data) / "annotations.json"
    elif found:
        path = found[0]
    else:
        data = Path(args.data) / f"seed{args.acc_seed}{tag}-n{args.acc_n}"
        path = generate(
            data, SyntheticSettings(n_items=args.acc_n, seed=args.acc_seed, kinds=kinds)
        )
    items = load_video_mtr_json(path)[: args.acc_n]
    lm = QwenVideoLM.load(ModelSettings(model=args.model, device="cpu", dtype="float32"))
    sparse = SparseSettings(**json.loads(args.acc_sparse))
    models = {"dense": lm, "sparse": SparseVideoLM(lm, sparse)}
    correct = {"dense": 0, "sparse": 0}
    same = 0
    for k, item in enumerate(items):
        answers = {}
        for mode in ("dense", "sparse"):
            common = {"temperature": 0.0, "max_new_tokens": args.max_new_tokens}
            if args.acc_protocol == "long":
                result = ask_long(
                    item.video,
                    item.question,
                    item.options,
                    frames=args.acc_frames,
                    frames_per_label=args.frames_per_label,
                    model=lm,
                    sparse=sparse,
                    dense_baseline=mode == "dense",
                    **common,
                )
            elif args.acc_protocol == "single":
                # one turn of the protocol with every frame: what a long-input reader answers from
                result = ask(
                    item.video,
                    item.question,
                    item.options,
                    model=models[mode],
                    max_turns=1,
                    pool_size=args.acc_frames,
                    first_turn_frames=args.acc_frames,
                    **common,
                )
            else:
                result = ask(item.video, item.question, item.options, model=models[mode], **common)
            answers[mode] = result.answer
            correct[mode] += int(result.answer == item.answer)
        same += int(answers["dense"] == answers["sparse"])
        print(
            f"  item {k + 1}/{len(items)}: truth {item.answer} dense {answers['dense']} "
            f"sparse {answers['sparse']}",
            file=sys.stderr,
        )
    n = len(items)
    where = {
        "long": f"long-context mode, {args.acc_frames} frames, {args.frames_per_label} a label",
        "single": f"one protocol turn of {args.acc_frames} frames",
        "default": "default protocol (16 + 8 + 8 frames)",
    }[args.acc_protocol]
    note = f"{n} items, {where}, sparse {args.acc_sparse}, same answer {same}/{n}"
    return correct["dense"] / n, correct["sparse"] / n, note


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """Prefill time and peak memory against frames, dense vs sparse, on log-log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    frames = [r["frames"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in ((axes[0], "s", "prefill time (s)"), (axes[1], "mb", "peak memory (MB)")):
        ax.loglog(frames, [r[f"dense_{key}"] for r in rows], "o-", label="dense")
        ax.loglog(frames, [r[f"sparse_{key}"] for r in rows], "s-", label="chunked + bi-level")
        ax.set_xlabel("frames")
        ax.set_ylabel(label)
        ax.set_xticks(frames, [str(f) for f in frames])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}", file=sys.stderr)


def main() -> None:
    from vmtr.agent.long_context import FRAMES_PER_LABEL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--frame-px", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="Timed runs per measurement (min).")
    parser.add_argument(
        "--repeat-limit", type=float, default=90.0, help="No repeat after a run this long (s)."
    )
    parser.add_argument(
        "--sparse",
        default='{"frames_per_chunk": 4, "window": 3, "pool_factor": 4, "top_k": 2}',
        help="SparseSettings fields as JSON.",
    )
    parser.add_argument(
        "--frames-per-label",
        type=int,
        default=FRAMES_PER_LABEL,
        help="Long-context mode: consecutive frames sharing one frame_idx:s-e label "
        "(1 = a label per frame).",
    )
    parser.add_argument("--acc-n", type=int, default=60)
    parser.add_argument(
        "--acc-protocol",
        choices=["default", "long", "single"],
        default="default",
        help="default: the multi-turn agent; long: the long-context mode; single: one protocol "
        "turn showing --acc-frames frames (the pool itself).",
    )
    parser.add_argument(
        "--acc-frames", type=int, default=32, help="Frames in the long and single modes."
    )
    parser.add_argument(
        "--acc-kinds", default=ALL_KINDS, help="Question kinds of the generated items."
    )
    parser.add_argument(
        "--acc-data", help="A `vmtr synth` folder to ask instead of generating items."
    )
    parser.add_argument(
        "--acc-sparse",
        default='{"frames_per_chunk": 4, "window": 1, "pool_factor": 4, '
        '"relevance": "attention", "top_k": 1}',
        help="SparseSettings for the accuracy runs (16 frames: 4 chunks, 1 dense).",
    )
    parser.add_argument("--acc-seed", type=int, default=5000)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "vmtr-kv-sparse"))
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument(
        "--rows",
        help="JSON file for the scaling rows: written after scaling, read with --skip-scaling.",
    )
    parser.add_argument("--plot", help="Write a PNG of time and peak memory against frames.")
    # worker-only arguments
    parser.add_argument("--worker", choices=["dense", "sparse"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.mode = args.worker
        worker(args)
        return

    rows: list[dict[str, Any]] = []
    if args.skip_scaling and args.rows and Path(args.rows).exists():
        rows = json.loads(Path(args.rows).read_text())
    if not args.skip_scaling:
        with tempfile.TemporaryDirectory(prefix="vmtr-kvb-model-") as tmp:
            folder = Path(tmp)
            params = build_random_model(args, folder)
            print(
                f"model: random Qwen2.5-VL, {params:.1f} M params (hidden {args.hidden}, "
                f"{args.layers} layers), frames {args.frame_px}px, "
                f"{args.frames_per_label} frame(s) a label, sparse {args.sparse}, "
                f"{args.threads} thread(s)",
                file=sys.stderr,
            )
            for i, n in enumerate(args.frames):
                order = ("dense", "sparse") if i % 2 == 0 else ("sparse", "dense")
                got = {mode: measure(args, folder, mode, n) for mode in order}
                d, s = got["dense"], got["sparse"]
                top1, kl = agreement(d["logits"], s["logits"])
                rows.append(
                    {
                        "frames": n,
                        "tokens": d["tokens"],
                        "dense_s": d["seconds"],
                        "sparse_s": s["seconds"],
                        "dense_mb": d["peak_mb"],
                        "sparse_mb": s["peak_mb"],
                        "dense_kv": d["kv_bytes"],
                        "sparse_kv": s["kv_bytes"],
                        "top1": top1,
                        "kl": kl,
                        "dense_chunks": s.get("dense_chunks"),
                        "chunks": s.get("chunks"),
                    }
                )
                print(f"  {n} frames: {json.dumps(rows[-1])}", file=sys.stderr)
        if args.rows:
            Path(args.rows).write_text(json.dumps(rows))
    if rows:
        print(
            "| frames | tokens | prefill dense (s) | prefill sparse (s) | time ratio | "
            "peak dense (MB) | peak sparse (MB) | mem ratio | decode KV dense (MB) | "
            "decode KV sparse (MB) | KV ratio | top-1 agree | KL |"
        )
        print("|" + "---|" * 13)
        for r in rows:
            print(
                f"| {r['frames']} | {r['tokens']} | {r['dense_s']:.2f} | {r['sparse_s']:.2f} | "
                f"{r['dense_s'] / r['sparse_s']:.2f}x | {r['dense_mb']:.0f} | {r['sparse_mb']:.0f} | "
                f"{r['dense_mb'] / max(r['sparse_mb'], 1e-6):.2f}x | {r['dense_kv'] / 2**20:.1f} | "
                f"{r['sparse_kv'] / 2**20:.1f} | {r['sparse_kv'] / r['dense_kv']:.3f} | "
                f"{r['top1']:.3f} | {r['kl']:.2e} |"
            )
    if rows and args.plot:
        plot(rows, args.plot)
    acc_dense, acc_sparse, note = accuracy(args)
    print(f"accuracy (trained tiny model): {note}")
    if acc_dense is not None:
        print(
            f"| encoder | accuracy |\n|---|---|\n| dense | {acc_dense:.3f} |\n| kv-sparse | {acc_sparse:.3f} |"
        )
    fields = []
    if rows:
        r = rows[-1]
        fields += [
            f"prefill_time_ratio={r['dense_s'] / r['sparse_s']:.2f}",
            f"peak_mem_ratio={r['dense_mb'] / max(r['sparse_mb'], 1e-6):.2f}",
            f"decode_kv_ratio={r['sparse_kv'] / r['dense_kv']:.3f}",
            f"top1_agree={r['top1']:.3f}",
        ]
    fields += [
        f"acc_dense={'n/a' if acc_dense is None else f'{acc_dense:.3f}'}",
        f"acc_sparse={'n/a' if acc_sparse is None else f'{acc_sparse:.3f}'}",
    ]
    print("kv_sparse: " + " ".join(fields))


if __name__ == "__main__":
    main()
