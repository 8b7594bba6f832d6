"""Time building the 64-frame Video-MTR pool of a 10-minute video, side by side in one process.

Three ways to get the pool's frames from the same file:

- vmtr: `probe` + `pool_timestamps` + `decode_at` (seeks to the keyframe before each frame);
- OpenCV: `cv2.VideoCapture` decoding every frame in order, keeping the 64 pool frames;
- qwen-vl-utils: `fetch_video({"video": path, "nframes": 64})`, the reference loader of the
  Qwen2.5-VL cookbooks. It resizes to its video pixel budget, so vmtr is timed a second time
  with the same budget for that comparison.

qwen-vl-utils reads files with torchcodec or decord when installed, else with
`torchvision.io.read_video`, which torchvision 0.22+ no longer has. Where none of the three is
available, this script stands in for `read_video` with what it did: decode every frame with
PyAV into one uint8 tensor. The line printed before the table says which reader ran.

Usage: python benchmarks/frame_pool.py [--minutes 10] [--fps 25] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import cv2
import numpy as np

from vmtr.tools.encode import write_video
from vmtr.tools.video import decode_at, pool_timestamps, probe


def synthetic_frames(count: int, width: int, height: int) -> Iterator[np.ndarray]:
    """Smooth moving texture plus a bar whose position tracks the frame: cheap, codec-friendly."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            127 + 100 * np.sin(xs / 17.0),
            127 + 100 * np.sin(ys / 11.0),
            127 + 100 * np.sin((xs + ys) / 23.0),
        ],
        axis=-1,
    ).astype(np.uint8)
    for index in range(count):
        frame = np.roll(base, index % width, axis=1)
        bar = (index * 3) % (width - 8)
        frame[:, bar : bar + 8] = 255
        yield frame


# ---------------------------------------------------------------------------------------------
# The three frame loaders


def pool_with_vmtr(path: Path, budget: dict | None = None) -> list:
    """The vmtr way: probe, pool timestamps, seek-and-decode only those frames."""
    info = probe(path)
    return decode_at(path, pool_timestamps(info), **(budget or {}))


def pool_with_opencv(path: Path, times: list[float]) -> list[np.ndarray]:
    """Decode every frame in order with OpenCV, keeping the frame shown at each pool time."""
    capture = cv2.VideoCapture(str(path))
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        wanted = {int(t * fps + 1e-9) for t in times}
        kept: dict[int, np.ndarray] = {}
        index = 0
        while index <= max(wanted) and capture.grab():
            if index in wanted:
                ok, frame = capture.retrieve()
                if ok:
                    kept[index] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()
    return [kept[int(t * fps + 1e-9)] for t in times]


def _read_video_like_torchvision(
    filename: str,
    start_pts: float = 0.0,
    end_pts: float | None = None,
    pts_unit: str = "sec",
    output_format: str = "TCHW",
):
    """What torchvision's removed `read_video` did for a whole file: decode all frames (PyAV)."""
    import torch

    with av.open(filename) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        count = stream.frames or 0
        frames = None
        filled = 0
        pieces: list[np.ndarray] = []
        for frame in container.decode(stream):
            rgb = frame.to_ndarray(format="rgb24")
            if frames is None and count:
                frames = np.empty((count, *rgb.shape), np.uint8)
            if frames is not None and filled < count:
                frames[filled] = rgb
            else:
                pieces.append(rgb)
            filled += 1
        if frames is None:
            frames = np.stack(pieces)
        elif pieces:
            frames = np.concatenate([frames, np.stack(pieces)])
        else:
            frames = frames[:filled]
    video = torch.from_numpy(frames)
    if output_format == "TCHW":
        video = video.permute(0, 3, 1, 2)
    return video, torch.empty((1, 0)), {"video_fps": fps}


def qwen_loader() -> tuple[Callable[[Path], object], str, dict]:
    """fetch_video for 64 frames, the reader it ends up using, and its per-frame pixel budget."""
    from qwen_vl_utils import vision_process as qv

    reader = qv.get_video_reader_backend()
    if reader == "torchvision" and not hasattr(qv.io, "read_video"):
        qv.io.read_video = _read_video_like_torchvision
        reader = "torchvision backend; read_video stood in by a PyAV full decode"
    factor = 14 * qv.SPATIAL_MERGE_SIZE
    nframes = 64
    min_pixels = qv.VIDEO_MIN_TOKEN_NUM * factor * factor
    total = qv.MODEL_SEQ_LEN * factor * factor * 0.9
    max_pixels = max(
        min(qv.VIDEO_MAX_TOKEN_NUM * factor * factor, total / nframes * qv.FRAME_FACTOR),
        int(min_pixels * 1.05),
    )
    budget = {"max_pixels": int(max_pixels), "min_pixels": min_pixels, "factor": factor}

    def load(path: Path) -> object:
        return qv.fetch_video({"video": str(path), "nframes": nframes})

    return load, reader, budget


# ---------------------------------------------------------------------------------------------


def timed(run: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument(
        "--keyframe-seconds", type=float, default=10.0, help="x264's own: 250 frames"
    )
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="vmtr-bench-") as folder:
        path = Path(folder) / "long.mp4"
        count = round(args.minutes * 60 * args.fps)
        seconds, _ = timed(
            lambda: write_video(
                path,
                synthetic_frames(count, args.width, args.height),
                args.fps,
                keyframe_seconds=args.keyframe_seconds,
            )
        )
        info = probe(path)
        times = pool_timestamps(info)
        print(
            f"video: {info.duration:.0f} s, {info.frame_count} frames, {info.width}x{info.height} "
            f"{info.codec}, keyframe every {args.keyframe_seconds:g} s "
            f"({path.stat().st_size / 1e6:.1f} MB, written in {seconds:.1f} s); pool {len(times)}"
        )
        load_qwen, reader, budget = qwen_loader()
        print(f"qwen-vl-utils reader: {reader}; its budget {budget}")
        runs: dict[str, Callable[[], object]] = {
            "vmtr decode_at (native size)": lambda: pool_with_vmtr(path),
            "opencv sequential (native size)": lambda: pool_with_opencv(path, times),
            "vmtr decode_at (qwen budget)": lambda: pool_with_vmtr(path, budget),
            "qwen_vl_utils fetch_video": lambda: load_qwen(path),
        }
        samples: dict[str, list[float]] = {name: [] for name in runs}
        outputs: dict[str, object] = {}
        for _ in range(args.reps):  # interleaved, so every method sees the same machine load
            for name, run in runs.items():
                elapsed, outputs[name] = timed(run)
                samples[name].append(elapsed)

        ours = [np.asarray(image, np.float32) for image in outputs["vmtr decode_at (native size)"]]
        theirs = [frame.astype(np.float32) for frame in outputs["opencv sequential (native size)"]]
        gap = max(float(np.abs(a - b).mean()) for a, b in zip(ours, theirs, strict=True))
        print(f"same frames as OpenCV: largest mean |difference| {gap:.2f} / 255")

        median = {name: statistics.median(values) for name, values in samples.items()}
        baseline_of = {
            "opencv sequential (native size)": "vmtr decode_at (native size)",
            "qwen_vl_utils fetch_video": "vmtr decode_at (qwen budget)",
        }
        print(f"\n{'method':34} {'median s':>9} {'min s':>8} {'ratio':>8}")
        for name, values in samples.items():
            ratio = ""
            if name in baseline_of:
                ratio = f"{median[name] / median[baseline_of[name]]:.1f}x"
            print(f"{name:34} {median[name]:9.3f} {min(values):8.3f} {ratio:>8}")
        vs_cv = median["opencv sequential (native size)"] / median["vmtr decode_at (native size)"]
        vs_qwen = median["qwen_vl_utils fetch_video"] / median["vmtr decode_at (qwen budget)"]
        print(f"\nframe_pool: vs_opencv={vs_cv:.1f}x vs_qwen_vl_utils={vs_qwen:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
