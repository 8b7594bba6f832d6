"""Write videos with PyAV: the single place in vmtr that encodes video.

Tests, the demo and the benchmarks all need small synthetic videos in real containers (mp4, mkv,
avi, webm), including true variable-frame-rate files. OpenCV cannot write H.264 here, so this
module drives PyAV's bundled encoders directly and picks fast settings: a 10-minute clip at a
few frames per second encodes in a second or two at test sizes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

_CODEC_BY_SUFFIX: dict[str, tuple[str, ...]] = {
    ".mp4": ("libx264",),
    ".mov": ("libx264",),
    ".mkv": ("libx264",),
    ".avi": ("mpeg4",),
    # At realtime settings libvpx's VP9 encoder (row threads, no lookahead) beats its VP8 one.
    ".webm": ("libvpx-vp9", "libvpx"),
}

_VFR_TIME_BASE = Fraction(1, 90_000)
"""Tick for explicit presentation times: fine enough for any real frame rate."""


def default_codec(suffix: str) -> str:
    """Encoder used for a file extension when the caller does not name one."""
    candidates = _CODEC_BY_SUFFIX.get(suffix.lower())
    if candidates is None:
        known = ", ".join(sorted(_CODEC_BY_SUFFIX))
        raise ValueError(f"no default codec for {suffix!r}; use one of {known} or pass codec=")
    for name in candidates:
        if name in av.codecs_available:
            return name
    raise ValueError(f"none of the encoders {candidates} is available in this PyAV build")


def _encoder_options(codec: str, crf: int | None, fps: float, width: int, height: int) -> dict:
    """Fast settings per encoder; quality high enough that a frame's content survives."""
    if codec == "libx264":
        # superfast keeps B-frames (so decoding exercises frame reordering) and is still quick.
        return {"preset": "superfast", "crf": str(18 if crf is None else crf)}
    quality = str(20 if crf is None else crf)
    fast_vpx = {"deadline": "realtime", "lag-in-frames": "0", "crf": quality}
    if codec == "libvpx-vp9":
        return {**fast_vpx, "cpu-used": "8", "row-mt": "1", "b": "0"}  # b=0: constant quality
    if codec == "libvpx":
        # VP8 treats the bit rate as a ceiling in constant-quality mode; make it generous.
        ceiling = max(500_000, int(width * height * max(fps, 1.0) * 2))
        return {**fast_vpx, "cpu-used": "16", "b": str(ceiling)}
    return {}


def _even_padded(frame: np.ndarray) -> np.ndarray:
    """Repeat the last row/column so 4:2:0 chroma subsampling gets even dimensions."""
    pad_h = frame.shape[0] % 2
    pad_w = frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frame


def _checked(frame: np.ndarray, index: int) -> np.ndarray:
    """Reject anything that is not an HxWx3 uint8 RGB array with a message naming the frame."""
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"frame {index}: expected an HxWx3 uint8 RGB array, got shape {arr.shape} "
            f"dtype {arr.dtype}"
        )
    return np.ascontiguousarray(arr)


def _checked_times(pts_seconds: Sequence[float]) -> list[float]:
    """Presentation times must start at or after zero and strictly increase."""
    times = [float(t) for t in pts_seconds]
    if not times:
        raise ValueError("pts_seconds is empty")
    if not all(math.isfinite(t) for t in times) or times[0] < 0:
        raise ValueError("pts_seconds must be finite and non-negative")
    if any(b <= a for a, b in zip(times, times[1:], strict=False)):
        raise ValueError("pts_seconds must strictly increase")
    return times


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    *,
    codec: str | None = None,
    pts_seconds: Sequence[float] | None = None,
    crf: int | None = None,
    keyframe_seconds: float = 2.0,
    rotation: int = 0,
) -> Path:
    """Encode RGB frames into a video file and return its path.

    `frames` are HxWx3 uint8 RGB arrays, all of one size. The codec follows the extension when
    not given (mp4/mkv/mov: H.264 yuv420p; avi: MPEG-4 part 2; webm: VP9, else VP8). Odd
    widths or heights are padded by one repeated row/column, since 4:2:0 needs even sizes.
    `pts_seconds` gives each frame's presentation time for a true variable-frame-rate file; `fps`
    is then only the nominal rate written in the header. A keyframe every `keyframe_seconds`
    keeps files seekable the way typical streamed videos are. `rotation` (degrees
    counterclockwise, as FFmpeg's display matrix reports it) tags the stream the way phone
    cameras tag portrait clips; the pixels are stored unrotated.
    """
    path = Path(path)
    if not fps or fps <= 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not keyframe_seconds > 0:
        raise ValueError(f"keyframe_seconds must be positive, got {keyframe_seconds!r}")
    codec = codec or default_codec(path.suffix)
    times = _checked_times(pts_seconds) if pts_seconds is not None else None
    if times is not None and path.suffix.lower() == ".avi":
        raise ValueError("avi stores a constant frame rate; use mp4, mkv or webm for pts_seconds")
    rate = Fraction(fps).limit_denominator(1001)

    iterator: Iterator[np.ndarray] = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("no frames to write")
    first = _even_padded(_checked(first, 0))

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _encode(
            path, codec, rate, float(fps), first, iterator, times, crf, keyframe_seconds, rotation
        )
    except BaseException:
        path.unlink(missing_ok=True)  # never leave a half-written video behind
        raise
    return path


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Put back the frame that was read ahead to learn the size."""
    yield first
    yield from rest


def _encode(
    path: Path,
    codec: str,
    rate: Fraction,
    fps: float,
    first: np.ndarray,
    rest: Iterator[np.ndarray],
    times: list[float] | None,
    crf: int | None,
    keyframe_seconds: float,
    rotation: int,
) -> None:
    """Encode `first` then `rest` into `path` (the body of `write_video`)."""
    height, width = first.shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(
            codec, rate=rate, options=_encoder_options(codec, crf, fps, width, height)
        )
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = max(1, round(keyframe_seconds * fps))
        if codec == "mpeg4":
            # The MPEG-4 default bit rate (200 kb/s) smears small frames; give it room.
            stream.codec_context.bit_rate = max(1_000_000, int(width * height * fps * 4))
        time_base = _VFR_TIME_BASE if times is not None else 1 / rate
        stream.codec_context.time_base = time_base
        if rotation % 360:
            stream.set_display_rotation(float(rotation))

        count = 0
        for index, array in enumerate(_chain(first, rest)):
            if index > 0:
                array = _even_padded(_checked(array, index))
            if array.shape[:2] != (height, width):
                raise ValueError(
                    f"frame {index}: size {array.shape[1]}x{array.shape[0]} differs from the "
                    f"first frame's {width}x{height}"
                )
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if times is not None:
                if index >= len(times):
                    raise ValueError(f"more frames than pts_seconds ({len(times)})")
                frame.pts = round(times[index] / time_base)
            else:
                frame.pts = index
            frame.time_base = time_base
            container.mux(stream.encode(frame))
            count += 1
        if times is not None and count != len(times):
            raise ValueError(f"{count} frames but {len(times)} pts_seconds")
        container.mux(stream.encode(None))
