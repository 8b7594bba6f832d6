"""SegmentStore: a video's frames as open_clip embeddings in a FAISS index, kept on disk.

The store backs CLIP-guided segment selection (`vmtr.tools.guided`) and `vmtr search`. It samples
the video at its own rate (1 fps by default, independent of the 64-frame pool), embeds every
sampled frame, and keeps three files in a folder keyed by the video's content fingerprint, the
embedder id and the rate:

- `vectors.npy`  — float32 [n, d], unit rows (loaded with `allow_pickle=False`);
- `index.faiss`  — the search index (`faiss.write_index` format, no pickle);
- `meta.json`    — format version, video fingerprint, embedder id, rate, timestamps, index type;
- `complete.json`— written last: sizes and sha256 of the three files above.

Building happens in a sibling `.partial` folder, one chunk of frames at a time, each chunk saved
as its own `.npy` through a temp file and `os.replace`; a killed build resumes from its saved
chunks. Only when every file and finally the marker are written is the folder renamed into
place, so a store either opens complete or not at all. A store whose files fail their checksums,
or whose metadata names another video, embedder, rate or format, is rebuilt with a warning.

Index type by size: exact inner product (`IndexFlatIP`) up to `exact_max` vectors (25,000, i.e.
about 7 hours of video at 1 fps; see `DEFAULT_EXACT_MAX` for the measurement); past it an IVF
index whose `nprobe` is calibrated at build time to reach a recall@10 target against exact
search, or exact search again when no `nprobe` under a quarter of the lists gets there (data
without cluster structure). HNSW was not chosen: it built ~15x slower than IVF here and has no
FAISS GPU version. The index file uses `faiss.serialize_index`, the bytes `faiss.write_index`
writes, read back with `deserialize_index` after the checksum. With GPUs visible to faiss the
index is moved to GPU after loading.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from vmtr.models.embed import DEFAULT_EMBEDDER, Embedder, load_embedder
from vmtr.tools.video import VideoInfo, decode_at, probe, sample_timestamps

FORMAT_VERSION = 1
"""Bumped when the on-disk layout changes; an older store is rebuilt."""

DEFAULT_EXACT_MAX = 25_000
"""Largest store searched exactly (`IndexFlatIP`). Measured by `benchmarks/segment_store.py` on
the 2-core dev machine: exact search costs ~200 ns per stored 512-d vector (20 ms at 1e5, 200 ms
at 1e6), so 25,000 is the largest store it answers within 5 ms, well under the time to embed the
question (tens of ms on CPU) and a VLM turn (seconds). Below that IVF saves under 5 ms; past it a
calibrated IVF answered video-like data 300x faster at 1e5 with recall@10 0.965."""

_META, _VECTORS, _INDEX, _MARKER, _PLAN = (
    "meta.json",
    "vectors.npy",
    "index.faiss",
    "complete.json",
    "plan.json",
)

ProgressCallback = Callable[[int, int], None]
"""Called as `progress(frames_done, frames_total)`: once at the start, then after each chunk."""


class StoreSettings(BaseModel):
    """Where and how a segment store is built (the CLI maps `--embedder` and `--fps` here)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedder: str = Field(
        DEFAULT_EMBEDDER,
        description="open_clip spec MODEL[:TAG]: a pretrained tag, a checkpoint path, or none.",
    )
    fps: float = Field(1.0, gt=0, le=120, description="Store sampling rate (frames/s).")
    root: Path | None = Field(None, description="Store folder; None means <cache_dir>/segments.")
    device: str = Field("auto", description="Embedder device: auto, cpu, cuda, cuda:1, ...")
    batch_size: int = Field(32, ge=1, description="Frames per embedder batch.")
    chunk_frames: int = Field(128, ge=1, description="Frames per resumable build chunk.")
    decode_max_pixels: int = Field(
        320 * 320, gt=0, description="Decode frames at most this big (CLIP sees 224 px anyway)."
    )
    index: Literal["auto", "flat", "ivf"] = Field("auto", description="Index type; auto by size.")
    exact_max: int = Field(DEFAULT_EXACT_MAX, ge=1, description="Largest exactly searched store.")
    target_recall: float = Field(0.95, gt=0, le=1, description="IVF recall@10 to calibrate for.")
    use_gpu: bool = Field(True, description="Move the index to GPU when faiss sees one.")
    verify: bool = Field(True, description="Check file checksums when opening a store.")


class StoreError(Exception):
    """A store that cannot be opened; the message names the folder and the reason."""


class StoreMissingError(StoreError):
    """No complete store exists yet (never built, or its build was interrupted)."""


class StoreDamagedError(StoreError):
    """A store exists but is corrupt, truncated, or built for another video/embedder/format."""


@dataclass(frozen=True)
class Hit:
    """One search result: the span of video a stored frame stands for, and its similarity."""

    start: float
    end: float
    score: float


@dataclass
class BuildStats:
    """Where a build spent its time (for `vmtr index` and the benchmark)."""

    frames: int = 0
    resumed_frames: int = 0
    decode_seconds: float = 0.0
    embed_seconds: float = 0.0
    index_seconds: float = 0.0
    total_seconds: float = 0.0


@dataclass(frozen=True)
class StoreKey:
    """What a store was built from; every field must match for a store to be reused."""

    fingerprint: str
    embedder_id: str
    fps: float

    def differs(self, wanted: StoreKey) -> str:
        """The fields that differ, as `name X (wanted Y)` phrases, for error messages."""
        return ", ".join(
            f"{name} {getattr(self, name)!r} (wanted {getattr(wanted, name)!r})"
            for name in ("fingerprint", "embedder_id", "fps")
            if getattr(self, name) != getattr(wanted, name)
        )

    def folder_name(self) -> str:
        """`<fingerprint>/<readable embedder>-<hash>-<fps>fps`: unique and safe as a path."""
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", self.embedder_id)[:60].strip("_")
        digest = hashlib.blake2b(self.embedder_id.encode(), digest_size=4).hexdigest()
        return f"{self.fingerprint}/{readable}-{digest}-{self.fps:g}fps"


# ---------------------------------------------------------------------------------------------
# Files


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform lets a directory be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, flush it to disk, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` so two processes never build the same store at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; builds still write atomically
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# Index


IVF_MAX_LISTS = 1024
"""Cap on IVF lists: keeps training and adding at 1e6 vectors to about a minute on one core."""


def _ivf_lists(count: int) -> int:
    """About 4 sqrt(n) lists (FAISS's rule of thumb), at least 39 points per list, capped."""
    return max(1, min(int(4 * math.sqrt(count)), count // 39, IVF_MAX_LISTS))


def _recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(a[a >= 0]) & set(b)) for a, b in zip(found, truth, strict=True))
    return hits / truth.size


def _flat(vectors: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def build_index(
    vectors: np.ndarray,
    kind: Literal["auto", "flat", "ivf"] = "auto",
    *,
    exact_max: int = DEFAULT_EXACT_MAX,
    target_recall: float = 0.95,
    seed: int = 0,
) -> tuple[faiss.Index, dict[str, Any]]:
    """An inner-product index over unit `vectors`, and what was chosen (kept in `meta.json`).

    "auto" is exact up to `exact_max` vectors and IVF past it. An IVF index's `nprobe` is the
    smallest power of two whose recall@10 against exact search reaches `target_recall` on 256
    calibration queries (stored vectors with noise, roughly what a matching question looks
    like). When that would scan more than a quarter of the lists (data with no cluster
    structure), IVF cannot beat exact search and "auto" falls back to it; a forced "ivf" keeps
    the calibrated `nprobe`, up to every list.
    """
    count, dim = vectors.shape
    auto = kind == "auto"
    if auto:
        kind = "flat" if count <= exact_max else "ivf"
    lists = _ivf_lists(count)
    if kind == "flat" or count < 2 or (auto and lists < 4):
        return _flat(vectors), {"type": "flat"}

    rng = np.random.default_rng(seed)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    sample = vectors[np.sort(rng.choice(count, min(count, 40 * lists), replace=False))]
    index.train(sample)
    index.add(vectors)

    picks = rng.choice(count, min(count, 256), replace=False)
    noise = rng.standard_normal((len(picks), dim)).astype(np.float32)
    queries = vectors[picks] + noise / math.sqrt(dim)  # noise of norm ~1: about 45 degrees off
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    k = min(10, count)
    _, truth = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)  # no copy
    nprobe, recall = 1, 0.0
    while True:
        index.nprobe = nprobe
        _, found = index.search(queries, k)
        recall = _recall_at(found, truth)
        if recall >= target_recall or nprobe >= lists or (auto and 4 * nprobe > lists):
            break
        nprobe = min(lists, nprobe * 2)
    if auto and (recall < target_recall or 4 * nprobe > lists):
        del index
        return _flat(vectors), {
            "type": "flat",
            "ivf_rejected": {"nprobe": nprobe, "recall": recall},
        }
    return index, {"type": "ivf", "nlist": lists, "nprobe": nprobe, "calibrated_recall": recall}


def _index_on_gpu(index: faiss.Index) -> faiss.Index:
    """The same index on GPU 0 when faiss was built with GPU support and sees a GPU."""
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return index
    try:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    except RuntimeError as err:  # e.g. out of GPU memory: CPU search still works
        warnings.warn(f"faiss GPU index unavailable, searching on CPU ({err})", stacklevel=3)
        return index


# ---------------------------------------------------------------------------------------------
# The store


def store_root(settings: StoreSettings) -> Path:
    """The folder holding all stores: `settings.root`, or `segments/` under vmtr's cache folder."""
    if settings.root is not None:
        return Path(settings.root).expanduser()
    from vmtr.config import cache_dir

    return cache_dir() / "segments"


def _spans(timestamps: np.ndarray, duration: float) -> tuple[np.ndarray, np.ndarray]:
    """Each stored frame stands for the video from the midpoint before it to the one after it."""
    mids = (timestamps[1:] + timestamps[:-1]) / 2
    starts = np.concatenate([[0.0], mids])
    ends = np.concatenate([mids, [max(duration, float(timestamps[-1]))]])
    return starts, ends


@dataclass
class SegmentStore:
    """An opened store: frame timestamps, their embeddings, and a search index.

    Make one with `SegmentStore.build` (reuses an intact store, else builds or resumes) or
    `SegmentStore.open` (never builds). Searches embed the text with the store's embedder, which
    loads its model only then.
    """

    folder: Path
    key: StoreKey
    duration: float
    timestamps: np.ndarray
    vectors: np.ndarray
    index: Any
    index_info: dict[str, Any]
    embedder: Embedder | None = None
    build_stats: BuildStats | None = None
    built_now: bool = False
    _text_cache: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict, repr=False)

    def __len__(self) -> int:
        return len(self.timestamps)

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def folder_for(cls, info: VideoInfo, embedder_id: str, settings: StoreSettings) -> Path:
        """Where the store for this video, embedder and rate lives."""
        key = StoreKey(info.fingerprint, embedder_id, settings.fps)
        return store_root(settings) / key.folder_name()

    @classmethod
    def open(
        cls,
        video: str | os.PathLike[str],
        embedder: str | Embedder | None = None,
        settings: StoreSettings | None = None,
    ) -> SegmentStore:
        """Open the complete store for `video`; `StoreMissingError`/`StoreDamagedError` if none.

        `embedder` defaults to `settings.embedder`; a spec string costs nothing until a search.
        """
        settings = settings or StoreSettings()
        model = _embedder(embedder, settings)
        info = probe(video)
        key = StoreKey(info.fingerprint, model.embedder_id, settings.fps)
        folder = cls.folder_for(info, model.embedder_id, settings)
        store = cls.load(folder, expect=key, settings=settings)
        store.embedder = model
        return store

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike[str],
        *,
        expect: StoreKey | None = None,
        settings: StoreSettings | None = None,
    ) -> SegmentStore:
        """Open a store folder, checking its files (and, with `expect`, what it was built from)."""
        settings = settings or StoreSettings()
        folder = Path(folder)
        marker_path = folder / _MARKER
        if not marker_path.is_file():
            if folder.is_dir() and any(folder.iterdir()):
                raise StoreDamagedError(f"{folder}: store has no completion marker")
            raise StoreMissingError(f"{folder}: no segment store (run `vmtr index` first)")
        try:
            marker = json.loads(marker_path.read_bytes())
            if marker.get("format_version") != FORMAT_VERSION:
                raise StoreDamagedError(
                    f"{folder}: store format {marker.get('format_version')!r}, "
                    f"this vmtr reads {FORMAT_VERSION}"
                )
            blobs = {name: (folder / name).read_bytes() for name in (_META, _VECTORS, _INDEX)}
            for name, data in blobs.items():
                expected = marker["files"][name]
                if len(data) != expected["size"]:
                    raise StoreDamagedError(f"{folder}: {name} has the wrong size (truncated?)")
                if settings.verify and _sha256(data) != expected["sha256"]:
                    raise StoreDamagedError(f"{folder}: {name} fails its checksum")
            meta = json.loads(blobs[_META])
            key = StoreKey(meta["fingerprint"], meta["embedder_id"], float(meta["fps"]))
            if expect is not None and key != expect:
                raise StoreDamagedError(f"{folder}: store was built for {key.differs(expect)}")
            timestamps = np.asarray(meta["timestamps"], dtype=np.float64)
            vectors = _load_npy(blobs[_VECTORS])
            index = faiss.deserialize_index(np.frombuffer(blobs[_INDEX], dtype=np.uint8))
        except StoreError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as err:
            raise StoreDamagedError(f"{folder}: unreadable store ({err})") from None
        count = len(timestamps)
        if (
            count == 0
            or vectors.dtype != np.float32
            or vectors.shape != (count, meta.get("dim"))
            or index.ntotal != count
            or index.d != vectors.shape[1]
        ):
            raise StoreDamagedError(f"{folder}: store files disagree on their sizes")
        info = dict(meta.get("index", {"type": "flat"}))
        if info.get("type") == "ivf":
            faiss.extract_index_ivf(index).nprobe = int(info["nprobe"])
        if settings.use_gpu:
            index = _index_on_gpu(index)
        return cls(
            folder=folder,
            key=key,
            duration=float(meta["duration"]),
            timestamps=timestamps,
            vectors=vectors,
            index=index,
            index_info=info,
            build_stats=BuildStats(**meta["build"]) if "build" in meta else None,
        )

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        video: str | os.PathLike[str],
        embedder: str | Embedder | None = None,
        settings: StoreSettings | None = None,
        *,
        progress: ProgressCallback | None = None,
    ) -> SegmentStore:
        """The store for `video`: reopened when intact, else built (resuming an interrupted build).

        A damaged or mismatched store is rebuilt with a `UserWarning`. Raises `VideoError` for
        an unusable video and `EmbedderError` when the embedder cannot be loaded.
        """
        settings = settings or StoreSettings()
        model = _embedder(embedder, settings)
        info = probe(video)
        key = StoreKey(info.fingerprint, model.embedder_id, settings.fps)
        folder = cls.folder_for(info, model.embedder_id, settings)
        with _locked(folder.with_name(folder.name + ".lock")):
            try:
                store = cls.load(folder, expect=key, settings=settings)
            except StoreMissingError:
                pass
            except StoreDamagedError as err:
                warnings.warn(f"rebuilding segment store: {err}", stacklevel=2)
            else:
                store.embedder = model
                return store
            _build_into(folder, info, key, model, settings, progress)
            store = cls.load(folder, expect=key, settings=settings)
        store.embedder = model
        store.built_now = True
        return store

    # -- queries -------------------------------------------------------------------------------

    def text_vector(self, text: str) -> np.ndarray:
        """The unit embedding of `text` [d], remembered for the last few texts asked."""
        if not text.strip():
            raise ValueError("the search text is empty")
        cached = self._text_cache.get(text)
        if cached is not None:
            self._text_cache.move_to_end(text)
            return cached
        if self.embedder is None:
            raise StoreError(f"{self.folder}: store opened without an embedder; cannot embed text")
        vector = np.asarray(self.embedder.embed_text([text]), dtype=np.float32).reshape(-1)
        if vector.shape != (self.vectors.shape[1],):
            raise StoreError(
                f"embedder gives {vector.shape[0]}-d vectors, the store holds "
                f"{self.vectors.shape[1]}-d ones"
            )
        self._text_cache[text] = vector
        while len(self._text_cache) > 32:
            self._text_cache.popitem(last=False)
        return vector

    def search(self, text: str, k: int = 10) -> list[Hit]:
        """The `k` stored frames most similar to `text`, best first, as spans of the video."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        query = self.text_vector(text)[None, :]
        scores, ids = self.index.search(query, min(k, len(self)))
        starts, ends = _spans(self.timestamps, self.duration)
        return [
            Hit(start=float(starts[i]), end=float(ends[i]), score=float(s))
            for s, i in zip(scores[0], ids[0], strict=True)
            if i >= 0
        ]

    def scores_at(self, timestamps: Sequence[float] | np.ndarray, text: str) -> np.ndarray:
        """Similarity of `text` to the stored frame nearest each timestamp (float32, same order).

        The agent scores its pool frames this way without embedding them again.
        """
        times = np.asarray(timestamps, dtype=np.float64).reshape(-1)
        query = self.text_vector(text)
        right = np.clip(np.searchsorted(self.timestamps, times), 0, len(self) - 1)
        left = np.clip(right - 1, 0, len(self) - 1)
        closer_left = np.abs(times - self.timestamps[left]) <= np.abs(
            self.timestamps[right] - times
        )
        nearest = np.where(closer_left, left, right)
        return (self.vectors[nearest] @ query).astype(np.float32)


def _embedder(embedder: str | Embedder | None, settings: StoreSettings) -> Embedder:
    """The embedder object to use: as given, or built (lazily) from a spec string."""
    choice = settings.embedder if embedder is None else embedder
    if isinstance(choice, str):
        return load_embedder(choice, device=settings.device, batch_size=settings.batch_size)
    return load_embedder(choice)


def _plan(info: VideoInfo, key: StoreKey, settings: StoreSettings) -> dict[str, Any]:
    timestamps = sample_timestamps(info, settings.fps)
    return {
        "format_version": FORMAT_VERSION,
        "fingerprint": key.fingerprint,
        "embedder_id": key.embedder_id,
        "fps": key.fps,
        "timestamps": timestamps,
        "chunk_frames": settings.chunk_frames,
        "decode_max_pixels": settings.decode_max_pixels,
    }


def _saved_chunk(path: Path, rows: int) -> np.ndarray | None:
    """A chunk saved by an earlier run, or None when it is missing or unusable."""
    try:
        array = _load_npy(path.read_bytes())
    except (OSError, ValueError):
        return None
    if array.dtype != np.float32 or array.ndim != 2 or array.shape[0] != rows:
        return None
    return array


def _build_into(
    folder: Path,
    info: VideoInfo,
    key: StoreKey,
    embedder: Embedder,
    settings: StoreSettings,
    progress: ProgressCallback | None,
) -> None:
    """Embed the video chunk by chunk in `<folder>.partial`, then move the finished store in."""
    started = time.perf_counter()
    work = folder.with_name(folder.name + ".partial")
    plan = _plan(info, key, settings)
    plan_path = work / _PLAN
    try:
        same_plan = json.loads(plan_path.read_bytes()) == plan
    except (OSError, ValueError):
        same_plan = False
    if not same_plan:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        _atomic_write(plan_path, _json_bytes(plan))

    timestamps: list[float] = plan["timestamps"]
    total, size = len(timestamps), settings.chunk_frames
    spans = [timestamps[begin : begin + size] for begin in range(0, total, size)]
    paths = [work / f"chunk-{number:05d}.npy" for number in range(len(spans))]
    chunks = [_saved_chunk(paths[n], len(wanted)) for n, wanted in enumerate(spans)]
    stats = BuildStats(frames=total)
    stats.resumed_frames = sum(len(c) for c in chunks if c is not None)
    done = stats.resumed_frames
    if progress is not None:
        progress(done, total)
    for number, wanted in enumerate(spans):
        if chunks[number] is not None:
            continue
        t0 = time.perf_counter()
        images = decode_at(info.path, wanted, max_pixels=settings.decode_max_pixels)
        t1 = time.perf_counter()
        vectors = np.ascontiguousarray(embedder.embed_images(images), dtype=np.float32)
        stats.decode_seconds += t1 - t0
        stats.embed_seconds += time.perf_counter() - t1
        if vectors.ndim != 2 or vectors.shape[0] != len(wanted):
            raise StoreError(f"embedder returned shape {vectors.shape} for {len(wanted)} images")
        _atomic_write(paths[number], _npy_bytes(vectors))
        chunks[number] = vectors
        done += len(wanted)
        if progress is not None:
            progress(done, total)

    if len({c.shape[1] for c in chunks if c is not None}) != 1:
        shutil.rmtree(work, ignore_errors=True)  # chunks from two embedders: start over next time
        raise StoreError(f"{folder}: saved chunks disagree on the vector size; build again")
    vectors = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
    t0 = time.perf_counter()
    index, index_info = build_index(
        vectors, settings.index, exact_max=settings.exact_max, target_recall=settings.target_recall
    )
    stats.index_seconds = time.perf_counter() - t0
    stats.total_seconds = time.perf_counter() - started

    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": key.fingerprint,
        "embedder_id": key.embedder_id,
        "fps": key.fps,
        "video": info.path,
        "duration": info.duration,
        "dim": int(vectors.shape[1]),
        "count": int(vectors.shape[0]),
        "timestamps": timestamps,
        "index": index_info,
        "build": asdict(stats),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    blobs = {
        _META: _json_bytes(meta),
        _VECTORS: _npy_bytes(vectors),
        _INDEX: faiss.serialize_index(index).tobytes(),
    }
    for name, data in blobs.items():
        _atomic_write(work / name, data)
    marker = {
        "format_version": FORMAT_VERSION,
        "files": {n: {"size": len(d), "sha256": _sha256(d)} for n, d in blobs.items()},
    }
    _atomic_write(work / _MARKER, _json_bytes(marker))  # last: the folder is now complete
    _fsync_dir(work)

    if folder.exists():  # a damaged store: move it aside, move the new one in, then delete it
        trash = folder.with_name(f"{folder.name}.old-{os.getpid()}")
        os.replace(folder, trash)
        os.replace(work, folder)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(work, folder)
    _fsync_dir(folder.parent)
    # The chunks are no longer needed; a kill before this point only leaves harmless extra files.
    for leftover in [*folder.glob("chunk-*.npy"), folder / _PLAN]:
        leftover.unlink(missing_ok=True)


def store_scorer(
    embedder: str | Embedder, settings: StoreSettings | None = None
) -> Callable[[str, Sequence[float], str], np.ndarray]:
    """A pool scorer for the agent (`build_graph(scorer=...)`): each video's store is built on
    first use (then reopened) and rates pool timestamps against the question."""
    model = load_embedder(embedder)
    spec = embedder if isinstance(embedder, str) else model.embedder_id
    settings = settings or StoreSettings(embedder=spec)

    def score(video: str, pool: Sequence[float], question: str) -> np.ndarray:
        return SegmentStore.build(video, model, settings).scores_at(pool, question)

    return score
