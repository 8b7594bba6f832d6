"""Subtitle files in the benchmarks' own forms (and the usual damage) read into timed lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmtr.tools.subtitles import Cue, cues_near, find_subtitles, parse_subtitles, read_subtitles

FIXTURES = Path(__file__).parents[1] / "eval" / "fixtures"


def test_videomme_font_tags_are_dropped() -> None:
    cues = read_subtitles(FIXTURES / "videomme/subtitle/fFjv93ACGo8.srt")
    assert [c.text for c in cues] == [
        "In Germany the first Christmas trees",
        "were hung with apples, candles and berries.",
        "Berries were the most numerous.",
    ]
    assert (cues[1].start, cues[1].end) == (3.2, 6.9)


def test_videomathqa_srt_multiline_cue_is_one_line() -> None:
    cues = read_subtitles(FIXTURES / "videomathqa/subtitles/kT3a9bXqL2w.srt")
    assert len(cues) == 4
    assert cues[1] == Cue(3.0, 5.0, "Angle ABC measures one hundred and twenty degrees.")


def test_damaged_srt_still_reads() -> None:
    """A byte-order mark, CRLF ends, a missing cue number, '.' before the milliseconds, extra
    blank lines and italics tags, in one file, out of time order."""
    text = (
        "\ufeff1\r\n00:00:05.500 --> 00:00:07,000\r\n<i>second</i> line\r\n\r\n\r\n"
        "00:00:01,000 --> 00:00:02,000\r\nfirst line\r\n\r\n"
        "3\r\n00:01:00,250 --> 00:01:02,000\r\nlast {\\an8}line\r\n"
    )
    cues = parse_subtitles(text, fmt="srt")
    assert [(c.start, c.text) for c in cues] == [
        (1.0, "first line"),
        (5.5, "second line"),
        (60.25, "last line"),
    ]


def test_webvtt_and_latin1(tmp_path: Path) -> None:
    path = tmp_path / "clip.vtt"
    path.write_bytes("WEBVTT\n\n00:01.000 --> 00:02.500\nun caf\xe9\n".encode("latin-1"))
    assert read_subtitles(path) == [Cue(1.0, 2.5, "un caf\xe9")]


def test_empty_file_has_no_lines_and_garbage_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.srt"
    empty.write_text("\n\n")
    assert read_subtitles(empty) == []
    garbage = tmp_path / "garbage.srt"
    garbage.write_text("this is not\na subtitle file\n")
    with pytest.raises(ValueError, match=r"garbage\.srt: no timed subtitle lines"):
        read_subtitles(garbage)
    with pytest.raises(ValueError, match=r"missing\.srt: cannot read subtitles"):
        read_subtitles(tmp_path / "missing.srt")


def test_find_subtitles_tries_folders_and_extensions(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "v1.vtt").write_text("WEBVTT\n")
    assert find_subtitles([tmp_path / "a", tmp_path / "b"], "v1") == tmp_path / "b" / "v1.vtt"
    assert find_subtitles([tmp_path / "a", tmp_path / "b"], "v2") is None


def test_cues_near_frames() -> None:
    cues = [Cue(0.0, 2.5, "a"), Cue(3.0, 5.0, "b"), Cue(6.0, 8.0, "c"), Cue(9.5, 11.5, "d")]
    times = [0.0, 4.0, 9.2]
    # window 0: only the cues on screen at a frame (lmms-eval's rule)
    assert [(i, c.text) for i, c in cues_near(cues, times, 0.0)] == [(0, "a"), (1, "b")]
    # one second either side also reaches "d" (starts 0.3 s after the frame at 9.2 s), not "c"
    assert [(i, c.text) for i, c in cues_near(cues, times, 1.0)] == [
        (0, "a"),
        (1, "b"),
        (2, "d"),
    ]
    # a cue near two frames is named once, by the frame nearest its middle
    assert [(i, c.text) for i, c in cues_near(cues, [2.0, 4.5], 1.5)] == [
        (0, "a"),
        (1, "b"),
        (1, "c"),
    ]
    with pytest.raises(ValueError, match="window"):
        cues_near(cues, times, -1.0)
