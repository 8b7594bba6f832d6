"""`vmtr index` and `vmtr search`: build a video's segment store and query it from the shell.

Two plain functions with Typer annotations; `vmtr/cli.py` registers them on the app. Progress
bars and warnings go to stderr, results to stdout (`--json` for machines). Every expected
failure (bad video, weights that cannot be loaded, an unusable store) ends as one `error:` line
on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vmtr.cli_errors import fail
from vmtr.models.embed import DEFAULT_EMBEDDER, Embedder, EmbedderError, load_embedder
from vmtr.tools.segments import SegmentStore, StoreError, StoreSettings
from vmtr.tools.video import VideoError

_EXPECTED_ERRORS = (VideoError, EmbedderError, StoreError, ValueError, OSError)

EmbedderOption = Annotated[
    str,
    typer.Option(
        "--embedder",
        help="open_clip MODEL[:TAG]: a pretrained tag, a local checkpoint path, or `none` "
        "for random weights (e.g. ViT-B-32:none).",
    ),
]
FpsOption = Annotated[
    float, typer.Option("--fps", min=0.001, max=120.0, help="Frames per second to index.")
]
VideoArgument = Annotated[Path, typer.Argument(help="Video file.", show_default=False)]


def _make_embedder(spec: str) -> Embedder:
    """The embedder for a `--embedder` spec (a seam tests replace with a fake)."""
    return load_embedder(spec)


@contextmanager
def _progress_bar() -> Iterator[Callable[[int, int], None]]:
    """A stderr progress bar fed by the store's `progress(done, total)` callback."""
    console = Console(stderr=True)
    columns = (
        TextColumn("embedding frames"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    quiet = not console.is_terminal  # no bar in logs and pipes, only the result lines
    with Progress(*columns, console=console, transient=True, disable=quiet) as bar:
        task = bar.add_task("embed", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@contextmanager
def _library_logs_muted() -> Iterator[None]:
    """Silence open_clip's and huggingface_hub's log lines (download retries, "initialized
    randomly"): a failure reaches the user once, as our own `error:` line."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def _open_store(video: Path, embedder: str, fps: float) -> SegmentStore:
    """Open or build the store, echoing any rebuild warning as one stderr line."""
    settings = StoreSettings(embedder=embedder, fps=fps)
    with warnings.catch_warnings(record=True) as caught, _library_logs_muted():
        warnings.simplefilter("always")
        with _progress_bar() as progress:
            store = SegmentStore.build(video, _make_embedder(embedder), settings, progress=progress)
    for warning in caught:
        typer.echo(f"warning: {warning.message}", err=True)
    return store


def index(
    video: VideoArgument,
    embedder: EmbedderOption = DEFAULT_EMBEDDER,
    fps: FpsOption = 1.0,
) -> None:
    """Embed a video's frames with open_clip and store them in a FAISS index (resumable)."""
    try:
        store = _open_store(video, embedder, fps)
    except _EXPECTED_ERRORS as err:
        raise fail(str(err)) from None
    stats = store.build_stats
    if not store.built_now:
        typer.echo(f"already indexed: {len(store)} frames in {store.folder}")
        return
    timing = ""
    if stats is not None:
        timing = (
            f" in {stats.total_seconds:.1f} s (decode {stats.decode_seconds:.1f} s, "
            f"embed {stats.embed_seconds:.1f} s"
            + (f", {stats.resumed_frames} frames resumed" if stats.resumed_frames else "")
            + ")"
        )
    typer.echo(
        f"indexed {len(store)} frames at {fps:g} fps with {store.key.embedder_id}{timing}; "
        f"{store.index_info.get('type', 'flat')} index in {store.folder}"
    )


def search(
    video: VideoArgument,
    text: Annotated[str, typer.Argument(help="What to look for.", show_default=False)],
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="How many results.")] = 10,
    embedder: EmbedderOption = DEFAULT_EMBEDDER,
    fps: FpsOption = 1.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print a JSON list of {start, end, score}.")
    ] = False,
) -> None:
    """Find the moments of a video most similar to a text, best first (indexes it if needed)."""
    if not text.strip():
        raise fail("the search text is empty")
    try:
        store = _open_store(video, embedder, fps)
        with _library_logs_muted():
            hits = store.search(text, k)
    except _EXPECTED_ERRORS as err:
        raise fail(str(err)) from None
    if json_output:
        rows = [
            {"start": round(h.start, 3), "end": round(h.end, 3), "score": round(h.score, 6)}
            for h in hits
        ]
        typer.echo(json.dumps(rows))
        return
    table = Table(title=escape(f"{video.name}: {text!r}"))
    table.add_column("#", justify="right")
    table.add_column("start", justify="right")
    table.add_column("end", justify="right")
    table.add_column("score", justify="right")
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), _clock(hit.start), _clock(hit.end), f"{hit.score:.4f}")
    Console().print(table)


def _clock(seconds: float) -> str:
    """`h:mm:ss.s`, the way people read positions in a video."""
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:04.1f}"
