"""Segment store benchmark: build throughput, index latency and recall, reopen against build.

Three measurements, side by side in one run on this machine:

1. Build: a synthetic video is indexed with the real ViT-B-32 architecture (random weights: no
   download; pretrained weights run at the same speed). Decode and embed rates are reported
   separately, then the time to reopen the finished store against the time it took to build.
2. Index: at 1e4, 1e5 and 1e6 stored 512-d unit vectors, single-query latency and recall@10 of
   the index `build_index` chooses, against exact search (`IndexFlatIP`) on the same vectors.
   Two kinds of data: `random` (independent random unit vectors, random queries: no structure at
   all, the worst case for any approximate index) and `video` (scenes of similar frames, as
   CLIP embeddings of a video are; queries near one frame, as a matching question is).
3. Threshold: exact search cost per stored vector, and the largest store that exact search
   answers within a 5 ms budget (a small share of one question's cost: embedding the question
   with ViT-B-32, reported as text_ms, and a VLM turn of a second or more). `DEFAULT_EXACT_MAX`
   is that number rounded; below it IVF could save at most a few milliseconds per question.

Run with `nice python benchmarks/segment_store.py` (add `--sizes 1e4,1e5` to skip 1e6, which
needs ~5 GB of memory and several minutes). Prints tables, then one `segment_store: ...` line.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from vmtr.models.embed import OpenClipEmbedder
from vmtr.tools.encode import write_video
from vmtr.tools.segments import DEFAULT_EXACT_MAX, SegmentStore, StoreSettings, build_index

DIM = 512
QUERIES = 200
EXACT_BUDGET_MS = 5.0


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def random_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    """Independent random unit vectors, made in blocks to bound temporary memory."""
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - start), DIM), dtype=np.float32)
        out[start : start + len(block)] = _unit_rows(block)
    return out


def video_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    """Scenes of 5-60 frames: a random direction per scene, a slow drift and a little noise."""
    out = np.empty((n, DIM), np.float32)
    start = 0
    while start < n:
        length = min(int(rng.integers(5, 61)), n - start)
        centre = rng.standard_normal(DIM, dtype=np.float32)
        centre /= np.linalg.norm(centre)
        drift = np.cumsum(rng.standard_normal((length, DIM), dtype=np.float32) * 0.02, axis=0)
        noise = rng.standard_normal((length, DIM), dtype=np.float32) * 0.02
        out[start : start + length] = _unit_rows(centre + drift + noise)
        start += length
    return out


def queries_for(kind: str, vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        return random_vectors(QUERIES, rng)
    picks = rng.choice(len(vectors), QUERIES, replace=False)
    noise = rng.standard_normal((QUERIES, DIM), dtype=np.float32) / np.sqrt(DIM)
    return _unit_rows(vectors[picks] + noise)


def single_query_ms(index: faiss.Index, queries: np.ndarray, count: int) -> float:
    """Median latency of one-query searches (the agent asks one question at a time)."""
    times = []
    for query in queries[:count]:
        t0 = time.perf_counter()
        index.search(query[None, :], 10)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]))


def bench_index(n: int, kind: str) -> list[dict[str, float | str]]:
    """Rows for the index "auto" chooses and, when that is exact search, for a forced IVF."""
    rng = np.random.default_rng(n + (1 if kind == "video" else 0))
    vectors = random_vectors(n, rng) if kind == "random" else video_vectors(n, rng)
    queries = queries_for(kind, vectors, rng)
    _, truth = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)

    flat = faiss.IndexFlatIP(DIM)
    flat.add(vectors)
    flat_ms = single_query_ms(flat, queries, 50 if n >= 1_000_000 else QUERIES)
    del flat
    gc.collect()

    rows: list[dict[str, float | str]] = []
    for choice in ("auto", "ivf"):
        t0 = time.perf_counter()
        index, info = build_index(vectors, choice)  # type: ignore[arg-type]
        build_s = time.perf_counter() - t0
        index_ms = single_query_ms(index, queries, QUERIES)
        _, found = index.search(queries, 10)
        rows.append(
            {
                "data": kind,
                "n": n,
                "choice": choice,
                "index": str(info["type"]),
                "nlist": info.get("nlist", "-"),
                "nprobe": info.get("nprobe", "-"),
                "build_s": build_s,
                "flat_ms": flat_ms,
                "index_ms": index_ms,
                "speedup": flat_ms / index_ms,
                "recall": recall_at_10(found, truth),
                "calib_recall": info.get("calibrated_recall", 1.0),
            }
        )
        del index
        gc.collect()
        if info["type"] == "ivf":
            break
    return rows


def bench_build(folder: Path, seconds: int) -> dict[str, float]:
    """Index a synthetic video with ViT-B-32 (random weights) and reopen it."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (180, 320, 3), dtype=np.uint8)
    frames = (np.roll(base, 4 * i, axis=1) for i in range(5 * seconds))  # 5 fps, panning
    video = write_video(folder / "bench.mp4", frames, fps=5)
    settings = StoreSettings(root=folder / "stores", embedder="ViT-B-32:none")
    embedder = OpenClipEmbedder("ViT-B-32:none", device="cpu").load()

    t0 = time.perf_counter()
    store = SegmentStore.build(video, embedder, settings)
    build_s = time.perf_counter() - t0
    stats = store.build_stats
    assert stats is not None

    reopen, load = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        SegmentStore.open(video, embedder, settings)  # probe the video, then load the files
        reopen.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        SegmentStore.load(store.folder, settings=settings)  # files only, checksums included
        load.append(time.perf_counter() - t0)
    text = []
    for i in range(10):
        t0 = time.perf_counter()
        embedder.embed_text([f"a person opening door number {i}"])
        text.append(time.perf_counter() - t0)
    return {
        "frames": float(len(store)),
        "build_s": build_s,
        "decode_fps": len(store) / stats.decode_seconds,
        "embed_fps": len(store) / stats.embed_seconds,
        "index_s": stats.index_seconds,
        "reopen_ms": 1e3 * min(reopen),
        "load_ms": 1e3 * min(load),
        "text_ms": 1e3 * statistics.median(text),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e4,1e5,1e6", help="Stored vector counts.")
    parser.add_argument("--data", default="random,video", help="random and/or video.")
    parser.add_argument("--video-seconds", type=int, default=60, help="Synthetic video length.")
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    kinds = args.data.split(",")
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, d={DIM}")

    with tempfile.TemporaryDirectory() as tmp:
        build = bench_build(Path(tmp), args.video_seconds)
    print("\nbuild (ViT-B-32 at 224 px on CPU, 320x180 H.264 video, 1 fps store)")
    for key, value in build.items():
        print(f"  {key:<11} {value:10.2f}")
    print(f"  build/reopen {build['build_s'] * 1e3 / build['reopen_ms']:9.0f}x")

    rows = []
    print(
        f"\n{'data':<7}{'n':>9} {'asked':<6}{'index':<6}{'nlist':>6}{'nprobe':>7}{'build_s':>9}"
        f"{'flat_ms':>9}{'index_ms':>9}{'speedup':>8}{'recall@10':>10}{'calib':>7}"
    )
    for n in sizes:
        for kind in kinds:
            for row in bench_index(n, kind):
                rows.append(row)
                print(
                    f"{row['data']:<7}{n:>9} {row['choice']:<6}{row['index']:<6}"
                    f"{row['nlist']!s:>6}{row['nprobe']!s:>7}{row['build_s']:>9.2f}"
                    f"{row['flat_ms']:>9.2f}{row['index_ms']:>9.3f}{row['speedup']:>8.1f}"
                    f"{row['recall']:>10.3f}{row['calib_recall']:>7.3f}",
                    flush=True,
                )

    largest = max(int(r["n"]) for r in rows)  # least per-call overhead
    per_vector_ms = statistics.median(
        float(r["flat_ms"]) / largest for r in rows if int(r["n"]) == largest
    )
    threshold = EXACT_BUDGET_MS / per_vector_ms
    print(
        f"\nexact search: {per_vector_ms * 1e6:.1f} ns per stored vector, so it answers within "
        f"{EXACT_BUDGET_MS:g} ms up to n = {threshold:,.0f} (exact_max default "
        f"{DEFAULT_EXACT_MAX:,}); embedding the question takes {build['text_ms']:.1f} ms"
    )
    pairs = {
        "decode_fps": f"{build['decode_fps']:.1f}",
        "embed_fps": f"{build['embed_fps']:.1f}",
        "build_s": f"{build['build_s']:.2f}",
        "reopen_ms": f"{build['reopen_ms']:.1f}",
        "load_ms": f"{build['load_ms']:.1f}",
        "build_over_reopen": f"{build['build_s'] * 1e3 / build['reopen_ms']:.0f}",
        "text_ms": f"{build['text_ms']:.1f}",
        "flat_ns_per_vector": f"{per_vector_ms * 1e6:.1f}",
        "measured_exact_max": f"{threshold:.0f}",
        "exact_max": str(DEFAULT_EXACT_MAX),
    }
    for row in rows:
        tag = f"{row['data']}_{int(row['n']):.0e}_{row['choice']}".replace("+0", "")
        pairs[f"{tag}_{row['index']}_ms"] = f"{row['index_ms']:.3f}"
        pairs[f"{tag}_{row['index']}_recall"] = f"{row['recall']:.3f}"
    print("segment_store: " + " ".join(f"{k}={v}" for k, v in pairs.items()))


if __name__ == "__main__":
    main()
