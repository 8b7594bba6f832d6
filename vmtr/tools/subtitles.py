"""Subtitle files read into timed lines, and the lines that fall near a set of frames.

Benchmarks ship their speech as subtitle files beside the videos: VideoMME as SubRip files whose
every line is wrapped in ``<font color="white" size=".72c">`` tags, VideoMathQA as plain SubRip.
pysubs2 reads SubRip (also WebVTT and ASS), so the tolerance comes from it: a byte-order mark,
CRLF line ends, missing cue numbers, ``.`` for ``,`` in times and HTML-like tags are all read;
what is left of the markup is dropped (`Cue.text` is plain text, one line).

A cue is *near* a frame at time t when it overlaps ``[t - window, t + window]``; with window 0 that
is lmms-eval's rule (the cue that is on screen when the frame is shown).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SUBTITLE_EXTENSIONS = (".srt", ".vtt", ".ass", ".ssa")
_FORMATS = {".srt": "srt", ".vtt": "vtt"}
_SPACES = re.compile(r"\s+")
_TAG = re.compile(r"<[^>]{0,200}>")


@dataclass(frozen=True)
class Cue:
    """One subtitle line: seconds it starts and ends, and its plain text."""

    start: float
    end: float
    text: str


def parse_subtitles(text: str, *, fmt: str | None = None, source: str = "subtitles") -> list[Cue]:
    """The cues of a subtitle file's text, in time order; empty text gives no cues.

    ``fmt`` is a pysubs2 format name (``"srt"``, ``"vtt"``, ...; None: detect). Text that holds
    something but no cue raises ValueError naming ``source``.
    """
    import pysubs2

    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        return []
    try:
        events = pysubs2.SSAFile.from_string(text, format_=fmt).events
    except Exception as exc:  # noqa: BLE001 - pysubs2 raises several kinds for unreadable text
        raise ValueError(f"{source}: not a readable subtitle file ({exc})") from None
    cues = []
    for event in events:
        if event.is_comment:
            continue
        line = _SPACES.sub(" ", _TAG.sub("", event.plaintext)).strip()
        if line and event.end >= event.start:
            cues.append(Cue(event.start / 1000.0, event.end / 1000.0, line))
    if not cues and not events:
        raise ValueError(f"{source}: no timed subtitle lines found")
    return sorted(cues, key=lambda c: (c.start, c.end))


def read_subtitles(path: str | Path) -> list[Cue]:
    """The cues of a subtitle file (format from its extension, else detected).

    Raises ValueError with the path for a file that cannot be read or holds no cues.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read subtitles ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # older subtitle files; every byte maps to a character
    return parse_subtitles(text, fmt=_FORMATS.get(path.suffix.lower()), source=str(path))


def find_subtitles(folders: Sequence[Path], stem: str) -> Path | None:
    """The first ``folder/stem.<ext>`` subtitle file that exists, or None."""
    for folder in folders:
        for ext in SUBTITLE_EXTENSIONS:
            candidate = folder / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
    return None


def cues_near(cues: Sequence[Cue], times: Sequence[float], window: float) -> list[tuple[int, Cue]]:
    """(position in ``times`` of the nearest frame, cue) for every cue near some frame, in time
    order, each cue once."""
    if window < 0:
        raise ValueError(f"the subtitle window must be >= 0 seconds, got {window}")
    near = []
    for cue in cues:
        close = [i for i, t in enumerate(times) if cue.start - window <= t <= cue.end + window]
        if close:
            middle = (cue.start + cue.end) / 2
            near.append((min(close, key=lambda i: abs(times[i] - middle)), cue))
    return near
