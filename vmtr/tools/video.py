"""Probe videos and decode frames at chosen timestamps; the Video-MTR frame pool.

Video-MTR samples each video once into a pool of at most 64 frames at <= 1 fps spread over the
whole video, and every turn shows frames from that pool. This module provides that pool
(`pool_timestamps`), a frame-accurate seeking decoder (`decode_at`) that touches only the groups
of pictures it needs, the resize rule of Qwen2.5-VL's processor (`fit_to_pixel_budget`) so that
frames arrive at the model's pixel budget and are not resized twice, and a per-run `FrameCache`
so the agent's state can hold indices and timestamps while the pixels live here.

Timestamps are seconds from the start of the video stream (its first frame is at 0). Headers
are trusted only when they agree with themselves; otherwise `probe` reads packet timestamps
(cheap, no decoding). Every failure reaches the caller as a one-line `VideoError`.

Departures from the released code, which decodes the whole video at 1 fps: the pool is never
larger than the video's frame count (a 0.5 fps clip gives no repeated frames); frames are
turned upright by the stream's display rotation, as players do; a file that ends before its
header says is rejected as truncated rather than silently sampled short.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import statistics
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
from PIL import Image

__all__ = [
    "MAX_ASPECT",
    "MAX_SIDE",
    "FrameCache",
    "VideoError",
    "VideoInfo",
    "decode_at",
    "fingerprint",
    "fit_to_pixel_budget",
    "pool_timestamps",
    "probe",
    "sample_timestamps",
]

MAX_SIDE = 16384
"""Largest frame side vmtr accepts; bigger headers are corrupt or not worth decoding."""

MAX_ASPECT = 200.0
"""Largest aspect ratio the Qwen2.5-VL processor accepts."""

_FINGERPRINT_CHUNK = 4 << 20
"""Bytes hashed from each end of a file for its fingerprint."""

_SEEK_GAP_SECONDS = 2.0
"""Without a keyframe index: decode forward over gaps up to this long instead of seeking."""

_SKIP_MARGIN_SECONDS = 1.0
"""Frames nothing refers to are not decoded when further than this before a wanted time."""

_ROTATIONS = {
    90: Image.Transpose.ROTATE_270,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}
"""Clockwise display rotation -> the PIL transpose that shows the frame upright."""


class VideoError(Exception):
    """A video that cannot be used, with a one-line message naming the file and the reason."""


@dataclass(frozen=True)
class VideoInfo:
    """What vmtr needs to know about a video before sampling it.

    `duration` runs from the first frame to the end of the last one; `fps` is the average rate;
    `width`/`height` are as displayed (rotation applied). `fingerprint` identifies the content
    cheaply and serves as a cache key.
    """

    path: str
    duration: float
    fps: float
    frame_count: int
    width: int
    height: int
    codec: str
    container: str
    variable_frame_rate: bool
    fingerprint: str


# ---------------------------------------------------------------------------------------------
# Opening files


def _check_file(path: str | os.PathLike[str]) -> Path:
    """Turn the common filesystem mistakes into plain messages before FFmpeg sees the path."""
    name = os.fspath(path)
    p = Path(name)
    try:
        info = p.stat()
    except FileNotFoundError:
        raise VideoError(f"{name}: file not found") from None
    except PermissionError:
        raise VideoError(f"{name}: cannot read the file (permission denied)") from None
    except OSError as err:
        raise VideoError(f"{name}: cannot read the file ({err.strerror or err})") from None
    if stat.S_ISDIR(info.st_mode):
        raise VideoError(f"{name}: is a directory, not a video file")
    if not stat.S_ISREG(info.st_mode):
        raise VideoError(f"{name}: not a regular file")
    if info.st_size == 0:
        raise VideoError(f"{name}: empty file (0 bytes)")
    if not os.access(p, os.R_OK):
        raise VideoError(f"{name}: cannot read the file (permission denied)")
    return p


def _reason(err: BaseException) -> str:
    """A short reason for a PyAV/OS error, worded for someone who is not an FFmpeg user."""
    if isinstance(err, av.error.InvalidDataError):
        return "unrecognised format or corrupt data"
    if isinstance(err, (av.error.EOFError, EOFError)):
        return "the file ends too early; is it truncated?"
    if isinstance(err, av.error.DecoderNotFoundError):
        return "no decoder for its codec in this build"
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    text = text.strip().rstrip(".")
    return text[:1].lower() + text[1:]


def _video_stream(container: av.container.InputContainer, name: str) -> av.video.VideoStream:
    """The first real video stream; cover art (an attached picture) does not count."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise VideoError(f"{name}: not a readable video (no video stream found)")


@contextmanager
def _opened(
    path: str | os.PathLike[str],
) -> Iterator[tuple[av.container.InputContainer, av.video.VideoStream]]:
    """Open a file's video stream; any PyAV or OS error inside becomes a VideoError."""
    name = os.fspath(path)
    p = _check_file(path)
    try:
        container = av.open(str(p), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, OSError) as err:
        raise VideoError(f"{name}: not a readable video ({_reason(err)})") from None
    try:
        stream = _video_stream(container, name)
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise VideoError(f"{name}: not a readable video (the video stream has no frame size)")
        if max(width, height) > MAX_SIDE:
            raise VideoError(
                f"{name}: resolution {width}x{height} is too large "
                f"(vmtr decodes at most {MAX_SIDE} pixels a side)"
            )
        if stream.time_base is None or stream.time_base <= 0:
            raise VideoError(f"{name}: not a readable video (the video stream has no time base)")
        yield container, stream
    except (av.FFmpegError, OSError, MemoryError) as err:
        raise VideoError(f"{name}: corrupt or unreadable video ({_reason(err)})") from None
    finally:
        container.close()


def _decode_frames(
    container: av.container.InputContainer,
    stream: av.video.VideoStream,
    skip_before: Sequence[float] = (-math.inf,),
) -> Iterator[av.VideoFrame]:
    """Every frame the decoder produces from the current position (one hook for all decoding).

    While a packet's time is below `skip_before[0]` (stream ticks, read for every packet so the
    caller can move it), frames that no other frame refers to are dropped without decoding.
    """
    context = stream.codec_context
    context.skip_frame = "DEFAULT"
    skipping = False
    for packet in container.demux(stream):
        far = packet.pts is not None and packet.pts < skip_before[0]
        if far != skipping:
            context.skip_frame = "NONREF" if far else "DEFAULT"
            skipping = far
        yield from packet.decode()


def _frame_pts(frame: av.VideoFrame) -> int | None:
    """Presentation time in stream ticks; some demuxers only fill the decode time."""
    return frame.pts if frame.pts is not None else frame.dts


def _display_rotation(frame: av.VideoFrame) -> int:
    """Clockwise degrees (0, 90, 180, 270) needed to show the frame upright."""
    try:
        angle = frame.rotation
    except (AttributeError, av.FFmpegError):
        return 0
    turn = round(-float(angle or 0) / 90.0) * 90 % 360
    return turn if turn in _ROTATIONS else 0


# ---------------------------------------------------------------------------------------------
# Probe


@dataclass
class _Timing:
    """Frame timing of the stream, in seconds from its origin."""

    duration: float
    fps: float
    frame_count: int
    variable: bool


def _origin(stream: av.video.VideoStream) -> int:
    """Stream tick that timestamp 0 refers to."""
    return stream.start_time if stream.start_time is not None else 0


def _header_timing(stream: av.video.VideoStream) -> _Timing | None:
    """Timing from the header, or None when the header is incomplete or contradicts itself."""
    tb = stream.time_base
    rate, base = stream.average_rate, stream.base_rate
    frames = stream.frames
    if not stream.duration or stream.duration <= 0 or frames <= 0 or not rate or not base:
        return None
    duration = float(stream.duration * tb)
    measured = frames / duration
    steady = abs(rate - base) <= 0.01 * base  # a variable rate shows as average != base rate
    agrees = abs(measured - float(rate)) <= 0.02 * float(rate)
    fine_ticks = tb <= 1 / (2 * rate)  # coarse ticks cannot place frames: read the packets
    if not (steady and agrees and fine_ticks):
        return None
    return _Timing(duration, float(rate), frames, variable=False)


def _tail_matches(path: Path, timing: _Timing) -> bool:
    """Seek near the end and check the last packets sit where the header says (catch truncation)."""
    with _opened(path) as (container, stream):
        tb, origin = stream.time_base, _origin(stream)
        end_ticks = origin + timing.duration / float(tb)
        frame_ticks = 1 / (timing.fps * float(tb))
        container.seek(int(end_ticks - 3 * frame_ticks), stream=stream, backward=True)
        last = None
        try:
            for packet in container.demux(stream):
                pts = packet.pts if packet.pts is not None else packet.dts
                if packet.size and pts is not None:
                    last = pts if last is None else max(last, pts)
        except av.FFmpegError:
            return False
    return last is not None and abs(last + frame_ticks - end_ticks) <= 2 * frame_ticks


def _packet_timing(path: Path) -> _Timing:
    """Timing measured from every packet's timestamp: demuxing only, no decoding.

    Packets of all streams are read so that a file which stops before the end its header
    announces is reported as truncated instead of silently giving a shorter video.
    """
    name = os.fspath(path)
    with _opened(path) as (container, stream):
        tb, origin = stream.time_base, _origin(stream)
        stamps: set[int] = set()
        last_duration = 0
        content_end = -math.inf  # seconds, on the container's clock
        try:
            for packet in container.demux():
                pts = packet.pts if packet.pts is not None else packet.dts
                if not packet.size or pts is None or packet.time_base is None:
                    continue
                end = float((pts + (packet.duration or 0)) * packet.time_base)
                content_end = max(content_end, end)
                if packet.stream_index == stream.index:
                    stamps.add(pts)
                    last_duration = packet.duration or last_duration
        except av.FFmpegError:
            pass  # a damaged tail: judge by what was readable
        header_rate = stream.average_rate or stream.base_rate
        announced_end = None
        if container.duration and container.duration > 0:
            announced_end = (container.start_time or 0) / 1e6 + container.duration / 1e6
    if not stamps:
        raise VideoError(f"{name}: not a readable video (no video frames found)")
    if announced_end is not None and content_end < announced_end - max(1.0, 0.05 * announced_end):
        raise VideoError(
            f"{name}: truncated or corrupt video (its header promises {announced_end:.1f} s, "
            f"the data stops at {max(content_end, 0.0):.1f} s)"
        )
    ordered = sorted(stamps)
    steps = [b - a for a, b in zip(ordered, ordered[1:], strict=False)]
    if steps:
        step = statistics.median(steps)
    elif last_duration > 0:
        step = last_duration
    elif header_rate:
        step = float(1 / (header_rate * tb))
    else:
        step = float(1 / tb)  # a lone frame with no rate at all: call it one second long
    duration = float((ordered[-1] - origin + step) * tb)
    tolerance = max(2.0, 0.02 * step)
    variable = any(abs(s - step) > tolerance for s in steps)
    count = len(ordered)
    if not variable and count > 1:
        fps = (count - 1) / float((ordered[-1] - ordered[0]) * tb)
        if header_rate and abs(float(header_rate) - fps) <= 0.01 * fps:
            fps = float(header_rate)
    else:
        fps = count / duration
    return _Timing(duration, fps, count, variable)


def _first_frame(path: Path) -> av.VideoFrame:
    """Decode the first frame, proving the stream decodes at all."""
    name = os.fspath(path)
    with _opened(path) as (container, stream):
        try:
            for frame in _decode_frames(container, stream):
                return frame
        except av.FFmpegError as err:
            raise VideoError(f"{name}: no decodable video frames ({_reason(err)})") from None
    raise VideoError(f"{name}: no decodable video frames")


def fingerprint(path: str | os.PathLike[str]) -> str:
    """Cheap content fingerprint: blake2b of the size and the first and last 4 MiB."""
    p = _check_file(path)
    digest = hashlib.blake2b(digest_size=16)
    try:
        size = p.stat().st_size
        digest.update(f"{size}:".encode())
        with p.open("rb") as handle:
            if size <= 2 * _FINGERPRINT_CHUNK:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_FINGERPRINT_CHUNK))
                handle.seek(-_FINGERPRINT_CHUNK, os.SEEK_END)
                digest.update(handle.read(_FINGERPRINT_CHUNK))
    except OSError as err:
        raise VideoError(f"{os.fspath(path)}: cannot read the file ({_reason(err)})") from None
    return digest.hexdigest()


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a video's header and check it: duration, rate, frame count, size, codec, fingerprint.

    A header that is complete and self-consistent is trusted after a cheap look at the file's
    tail (which catches truncation); otherwise the packet timestamps are read to measure the
    real timing and whether the frame rate varies. The first frame is always decoded, so a
    video that probes fine also decodes.
    """
    name = os.fspath(path)
    p = _check_file(path)
    with _opened(p) as (container, stream):
        codec = stream.codec_context.name
        names = container.format.name.split(",")
        suffix = p.suffix.lower().lstrip(".")
        container_name = suffix if suffix in names else names[0]
        header = _header_timing(stream)
    first = _first_frame(p)
    timing = header if header is not None and _tail_matches(p, header) else _packet_timing(p)
    if timing.duration <= 0 or not math.isfinite(timing.duration):
        raise VideoError(f"{name}: not a readable video (no usable duration)")
    width, height = first.width, first.height
    if _display_rotation(first) in (90, 270):
        width, height = height, width
    return VideoInfo(
        path=str(p.resolve()),
        duration=timing.duration,
        fps=timing.fps,
        frame_count=timing.frame_count,
        width=width,
        height=height,
        codec=codec,
        container=container_name,
        variable_frame_rate=timing.variable,
        fingerprint=fingerprint(p),
    )


# ---------------------------------------------------------------------------------------------
# Which timestamps


def pool_timestamps(info: VideoInfo, max_frames: int = 64, max_fps: float = 1.0) -> list[float]:
    """The Video-MTR frame pool: at most `max_frames` frames at <= `max_fps` over the whole video.

    The video is cut into n equal intervals and the pool takes each interval's centre, so the
    first and last pool frames lie inside the video. n = floor(duration * max_fps) capped by
    `max_frames` and by the video's frame count (more would only repeat frames), and at least 1.
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    if not max_fps > 0:
        raise ValueError(f"max_fps must be positive, got {max_fps}")
    count = min(max_frames, math.floor(info.duration * max_fps + 1e-9))
    if info.frame_count > 0:
        count = min(count, info.frame_count)
    count = max(1, count)
    step = info.duration / count
    return [(i + 0.5) * step for i in range(count)]


def sample_timestamps(info: VideoInfo, fps: float) -> list[float]:
    """Timestamps at a fixed rate over the whole video: the centre of every 1/fps slot.

    The last slot ends with the video, so its centre is the middle of what remains.
    """
    if not fps > 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be positive, got {fps}")
    step = 1.0 / fps
    count = max(1, math.ceil(info.duration * fps - 1e-9))
    times = []
    for i in range(count):
        start = i * step
        end = min(start + step, info.duration)
        times.append((start + end) / 2 if end > start else start)
    return times


# ---------------------------------------------------------------------------------------------
# Resizing


def _round_to(value: float, factor: int) -> int:
    return round(value / factor) * factor


def _floor_to(value: float, factor: int) -> int:
    return math.floor(value / factor) * factor


def _ceil_to(value: float, factor: int) -> int:
    return math.ceil(value / factor) * factor


def fit_to_pixel_budget(
    height: int, width: int, *, max_pixels: int, min_pixels: int = 0, factor: int = 28
) -> tuple[int, int]:
    """(height, width) as multiples of `factor` with area in [min_pixels, max_pixels].

    This is the rule Qwen2.5-VL's processor applies (round each side to the factor; if the area
    is out of range, scale both sides by the same amount and round towards the range), so a
    frame resized here passes through the processor without a second resize. The results are
    the processor's own except for slivers (a side under factor/2, or where its rounding would
    leave the budget): there the long side is trimmed so the output stays in range and within
    the processor's 200:1 aspect limit. Inputs beyond 200:1 are rejected, as it does.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if factor < 1:
        raise ValueError(f"factor must be at least 1, got {factor}")
    if max_pixels < factor * factor or min_pixels > max_pixels:
        raise ValueError(
            f"pixel budget [{min_pixels}, {max_pixels}] cannot hold one {factor}x{factor} patch"
        )
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise VideoError(
            f"aspect ratio {max(height, width) / min(height, width):.0f}:1 is too extreme "
            f"(the model accepts at most {MAX_ASPECT:.0f}:1)"
        )
    new_h = max(factor, _round_to(height, factor))
    new_w = max(factor, _round_to(width, factor))
    if new_h * new_w > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        new_h = max(factor, _floor_to(height / shrink, factor))
        new_w = max(factor, _floor_to(width / shrink, factor))
    elif new_h * new_w < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        new_h = _ceil_to(height * grow, factor)
        new_w = _ceil_to(width * grow, factor)
    # A side thinner than one patch still gets one patch; for very thin frames that can push the
    # area past the budget or the shape past the aspect limit, so trim the long side then.
    short, long = sorted((new_h, new_w))
    long = min(long, max(factor, _floor_to(max_pixels / short, factor)))
    long = min(long, _floor_to(MAX_ASPECT * short, factor))
    return (long, short) if new_h > new_w else (short, long)


# ---------------------------------------------------------------------------------------------
# Decoding


class _Seeker:
    """Decides between decoding forward and seeking, from the keyframe index when there is one.

    Demuxers fill the index from the header (mp4, avi), from cues read at the first seek
    (mkv, webm) or only as they read (files without one). A keyframe found before the index's
    last entry is certain; past that the next keyframe is unknown, and a gap longer than
    `_SEEK_GAP_SECONDS` is taken to hold one.
    """

    def __init__(self, stream: av.video.VideoStream) -> None:
        self.stream = stream
        self.gap_ticks = _SEEK_GAP_SECONDS / float(stream.time_base)

    def keyframe_before(self, target: float) -> int | None:
        """Tick of the last keyframe at or before `target`, when the index surely knows it."""
        try:
            entries = self.stream.index_entries
            count = len(entries)
            found = entries.search_timestamp(int(target), backward=True) if count else -1
        except (AttributeError, av.FFmpegError):
            return None
        if found < 0:
            return None
        keyframe = entries[found].timestamp
        if found == count - 1 and target - keyframe > self.gap_ticks:
            return None  # the index may simply not reach this far yet
        return keyframe

    def should_seek(self, position: int, target: float) -> bool:
        """Seek when a keyframe lies between here and the target (or the gap is long)."""
        keyframe = self.keyframe_before(target)
        if keyframe is not None:
            return keyframe > position
        return target - position > self.gap_ticks


def _promised_seconds(
    container: av.container.InputContainer, stream: av.video.VideoStream
) -> float:
    """Length the header announces, in seconds from the stream's origin (0 when unknown)."""
    if stream.duration and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration and container.duration > 0:
        end = ((container.start_time or 0) + container.duration) / 1e6
        return end - _origin(stream) * float(stream.time_base)
    return 0.0


class _Cursor:
    """One decoder moving forward through a stream, restarted by seeking.

    `shown` is the last decoded frame at or before the current target and `ahead` the first
    one after it, so the next (later) target continues from there without decoding twice.
    """

    def __init__(self, container: av.container.InputContainer, stream: av.video.VideoStream):
        self.container, self.stream = container, stream
        self.origin = _origin(stream)
        self.skip_before = [-math.inf]  # read by the decoder for every packet
        self.frames: Iterator[av.VideoFrame] | None = None
        self.shown: av.VideoFrame | None = None
        self.ahead: av.VideoFrame | None = None
        self.at_start = False  # whether decoding began at the video's first frame
        self.ended = False  # no more frames from this position
        self.broken = False  # it stopped on corrupt data, so later targets may still decode

    def restart(self, point: float) -> None:
        """Seek to the keyframe at or before stream tick `point` and decode from there."""
        self.at_start = point <= self.origin
        where = self.origin if self.at_start else int(point)
        self.container.seek(where, stream=self.stream, backward=True)
        self.frames = _decode_frames(self.container, self.stream, self.skip_before)
        self.shown, self.ahead, self.ended, self.broken = None, None, False, False

    def position(self) -> int | None:
        """Tick of the newest decoded frame, if any."""
        newest = self.ahead if self.ahead is not None else self.shown
        return None if newest is None else _frame_pts(newest)

    def advance(self, target: float) -> None:
        """Decode until the next frame lies after `target` (or the frames run out)."""
        near = target + 1e-3  # float rounding of t / time_base must not skip a frame
        while not self.ended:
            if self.ahead is None:
                try:
                    self.ahead = next(self.frames)
                except StopIteration:
                    self.ended = True
                    return
                except av.FFmpegError:
                    self.ended = self.broken = True  # keep what decoded before the bad data
                    return
            pts = _frame_pts(self.ahead)
            if pts is not None and pts > near:
                return
            self.shown, self.ahead = self.ahead, None


def _frame_at(cursor: _Cursor, seeker: _Seeker, target: float, careful: bool) -> None:
    """Move `cursor` so that `cursor.shown` is the frame on screen at `target` (stream ticks).

    Unless `careful`, frames nothing depends on are skipped while more than
    `_SKIP_MARGIN_SECONDS` before the target.
    """
    margin = _SKIP_MARGIN_SECONDS / float(cursor.stream.time_base)
    cursor.skip_before[0] = -math.inf if careful else target - margin
    position = cursor.position()
    if careful or cursor.frames is None or position is None:
        cursor.restart(target)
    elif (not cursor.ended or cursor.broken) and seeker.should_seek(position, target):
        cursor.restart(target)
    back = seeker.gap_ticks
    while True:
        cursor.advance(target)
        if cursor.shown is not None or cursor.at_start:
            return
        # The seek landed after the target or on bad data: start further back.
        cursor.restart(target - back)
        back *= 4


def _frames_at(
    container: av.container.InputContainer,
    stream: av.video.VideoStream,
    targets: Sequence[float],
    name: str,
) -> list[av.VideoFrame]:
    """For sorted stream-tick targets, the frame on screen at each: last frame with pts <= t.

    One decoder runs forward through the file; it seeks (to the keyframe before a target) only
    when that skips work, so frames of one group of pictures are decoded once. Far from a
    target, frames that no other frame refers to are not decoded at all; if the frame found
    for a target lies in that skipped stretch (frames over a second apart), the target is
    decoded again without skipping.
    """
    seeker = _Seeker(stream)
    cursor = _Cursor(container, stream)
    tb = float(stream.time_base)
    margin = _SKIP_MARGIN_SECONDS / tb
    promised = _promised_seconds(container, stream)
    chosen: list[av.VideoFrame] = []
    for target in targets:
        _frame_at(cursor, seeker, target, careful=False)
        found = cursor.shown
        if found is not None and (_frame_pts(found) or 0) < target - margin:
            _frame_at(cursor, seeker, target, careful=True)
        frame = cursor.shown if cursor.shown is not None else cursor.ahead
        seconds = (target - cursor.origin) * tb
        if frame is None:
            raise VideoError(f"{name}: no decodable video frame at {seconds:.2f} s")
        if cursor.ended and seconds > 0:
            # Past the last frame: the normal end of a video, unless the header promised more.
            start = _frame_pts(frame)
            start = cursor.origin if start is None else start
            last = (start + (frame.duration or 0) - cursor.origin) * tb
            if seconds > last and promised - last > max(1.0, 0.05 * promised):
                raise VideoError(
                    f"{name}: truncated or corrupt video (its header promises {promised:.1f} s, "
                    f"frames stop at {last:.1f} s)"
                )
        chosen.append(frame)
    return chosen


def _to_image(frame: av.VideoFrame, size: tuple[int, int] | None, rotation: int) -> Image.Image:
    """RGB PIL image, scaled to (height, width) as displayed and turned upright."""
    if size is None:
        image = frame.to_image()
    else:
        height, width = size
        if rotation in (90, 270):
            height, width = width, height
        image = frame.to_image(width=width, height=height, interpolation="BICUBIC")
    if rotation:
        image = image.transpose(_ROTATIONS[rotation])
    return image


def decode_at(
    path: str | os.PathLike[str],
    timestamps: Iterable[float],
    *,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    factor: int = 28,
) -> list[Image.Image]:
    """RGB frames shown at the given times (seconds from the first frame), in input order.

    The frame shown at t is the last frame whose presentation time is <= t; times before the
    first frame give the first frame, times past the end the last. Any order and duplicates are
    fine. Frames are decoded in one forward pass that seeks to the keyframe before a wanted time
    only when that skips work, so a 64-frame pool of a long video decodes a small share of it.
    With `max_pixels` (and/or `min_pixels`), frames are resized by `fit_to_pixel_budget`.
    """
    name = os.fspath(path)
    wanted = [float(t) for t in timestamps]
    if any(not math.isfinite(t) for t in wanted):
        raise ValueError("timestamps must be finite numbers")
    if not wanted:
        return []
    resize = max_pixels is not None or min_pixels is not None
    with _opened(path) as (container, stream):
        ticks_per_second = 1 / float(stream.time_base)
        origin = _origin(stream)
        distinct = sorted(set(wanted))
        targets = [origin + max(t, 0.0) * ticks_per_second for t in distinct]
        frames = _frames_at(container, stream, targets, name)
        images: dict[int, Image.Image] = {}
        by_time: dict[float, Image.Image] = {}
        for t, frame in zip(distinct, frames, strict=True):
            key = id(frame)
            if key not in images:
                rotation = _display_rotation(frame)
                size = None
                if resize:
                    height, width = frame.height, frame.width
                    if rotation in (90, 270):
                        height, width = width, height
                    size = fit_to_pixel_budget(
                        height,
                        width,
                        max_pixels=max_pixels if max_pixels is not None else 1 << 62,
                        min_pixels=min_pixels or 0,
                        factor=factor,
                    )
                images[key] = _to_image(frame, size, rotation)
            by_time[t] = images[key]
    return [by_time[t] for t in wanted]


# ---------------------------------------------------------------------------------------------
# Cache


class FrameCache:
    """Per-run LRU cache of decoded frames, keyed by (video file, timestamp, resize settings).

    The agent's state holds only pool indices and timestamps; the pixels live here. A file's
    size and modification time are part of the key, so a replaced file is decoded afresh.
    Returned images are shared: treat them as read-only.
    """

    def __init__(self, max_frames: int = 256) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}")
        self.max_frames = max_frames
        self.hits = 0
        self.misses = 0
        self._frames: OrderedDict[tuple, Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._frames)

    def clear(self) -> None:
        """Drop every cached frame."""
        with self._lock:
            self._frames.clear()

    def get_many(
        self,
        path: str | os.PathLike[str],
        timestamps: Sequence[float],
        *,
        max_pixels: int | None = None,
        min_pixels: int | None = None,
        factor: int = 28,
    ) -> list[Image.Image]:
        """Frames at `timestamps` (as `decode_at`), decoding only the missing ones in one pass."""
        p = _check_file(path)
        info = p.stat()
        video = (str(p.resolve()), info.st_size, info.st_mtime_ns, max_pixels, min_pixels, factor)
        keys = [(video, round(float(t), 6)) for t in timestamps]
        found: dict[tuple, Image.Image] = {}
        with self._lock:
            for key in keys:
                image = self._frames.get(key)
                if image is not None:
                    self._frames.move_to_end(key)
                    found[key] = image
            missing = sorted({key for key in keys if key not in found}, key=lambda k: k[1])
            self.hits += sum(1 for key in keys if key in found)
            self.misses += len(missing)
        if missing:
            images = decode_at(
                path,
                [key[1] for key in missing],
                max_pixels=max_pixels,
                min_pixels=min_pixels,
                factor=factor,
            )
            found.update(zip(missing, images, strict=True))
            with self._lock:
                for key, image in zip(missing, images, strict=True):
                    self._frames[key] = image
                while len(self._frames) > self.max_frames:
                    self._frames.popitem(last=False)
        return [found[key] for key in keys]
