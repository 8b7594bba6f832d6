"""Tests for vmtr.tools.video and vmtr.tools.encode on small generated videos.

Every frame written by the `make_video` fixture carries its own index, so frame accuracy is
checked by reading the index back from what `decode_at` returns.
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vmtr.tools import video
from vmtr.tools.encode import write_video
from vmtr.tools.video import (
    FrameCache,
    VideoError,
    VideoInfo,
    decode_at,
    fit_to_pixel_budget,
    pool_timestamps,
    probe,
    sample_timestamps,
)

FORMATS = [
    ("clip.mp4", "h264", "mp4"),
    ("clip.avi", "mpeg4", "avi"),
    ("clip.mkv", "h264", "matroska"),
    ("clip.webm", "vp9", "webm"),
]


def _info(duration: float, fps: float = 25.0, frame_count: int | None = None) -> VideoInfo:
    """A VideoInfo for the pure timestamp functions (no file needed)."""
    count = round(duration * fps) if frame_count is None else frame_count
    return VideoInfo(
        path="/nowhere.mp4",
        duration=duration,
        fps=fps,
        frame_count=count,
        width=64,
        height=64,
        codec="h264",
        container="mp4",
        variable_frame_rate=False,
        fingerprint="0",
    )


def _count_decoded(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count every frame the decoder produces, through the module's single decoding hook."""
    counter = {"frames": 0}
    original = video._decode_frames

    def counting(container, stream, *args):
        for frame in original(container, stream, *args):
            counter["frames"] += 1
            yield frame

    monkeypatch.setattr(video, "_decode_frames", counting)
    return counter


# ---------------------------------------------------------------------------------------------
# Containers, codecs, frame accuracy


@pytest.mark.parametrize(("name", "codec", "container"), FORMATS)
def test_probe_and_frame_accuracy_per_format(make_video, read_frame_index, name, codec, container):
    path = make_video(name, seconds=3.0, fps=10.0)
    info = probe(path)
    assert (info.codec, info.container) == (codec, container)
    assert info.frame_count == 30
    assert info.duration == pytest.approx(3.0, abs=0.01)
    assert info.fps == pytest.approx(10.0, rel=0.01)
    assert (info.width, info.height) == (64, 64)
    assert not info.variable_frame_rate
    assert info.path == str(Path(path).resolve())

    # Frame starts, frame middles, just before a frame, out of order, duplicated, off the ends.
    times = [i / 10 for i in range(30)] + [(i + 0.5) / 10 for i in range(30)]
    times += [2.0 - 0.004, 0.7, 0.1, 0.7, -1.0, 99.0]
    expected = [min(29, max(0, math.floor(t * 10 + 1e-6))) for t in times]
    images = decode_at(path, times)
    assert [read_frame_index(image) for image in images] == expected
    assert all(image.mode == "RGB" and image.size == (64, 64) for image in images)


@pytest.mark.parametrize("name", ["vfr.mp4", "vfr.mkv", "vfr.webm"])
def test_variable_frame_rate(make_video, read_frame_index, name):
    # Whole milliseconds, so every container stores these presentation times exactly.
    gaps = [0.04, 0.04, 0.5, 0.02, 0.3, 1.2, 0.04, 0.1, 0.7, 0.04, 0.2, 0.06]
    pts = [0.0]
    for gap in gaps:
        pts.append(round(pts[-1] + gap, 3))
    path = make_video(name, fps=25.0, pts_seconds=pts)
    info = probe(path)
    assert info.variable_frame_rate
    assert info.frame_count == len(pts)
    assert pts[-1] < info.duration <= pts[-1] + max(gaps)
    assert info.fps == pytest.approx(len(pts) / info.duration)

    times = (
        pts
        + [t - 0.002 for t in pts[1:]]
        + [(a + b) / 2 for a, b in zip(pts, pts[1:], strict=False)]
    )
    expected = [bisect.bisect_right(pts, t + 1e-9) - 1 for t in times]
    assert [read_frame_index(image) for image in decode_at(path, times)] == expected


def test_named_codec_vp8(make_video, read_frame_index):
    path = make_video("vp8.webm", seconds=1.0, fps=10.0, codec="libvpx")
    assert probe(path).codec == "vp8"
    assert read_frame_index(decode_at(path, [0.45])[0]) == 4


def test_odd_size_is_padded_to_even(make_video, read_frame_index):
    path = make_video("odd.mp4", seconds=1.0, fps=10.0, size=(65, 49))
    info = probe(path)
    assert (info.width, info.height) == (66, 50)
    assert read_frame_index(decode_at(path, [0.55])[0]) == 5


def test_display_rotation_is_applied(make_video, read_frame_index):
    # FFmpeg reports +90 as a counterclockwise turn: show the stored 64x32 frame as 32x64.
    path = make_video("phone.mp4", seconds=1.0, fps=10.0, size=(64, 32), rotation=90)
    info = probe(path)
    assert (info.width, info.height) == (32, 64)
    (image,) = decode_at(path, [0.35])
    assert image.size == (32, 64)
    red, green, _ = image.getpixel((4, 60))  # the marker cell has moved to the bottom left
    assert red > 160 and green < 100
    assert read_frame_index(image.transpose(Image.Transpose.ROTATE_270)) == 3


def test_decode_at_resizes_to_the_pixel_budget(make_video, read_frame_index):
    path = make_video("wide.mp4", seconds=1.0, fps=10.0, size=(128, 64))
    images = decode_at(path, [0.25, 0.95], max_pixels=56 * 112, factor=28)
    assert [image.size for image in images] == [(112, 56), (112, 56)]
    assert [read_frame_index(image) for image in images] == [2, 9]
    (grown,) = decode_at(path, [0.0], min_pixels=224 * 224, factor=28)
    assert grown.size == (336, 168)


def test_decode_at_edge_arguments(make_video):
    path = make_video("edge.mp4", seconds=1.0, fps=10.0)
    assert decode_at(path, []) == []
    with pytest.raises(ValueError):
        decode_at(path, [float("nan")])


# ---------------------------------------------------------------------------------------------
# The frame pool and fixed-rate sampling


def test_pool_short_video_one_frame_per_second():
    pool = pool_timestamps(_info(10.0))
    assert pool == pytest.approx([i + 0.5 for i in range(10)])


def test_pool_long_video_is_capped_and_spans_the_video():
    info = _info(600.0)
    pool = pool_timestamps(info)
    assert len(pool) == 64
    step = 600.0 / 64
    assert pool[0] == pytest.approx(step / 2) and pool[-1] == pytest.approx(600.0 - step / 2)
    assert pool == sorted(pool)
    assert all(b - a == pytest.approx(step) for a, b in zip(pool, pool[1:], strict=False))


def test_pool_limits_and_minimum():
    assert len(pool_timestamps(_info(0.3, fps=10.0))) == 1  # under a second: still one frame
    assert len(pool_timestamps(_info(10.5))) == 10  # never above max_fps
    assert len(pool_timestamps(_info(20.0, fps=0.5))) == 10  # never more than the frames
    assert len(pool_timestamps(_info(100.0), max_frames=16, max_fps=2.0)) == 16
    assert len(pool_timestamps(_info(100.0), max_frames=300, max_fps=2.0)) == 200
    with pytest.raises(ValueError):
        pool_timestamps(_info(10.0), max_frames=0)


def test_sample_timestamps_fixed_rate():
    assert sample_timestamps(_info(10.0), fps=2.0) == pytest.approx(
        [0.25 + i / 2 for i in range(20)]
    )
    times = sample_timestamps(_info(10.2), fps=1.0)
    assert len(times) == 11 and times[-1] == pytest.approx(10.1)
    assert sample_timestamps(_info(0.2), fps=1.0) == pytest.approx([0.1])
    with pytest.raises(ValueError):
        sample_timestamps(_info(10.0), fps=0)


def test_pool_of_long_video_decodes_a_small_share(make_video, read_frame_index, monkeypatch):
    path = make_video("long.mp4", seconds=600.0, fps=2.0)
    info = probe(path)
    assert info.frame_count == 1200 and info.duration == pytest.approx(600.0)
    pool = pool_timestamps(info)
    counter = _count_decoded(monkeypatch)
    images = decode_at(path, pool, max_pixels=56 * 56)
    assert [read_frame_index(image) for image in images] == [math.floor(t * 2) for t in pool]
    assert counter["frames"] < info.frame_count / 4  # keyframes every 2 s: a few frames each


def test_frames_seconds_apart_are_still_exact(make_video, read_frame_index):
    # Far from a wanted time, frames nothing refers to are skipped; when frames are further
    # apart than that margin the one on screen can be such a frame and must still come back.
    path = make_video("sparse.mp4", seconds=50.0, fps=0.4, keyframe_seconds=50.0)
    times = [2.5 * i + offset for i in range(20) for offset in (0.1, 2.4)]
    expected = [i for i in range(20) for _ in (0.1, 2.4)]
    assert [read_frame_index(image) for image in decode_at(path, times)] == expected


def test_nearby_times_reuse_the_decoder(make_video, monkeypatch):
    path = make_video("dense.mkv", seconds=4.0, fps=10.0, keyframe_seconds=4.0)
    counter = _count_decoded(monkeypatch)
    decode_at(path, [i / 10 for i in range(40)][::-1])  # reversed input, one forward pass
    assert counter["frames"] <= 41


# ---------------------------------------------------------------------------------------------
# Pixel budget


@pytest.mark.parametrize(
    ("size", "budget", "expected"),
    [
        ((480, 640), {"max_pixels": 128 * 28 * 28}, (252, 364)),
        ((1080, 1920), {"max_pixels": 128 * 28 * 28}, (224, 420)),
        ((64, 64), {"max_pixels": 56 * 56}, (56, 56)),
        ((100, 100), {"max_pixels": 10**6}, (112, 112)),
        ((20, 30), {"max_pixels": 10**6, "min_pixels": 56 * 56}, (56, 84)),
        ((240, 320), {"max_pixels": 128 * 14 * 14, "factor": 14}, (126, 182)),
        ((10, 1999), {"max_pixels": 128 * 28 * 28}, (28, 1988)),  # a sliver gets one patch
    ],
)
def test_fit_to_pixel_budget_numbers(size, budget, expected):
    height, width = fit_to_pixel_budget(*size, **budget)
    assert (height, width) == expected
    factor = budget.get("factor", 28)
    assert height % factor == 0 and width % factor == 0
    assert budget.get("min_pixels", 0) <= height * width <= budget["max_pixels"]
    # The processor's rule leaves its own output alone (no second resize).
    assert fit_to_pixel_budget(height, width, **budget) == (height, width)


def test_fit_to_pixel_budget_rejects_extreme_aspect_and_bad_budgets():
    with pytest.raises(VideoError, match="aspect ratio"):
        fit_to_pixel_budget(10, 2010, max_pixels=10**6)
    with pytest.raises(ValueError):
        fit_to_pixel_budget(100, 100, max_pixels=100)
    with pytest.raises(ValueError):
        fit_to_pixel_budget(100, 100, max_pixels=10**4, min_pixels=10**5)


# ---------------------------------------------------------------------------------------------
# Bad input


def _truncated(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def _bad_input(kind: str, tmp_path: Path, make_video) -> Path:
    """Build one kind of broken input inside tmp_path."""
    if kind == "missing":
        return tmp_path / "missing.mp4"
    if kind == "directory":
        folder = tmp_path / "folder.mp4"
        folder.mkdir()
        return folder
    if kind == "zero_bytes":
        empty = tmp_path / "empty.mp4"
        empty.touch()
        return empty
    if kind == "text":
        text = tmp_path / "notes.mp4"
        text.write_text("these are meeting notes, not a video\n" * 40)
        return text
    if kind == "random_bytes":
        noise = tmp_path / "noise.mp4"
        noise.write_bytes(np.random.default_rng(0).bytes(64_000))
        return noise
    if kind == "truncated_mp4":
        return _truncated(make_video("full.mp4", seconds=10.0), tmp_path / "half.mp4")
    if kind == "truncated_mkv":
        return _truncated(make_video("full.mkv", seconds=10.0), tmp_path / "half.mkv")
    if kind == "header_only_mkv":
        data = make_video("full.mkv", seconds=2.0).read_bytes()
        cut = tmp_path / "header.mkv"
        cut.write_bytes(data[: data.find(b"\x1f\x43\xb6\x75")])  # up to the first cluster
        return cut
    if kind == "no_decodable_frames":
        data = bytearray(make_video("full.mp4", seconds=2.0).read_bytes())
        start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4
        data[start:end] = bytes(end - start)  # keep the index, blank every frame
        blank = tmp_path / "blank.mp4"
        blank.write_bytes(bytes(data))
        return blank
    raise AssertionError(kind)


BAD_INPUTS = {
    "missing": "file not found",
    "directory": "is a directory",
    "zero_bytes": "empty file",
    "text": "not a readable video",
    "random_bytes": "not a readable video",
    "truncated_mp4": "not a readable video",
    "truncated_mkv": "truncated",
    "header_only_mkv": "truncated",
    "no_decodable_frames": "no decodable",
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_gives_one_clear_line(kind, tmp_path, make_video):
    path = _bad_input(kind, tmp_path, make_video)
    with pytest.raises(VideoError) as caught:
        probe(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and BAD_INPUTS[kind] in message
    assert "\n" not in message
    with pytest.raises(VideoError):
        decode_at(path, [0.5, 8.0])
    with pytest.raises(VideoError):
        FrameCache().get_many(path, [0.5, 8.0])


def test_absurd_resolution_is_rejected(make_video, monkeypatch):
    path = make_video("big.mp4", seconds=1.0)
    monkeypatch.setattr(video, "MAX_SIDE", 32)
    with pytest.raises(VideoError, match="64x64 is too large"):
        probe(path)
    with pytest.raises(VideoError, match="too large"):
        decode_at(path, [0.0])


def test_write_video_rejects_bad_frames_and_leaves_no_file(tmp_path):
    frames = [np.zeros((32, 32, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)]
    with pytest.raises(ValueError, match="differs"):
        write_video(tmp_path / "mixed.mp4", frames, 10)
    assert not (tmp_path / "mixed.mp4").exists()
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "float.mp4", [np.zeros((32, 32, 3))], 10)
    with pytest.raises(ValueError, match="constant frame rate"):
        write_video(tmp_path / "vfr.avi", [np.zeros((32, 32, 3), np.uint8)], 10, pts_seconds=[0])
    with pytest.raises(ValueError, match="no default codec"):
        write_video(tmp_path / "clip.xyz", [np.zeros((32, 32, 3), np.uint8)], 10)


# ---------------------------------------------------------------------------------------------
# Fingerprint and cache


def test_fingerprint_follows_content_not_path(make_video, tmp_path):
    path = make_video("a.mp4", seconds=1.0)
    copy = tmp_path / "copy_of_a.mp4"
    copy.write_bytes(path.read_bytes())
    assert probe(path).fingerprint == probe(copy).fingerprint

    big = tmp_path / "big.bin"
    with big.open("wb") as handle:
        handle.truncate(9 << 20)  # sparse 9 MiB: only its ends are hashed
    before = video.fingerprint(big)
    with big.open("r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"\x01")
    assert video.fingerprint(big) != before


def test_frame_cache_decodes_only_missing_frames(make_video, read_frame_index, monkeypatch):
    path = make_video("cached.mp4", seconds=4.0, fps=10.0)
    calls: list[list[float]] = []
    original = video.decode_at

    def recording(path, timestamps, **resize):
        calls.append(list(timestamps))
        return original(path, timestamps, **resize)

    monkeypatch.setattr(video, "decode_at", recording)
    cache = FrameCache(max_frames=4)
    first = cache.get_many(path, [1.05, 0.05, 1.05])
    assert [read_frame_index(image) for image in first] == [10, 0, 10]
    assert calls == [[0.05, 1.05]]
    again = cache.get_many(path, [0.05, 2.05])
    assert again[0] is first[1] and read_frame_index(again[1]) == 20
    assert calls[-1] == [2.05]
    assert (cache.hits, cache.misses) == (1, 3)

    cache.get_many(path, [3.05, 3.55])  # five frames now: the oldest (1.05) is evicted
    assert len(cache) == 4
    cache.get_many(path, [1.05])
    assert calls[-1] == [1.05]

    (small,) = cache.get_many(path, [0.05], max_pixels=28 * 28)  # other settings: other entry
    assert small.size == (28, 28) and calls[-1] == [0.05]
