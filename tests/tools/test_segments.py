"""SegmentStore: build, reopen, resume after a kill, damaged and mismatched stores, search order.

Most tests use `ColorEmbedder`, a deterministic stand-in for open_clip whose vectors are a
frame's mean colour, on a 20 s video that fades from red to blue, one colour per second. So
"red" must rank second 0 first, "blue" second 19, and every score can be checked by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from vmtr import cli_store
from vmtr.tools.encode import write_video
from vmtr.tools.segments import (
    SegmentStore,
    StoreDamagedError,
    StoreError,
    StoreMissingError,
    StoreSettings,
    build_index,
)
from vmtr.tools.video import VideoError

SECONDS = 20
WORDS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def fade_colour(second: int) -> tuple[int, int, int]:
    """Red at second 0 to blue at second 19, in equal steps."""
    step = 255 * second // (SECONDS - 1)
    return (255 - step, 0, step)


class ColorEmbedder:
    """Embeds an image as its unit mean colour and a colour word as that colour."""

    def __init__(self, embedder_id: str = "test:color") -> None:
        self.embedder_id = embedder_id
        self.images_seen = 0

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.images_seen += len(images)
        means = np.array([np.asarray(im.convert("RGB"), np.float32).mean((0, 1)) for im in images])
        return _unit(means.reshape(-1, 3) + 1e-3)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        return _unit(np.array([WORDS.get(t, (1.0, 1.0, 1.0)) for t in texts], np.float32))


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def make_fade_video(path: Path) -> Path:
    frames = [
        np.full((32, 32, 3), fade_colour(i // 2), np.uint8) for i in range(2 * SECONDS)
    ]  # 2 fps: two frames per colour
    return write_video(path, frames, fps=2)


@pytest.fixture(scope="module")
def fade_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fade_video(tmp_path_factory.mktemp("videos") / "fade.mp4")


@pytest.fixture
def settings(tmp_path: Path) -> StoreSettings:
    return StoreSettings(root=tmp_path / "stores", chunk_frames=8)


def test_build_reports_progress_and_reopens_without_embedding(
    fade_video: Path, settings: StoreSettings
) -> None:
    embedder = ColorEmbedder()
    calls: list[tuple[int, int]] = []
    store = SegmentStore.build(
        fade_video, embedder, settings, progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(0, 20), (8, 20), (16, 20), (20, 20)]
    assert store.built_now and len(store) == 20 and embedder.images_seen == 20
    assert store.index_info["type"] == "flat"
    np.testing.assert_allclose(store.timestamps, np.arange(20) + 0.5)
    np.testing.assert_allclose(np.linalg.norm(store.vectors, axis=1), 1.0, atol=1e-6)
    names = sorted(p.name for p in store.folder.iterdir())
    assert names == ["complete.json", "index.faiss", "meta.json", "vectors.npy"]
    assert not list(store.folder.parent.glob("*.partial"))

    fresh = ColorEmbedder()
    again = SegmentStore.build(fade_video, fresh, settings)
    opened = SegmentStore.open(fade_video, fresh, settings)
    assert not again.built_now and not opened.built_now and fresh.images_seen == 0
    np.testing.assert_array_equal(opened.vectors, store.vectors)
    assert np.load(store.folder / "vectors.npy", allow_pickle=False).dtype == np.float32


def test_search_ranks_by_similarity(fade_video: Path, settings: StoreSettings) -> None:
    store = SegmentStore.build(fade_video, ColorEmbedder(), settings)
    red = store.search("red", k=3)
    assert [(h.start, h.end) for h in red] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    assert red[0].score > red[1].score > red[2].score
    assert red[0].score == pytest.approx(1.0, abs=0.01)  # second 0 is pure red
    blue = store.search("blue", k=25)  # more than stored: all of them
    assert len(blue) == 20 and (blue[0].start, blue[0].end) == (19.0, 20.0)
    assert [h.start for h in blue] == [float(s) for s in range(19, -1, -1)]


def test_scores_at_uses_the_nearest_stored_frame(fade_video: Path, settings: StoreSettings) -> None:
    store = SegmentStore.build(fade_video, ColorEmbedder(), settings)
    scores = store.scores_at([0.2, 10.0, 19.9, 50.0], "blue")
    # 10.0 is halfway between frames 9 (9.5 s) and 10 (10.5 s): the earlier one wins the tie.
    expected = store.vectors[[0, 9, 19, 19]] @ np.array([0.0, 0.0, 1.0], np.float32)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert scores.dtype == np.float32 and scores[0] < scores[1] < scores[2]
    with pytest.raises(ValueError, match="empty"):
        store.search("  ")


def test_interrupted_build_resumes(fade_video: Path, settings: StoreSettings) -> None:
    def stop_after_first_chunk(done: int, total: int) -> None:
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SegmentStore.build(fade_video, ColorEmbedder(), settings, progress=stop_after_first_chunk)
    with pytest.raises(StoreMissingError):
        SegmentStore.open(fade_video, ColorEmbedder(), settings)

    embedder = ColorEmbedder()
    calls: list[tuple[int, int]] = []
    store = SegmentStore.build(
        fade_video, embedder, settings, progress=lambda d, t: calls.append((d, t))
    )
    assert embedder.images_seen == 12 and calls[0] == (8, 20)
    assert store.build_stats is not None and store.build_stats.resumed_frames == 8
    assert store.search("red", k=1)[0].start == 0.0


def test_killed_build_never_opens_as_complete(fade_video: Path, settings: StoreSettings) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_segments import ColorEmbedder
        from vmtr.tools.segments import SegmentStore, StoreSettings

        def kill_after_two_chunks(done, total):
            if done >= 16:
                os.kill(os.getpid(), signal.SIGKILL)

        settings = StoreSettings.model_validate_json({settings.model_dump_json()!r})
        SegmentStore.build({str(fade_video)!r}, ColorEmbedder(), settings,
                           progress=kill_after_two_chunks)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, timeout=120
    )
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    with pytest.raises(StoreMissingError):
        SegmentStore.open(fade_video, ColorEmbedder(), settings)

    embedder = ColorEmbedder()
    store = SegmentStore.build(fade_video, embedder, settings)
    assert embedder.images_seen == 4 and len(store) == 20


def _corrupt_vectors(folder: Path) -> None:
    data = bytearray((folder / "vectors.npy").read_bytes())
    data[-5] ^= 0xFF  # one flipped byte inside the last vector
    (folder / "vectors.npy").write_bytes(bytes(data))


def _truncate_index(folder: Path) -> None:
    path = folder / "index.faiss"
    path.write_bytes(path.read_bytes()[:-100])


def _garble_marker(folder: Path) -> None:
    (folder / "complete.json").write_text("{not json")


def _drop_marker(folder: Path) -> None:
    (folder / "complete.json").unlink()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_corrupt_vectors, "checksum"),
        (_truncate_index, "wrong size"),
        (_garble_marker, "unreadable"),
        (_drop_marker, "no completion marker"),
    ],
)
def test_damaged_store_is_rebuilt_with_a_warning(
    fade_video: Path, settings: StoreSettings, damage, reason: str
) -> None:
    first = SegmentStore.build(fade_video, ColorEmbedder(), settings)
    damage(first.folder)
    with pytest.raises(StoreDamagedError, match=reason):
        SegmentStore.open(fade_video, ColorEmbedder(), settings)
    embedder = ColorEmbedder()
    with pytest.warns(UserWarning, match=reason):
        store = SegmentStore.build(fade_video, embedder, settings)
    assert store.built_now and embedder.images_seen == 20
    np.testing.assert_allclose(store.vectors, first.vectors)
    SegmentStore.open(fade_video, ColorEmbedder(), settings)  # intact again
    assert not list(store.folder.parent.glob("*.old-*"))


def test_mismatched_store_is_rebuilt(
    fade_video: Path, tmp_path: Path, settings: StoreSettings
) -> None:
    other_video = write_video(
        tmp_path / "green.mp4", [np.full((32, 32, 3), (0, 200, 0), np.uint8)] * 6, fps=2
    )
    red_blue = SegmentStore.build(fade_video, ColorEmbedder(), settings)
    # Put the fade video's store where the green video's store belongs.
    from vmtr.tools.video import probe

    target = SegmentStore.folder_for(probe(other_video), "test:color", settings)
    shutil.copytree(red_blue.folder, target)
    with pytest.raises(StoreDamagedError, match="built for"):
        SegmentStore.open(other_video, ColorEmbedder(), settings)
    with pytest.warns(UserWarning, match="built for"):
        green = SegmentStore.build(other_video, ColorEmbedder(), settings)
    assert len(green) == 3 and green.search("green", k=1)[0].score == pytest.approx(1, abs=0.02)

    # Another embedder id never reuses the colour store.
    assert len(SegmentStore.build(fade_video, ColorEmbedder("test:other"), settings)) == 20

    # A store written by another format version is rebuilt too.
    marker_path = red_blue.folder / "complete.json"
    marker = json.loads(marker_path.read_text())
    marker_path.write_text(json.dumps({**marker, "format_version": 0}))
    with pytest.warns(UserWarning, match="format"):
        SegmentStore.build(fade_video, ColorEmbedder(), settings)


def test_ivf_store_round_trip(fade_video: Path, settings: StoreSettings) -> None:
    ivf_settings = settings.model_copy(update={"index": "ivf"})
    store = SegmentStore.build(fade_video, ColorEmbedder(), ivf_settings)
    assert store.index_info["type"] == "ivf" and store.index_info["nprobe"] >= 1
    reopened = SegmentStore.open(fade_video, ColorEmbedder(), ivf_settings)
    assert [h.start for h in reopened.search("red", k=5)] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_build_index_calibrates_ivf_recall() -> None:
    rng = np.random.default_rng(1)
    centres = _unit(rng.standard_normal((40, 16)))
    vectors = _unit(centres[rng.integers(0, 40, 4000)] + 0.1 * rng.standard_normal((4000, 16)))
    index, info = build_index(vectors, exact_max=1000, target_recall=0.95)
    assert info["type"] == "ivf" and info["nlist"] == min(int(4 * 4000**0.5), 4000 // 39)
    assert info["calibrated_recall"] >= 0.95 and 4 * info["nprobe"] <= info["nlist"]
    flat, flat_info = build_index(vectors[:1000], exact_max=1000)
    assert flat_info == {"type": "flat"} and flat.ntotal == 1000
    # Structureless data: IVF would have to scan most lists, so "auto" keeps exact search.
    noise = _unit(rng.standard_normal((4000, 64)))
    _, noise_info = build_index(noise, exact_max=1000)
    assert noise_info["type"] == "flat" and "ivf_rejected" in noise_info
    queries = _unit(vectors[:50] + 0.05 * rng.standard_normal((50, 16)))
    _, truth = build_index(vectors, "flat")[0].search(queries, 10)
    _, found = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert recall >= 0.9


def test_bad_video_raises_video_error(tmp_path: Path, settings: StoreSettings) -> None:
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video")
    with pytest.raises(VideoError):
        SegmentStore.build(bogus, ColorEmbedder(), settings)
    with pytest.raises(StoreError):  # a store that was never built
        SegmentStore.load(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> typer.Typer:
    monkeypatch.setenv("VMTR_CACHE_DIR", str(tmp_path / "cache"))
    real = cli_store._make_embedder
    monkeypatch.setattr(
        cli_store,
        "_make_embedder",
        lambda spec: ColorEmbedder() if spec == "test:color" else real(spec),
    )
    app = typer.Typer()
    app.command()(cli_store.index)
    app.command()(cli_store.search)
    return app


def test_cli_index_then_search_json(cli: typer.Typer, fade_video: Path) -> None:
    runner = CliRunner()
    built = runner.invoke(cli, ["index", str(fade_video), "--embedder", "test:color"])
    assert built.exit_code == 0, built.output
    assert "indexed 20 frames" in built.stdout
    again = runner.invoke(cli, ["index", str(fade_video), "--embedder", "test:color"])
    assert "already indexed" in again.stdout

    found = runner.invoke(
        cli, ["search", str(fade_video), "blue", "-k", "2", "--embedder", "test:color", "--json"]
    )
    assert found.exit_code == 0, found.output
    rows = json.loads(found.stdout)
    assert [(r["start"], r["end"]) for r in rows] == [(19.0, 20.0), (18.0, 19.0)]
    assert rows[0]["score"] > rows[1]["score"]

    table = runner.invoke(cli, ["search", str(fade_video), "red", "--embedder", "test:color"])
    assert table.exit_code == 0 and "0:00:00.0" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "{video}", " ", "--embedder", "test:color"], "search text is empty"),
        (["index", "{missing}", "--embedder", "test:color"], "file not found"),
        (["index", "{video}", "--embedder", "ViT-B-32:/no/such/ckpt.pt"], "not found"),
    ],
)
def test_cli_errors_are_one_line(
    cli: typer.Typer, fade_video: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    filled = [a.format(video=fade_video, missing=tmp_path / "missing.mp4") for a in args]
    result = CliRunner().invoke(cli, filled)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_cli_rejects_bad_k(cli: typer.Typer, fade_video: Path) -> None:
    result = CliRunner().invoke(cli, ["search", str(fade_video), "red", "-k", "0"])
    assert result.exit_code == 2


@pytest.mark.slow
def test_cli_with_random_open_clip_weights(cli: typer.Typer, tmp_path: Path) -> None:
    """End to end with a real (randomly initialised) ViT-B-32, as offline checks run it."""
    frames = [np.full((24, 24, 3), fade_colour(i * 6), np.uint8) for i in range(4)]
    video = write_video(tmp_path / "short.mp4", frames, fps=1)
    result = CliRunner().invoke(
        cli,
        ["search", str(video), "a red frame", "-k", "3", "--embedder", "ViT-B-32:none", "--json"],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 3 and rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]
    assert all(0.0 <= r["start"] < r["end"] <= 4.0 for r in rows)
