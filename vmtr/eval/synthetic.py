"""The synthetic long-video QA benchmark: answers hide in one pool frame of a long video.

Each video is long relative to the frame budget. A white border (the *cue*) frames the video for
about 8 of the 64 pool frames, so the 16 uniform first-turn frames always catch part of it; inside
the cue, one to four coloured shapes (the *needles*) are each shown for about one pool interval,
so a single uniform look usually misses them while a retrieve of the cue interval finds them. This
is the situation multi-turn segment selection (Video-MTR, arXiv 2508.20478) exists for, in a size
that a tiny model trains on with two CPU cores.

Everything is a pure function of ``(seed, item index)``: item ``i`` is the same whatever the
number of items. Questions are planned from one random stream and the picture (background,
distractors) drawn from another, so changing how frames look never changes the questions.

The output folder has ``videos/<id>.mp4`` and ``annotations.json`` in the shape of Video-MTR's
training file, so `vmtr.eval.datasets.load_video_mtr_json` reads it for training and evaluation.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vmtr.tools.encode import write_video

QuestionKind = Literal["colour", "shape", "order", "count"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 200, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
"""Needle colours: fully saturated, so they survive H.264's 4:2:0 chroma and stand out from grey."""

SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "cross")
LETTERS = "ABCDEFGHIJ"
DATA_SOURCE = "vmtr-synthetic"
BORDER_COLOUR = (255, 255, 255)


class SyntheticSettings(BaseModel):
    """What to generate; the pool numbers mirror the protocol so needles land on pool frames."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_items: int = Field(100, ge=1, description="Number of questions (one video each).")
    seed: int = Field(0, ge=0, description="Item i depends only on (seed, i).")
    minutes: float = Field(2.0, gt=0, description="Length of every video in minutes.")
    frame_size: int = Field(112, ge=32, description="Width and height in pixels (even).")
    fps: float = Field(4.0, gt=0, description="Video frame rate; low keeps files small.")
    pool_size: int = Field(64, ge=2, description="Protocol pool size the needles are planned on.")
    pool_max_fps: float = Field(1.0, gt=0, description="Protocol pool rate ceiling (frames/s).")
    first_turn_frames: int = Field(16, ge=1, description="Uniform frames the protocol shows first.")
    cue_width: int = Field(8, ge=1, description="Pool frames during which the border is shown.")
    needle_span: float = Field(
        0.9, gt=0, lt=1, description="Share of its pool interval during which a needle is shown."
    )
    n_options: int = Field(4, ge=2, le=4, description="Options per question.")
    kinds: tuple[QuestionKind, ...] = Field(
        ("colour", "shape", "order", "count"), min_length=1, description="Cycled over items."
    )
    colours: tuple[str, ...] = Field(tuple(COLOURS), description="Needle colour names in use.")
    colour_needles: int = Field(
        1,
        ge=1,
        le=len(SHAPES),
        description="Most needles in a colour item (1 to this many, uniform). With several, "
        "each has its own shape, the question names the shape it asks about, and no option "
        "names another needle's colour, so reading colours alone answers it.",
    )
    avoid_first_turn: bool = Field(
        False,
        description="Put needles only on pool frames turn 1 does not show (harder than uniform).",
    )
    distractors: int = Field(3, ge=0, description="Grey moving shapes per video.")
    needle_scale: float = Field(0.3, gt=0.05, lt=0.6, description="Needle side / frame side.")
    crf: int | None = Field(
        28,
        ge=0,
        le=51,
        description="H.264 quality (None: encoder default). 28 keeps a 2-minute video near "
        "120 KiB; the saturated needles and the white border survive it unchanged.",
    )

    @field_validator("frame_size")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("frame_size must be even (H.264 4:2:0 needs even sides)")
        return value

    @field_validator("colours")
    @classmethod
    def _known_colours(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in value if c not in COLOURS]
        if unknown:
            raise ValueError(f"unknown colours {unknown}; choose from {list(COLOURS)}")
        if len(set(value)) != len(value):
            raise ValueError("colours must be distinct")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SyntheticSettings:
        # The frame shown at a pool time must not also carry a needle or cue edge meant for a
        # neighbour. Pool times are at least 1/pool_max_fps apart and a cue edge lies half an
        # interval from the nearest one, so a video frame must last under half an interval.
        if self.fps <= 2 * self.pool_max_fps:
            raise ValueError("fps must exceed 2 * pool_max_fps, or marks bleed into neighbours")
        if "colour" in self.kinds and len(self.colours) < self.n_options + self.colour_needles - 1:
            raise ValueError(
                "colour questions need at least n_options + colour_needles - 1 colours "
                f"({self.n_options + self.colour_needles - 1}), have {len(self.colours)}"
            )
        if "colour" in self.kinds and self.colour_needles > self.cue_width:
            raise ValueError("colour_needles must not exceed cue_width")
        if {"order", "count"} & set(self.kinds) and len(self.colours) < 2:
            raise ValueError("order and count questions need at least two colours")
        if self.n_options > self.cue_width and "count" in self.kinds:
            raise ValueError("count questions need cue_width >= n_options")
        if self.pool_count < self.cue_width:
            raise ValueError(
                f"a {self.minutes}-minute video has only {self.pool_count} pool frames, "
                f"fewer than cue_width={self.cue_width}"
            )
        return self

    @property
    def frame_count(self) -> int:
        """Frames per video; the duration is rounded to whole frames."""
        return max(1, round(self.minutes * 60 * self.fps))

    @property
    def duration(self) -> float:
        """Video duration in seconds (frame_count / fps)."""
        return self.frame_count / self.fps

    @property
    def pool_count(self) -> int:
        """Pool frames the protocol takes from a video of this duration."""
        return pool_count(self.duration, self.pool_size, self.pool_max_fps)


# ---------------------------------------------------------------------------------------------
# Pool arithmetic (mirrors vmtr.tools.video.pool_timestamps and the first-turn rule)


def pool_count(duration: float, pool_size: int = 64, max_fps: float = 1.0) -> int:
    """Pool frames for a video: ``min(pool_size, floor(duration * max_fps))``, at least 1."""
    return max(1, min(pool_size, math.floor(duration * max_fps + 1e-9)))


def pool_times(duration: float, n: int) -> np.ndarray:
    """Centres of ``n`` equal intervals over the video: where the protocol samples its pool."""
    return (np.arange(n) + 0.5) * duration / n


def first_turn_points(n: int, k: int) -> np.ndarray:
    """Unrounded linspace positions of the first-turn frames over an ``n``-frame pool."""
    return np.linspace(0, n - 1, min(k, n))


def first_turn_set(n: int, k: int) -> set[int]:
    """Pool indices the first turn shows (linspace over the pool, rounded)."""
    return {int(i) for i in np.round(first_turn_points(n, k))}


def cue_starts(n: int, width: int, k: int) -> list[int]:
    """Cue start indices whose window certainly holds a first-turn frame.

    A window qualifies when it holds both the floor and the ceiling of some linspace position,
    so the guarantee does not depend on how the protocol rounds.
    """
    points = first_turn_points(n, k)
    lows, highs = np.floor(points).astype(int), np.ceil(points).astype(int)
    return [c for c in range(n - width + 1) if np.any((lows >= c) & (highs <= c + width - 1))]


# ---------------------------------------------------------------------------------------------
# Planning: what each item asks and where its needles go


@dataclass(frozen=True)
class Needle:
    """One coloured shape, shown over ``[start, end]`` seconds at pixel box ``(x, y, size)``."""

    colour: str
    shape: str
    pool_index: int
    start: float
    end: float
    x: int
    y: int
    size: int

    def label(self) -> str:
        return f"the {self.colour} {self.shape}"


@dataclass(frozen=True)
class ItemPlan:
    """Everything about one item except the picture's incidental detail."""

    index: int
    id: str
    kind: str
    question: str
    options: list[str]
    answer: str
    cue_first: int
    cue_last: int
    cue_window: tuple[float, float]
    needles: list[Needle]
    first_turn_needles: int


def item_streams(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent random streams for planning and for drawing, from ``(seed, index)`` only."""
    plan_seq, scene_seq = np.random.SeedSequence([seed, index]).spawn(2)
    return np.random.default_rng(plan_seq), np.random.default_rng(scene_seq)


def item_id(seed: int, index: int) -> str:
    """Stable problem id, also the video's file name."""
    return f"syn{seed}-{index:05d}"


def _pick(rng: np.random.Generator, items: Sequence[str], k: int) -> list[str]:
    return [items[int(i)] for i in rng.choice(len(items), size=k, replace=False)]


def _shuffled_options(
    rng: np.random.Generator, correct: str, wrong: list[str]
) -> tuple[list[str], str]:
    """Put the correct text among the wrong ones in random order; return texts and its letter."""
    texts = [correct, *wrong]
    order = rng.permutation(len(texts))
    shuffled = [texts[int(i)] for i in order]
    return shuffled, LETTERS[shuffled.index(correct)]


CUE_PHRASE = "At some point a white border framed the video."

Question = tuple[str, list[str], str, list[tuple[str, str]]]
"""Question text, option texts, correct letter, and the (colour, shape) of each needle in order."""


NUMBERS = ("zero", "one", "two", "three", "four")
"""Counts as words, for question text (the shapes are at most four)."""


def _colour_question(rng: np.random.Generator, s: SyntheticSettings) -> Question:
    # (one needle draws nothing more, so single-needle sets keep their items)
    count = int(rng.integers(1, s.colour_needles + 1)) if s.colour_needles > 1 else 1
    if count == 1:
        colour = _pick(rng, s.colours, 1)[0]
        wrong = _pick(rng, [c for c in s.colours if c != colour], s.n_options - 1)
        shape = _pick(rng, SHAPES, 1)[0]
        text = f"{CUE_PHRASE} While it was shown, a shape appeared briefly. What colour was it?"
        options, answer = _shuffled_options(rng, colour, wrong)
        return text, options, answer, [(colour, shape)]
    # Several needles, distinct in colour and in shape; the first drawn is asked about, by its
    # shape. The wrong options avoid every needle's colour, so the question has one answer for
    # a model that reads colours only, once it has seen the needle asked about.
    colours, shapes = _pick(rng, s.colours, count), _pick(rng, SHAPES, count)
    wrong = _pick(rng, [c for c in s.colours if c not in colours], s.n_options - 1)
    objects = list(zip(colours, shapes, strict=True))
    order = rng.permutation(count)  # the asked needle anywhere in time
    text = (
        f"{CUE_PHRASE} While it was shown, {NUMBERS[count]} shapes appeared briefly, one at a "
        "time. "
        f"What colour was the {shapes[0]}?"
    )
    options, answer = _shuffled_options(rng, colours[0], wrong)
    return text, options, answer, [objects[int(i)] for i in order]


def _shape_question(rng: np.random.Generator, s: SyntheticSettings) -> Question:
    shape = _pick(rng, SHAPES, 1)[0]
    wrong = _pick(rng, [x for x in SHAPES if x != shape], s.n_options - 1)
    colour = _pick(rng, s.colours, 1)[0]
    text = f"{CUE_PHRASE} While it was shown, a coloured shape appeared briefly. What shape was it?"
    options, answer = _shuffled_options(rng, shape, wrong)
    return text, options, answer, [(colour, shape)]


def _order_question(rng: np.random.Generator, s: SyntheticSettings) -> Question:
    # Two needles differing in colour and in shape; the wrong options swap their attributes, so
    # seeing only one needle is not enough and colour must be bound to shape.
    (c1, c2), (s1, s2) = _pick(rng, s.colours, 2), _pick(rng, SHAPES, 2)
    swapped = [f"the {c1} {s2} came first", f"the {c2} {s1} came first"]
    wrong = [f"the {c2} {s2} came first", *swapped[: s.n_options - 2]]
    text = (
        f"{CUE_PHRASE} While it was shown, two coloured shapes appeared briefly, one after "
        "the other. Which came first?"
    )
    options, answer = _shuffled_options(rng, f"the {c1} {s1} came first", wrong)
    return text, options, answer, [(c1, s1), (c2, s2)]


def _count_question(rng: np.random.Generator, s: SyntheticSettings) -> Question:
    # Options stay in numeric order; the count is uniform, so the letter is too. The shapes are
    # distinct (colour, shape) pairs: two identical ones in neighbouring pool slots would look
    # like one shape that stayed on screen to a viewer of the full-rate video.
    count = int(rng.integers(1, s.n_options + 1))
    pairs = [(c, shape) for c in s.colours for shape in SHAPES]
    objects = [pairs[int(i)] for i in rng.choice(len(pairs), size=count, replace=False)]
    text = (
        f"{CUE_PHRASE} While it was shown, coloured shapes appeared briefly, one at a time. "
        "How many appeared?"
    )
    options = [str(i) for i in range(1, s.n_options + 1)]
    return text, options, LETTERS[count - 1], objects


QUESTION_MAKERS: dict[str, Callable[[np.random.Generator, SyntheticSettings], Question]] = {
    "colour": _colour_question,
    "shape": _shape_question,
    "order": _order_question,
    "count": _count_question,
}


def _needle_slots(
    rng: np.random.Generator, cue: range, hidden: set[int], count: int, avoid: bool
) -> list[int]:
    """Distinct pool indices in the cue for ``count`` needles, in time order."""
    slots = [i for i in cue if not avoid or i in hidden]
    return sorted(int(i) for i in rng.choice(slots, size=count, replace=False))


def plan_item(index: int, settings: SyntheticSettings) -> ItemPlan:
    """Decide the question, the cue interval and every needle of item ``index``."""
    rng, _ = item_streams(settings.seed, index)
    s = settings
    kind = s.kinds[index % len(s.kinds)]
    question, option_texts, answer, objects = QUESTION_MAKERS[kind](rng, s)

    n, duration = s.pool_count, s.duration
    step = duration / n
    shown = first_turn_set(n, s.first_turn_frames)
    hidden = set(range(n)) - shown
    starts = cue_starts(n, s.cue_width, s.first_turn_frames)
    if s.avoid_first_turn:
        need = len(objects)
        starts = [c for c in starts if len(hidden & set(range(c, c + s.cue_width))) >= need]
    if not starts:
        raise ValueError(f"no cue placement fits {n} pool frames with these settings")
    cue_first = int(rng.choice(starts))
    cue = range(cue_first, cue_first + s.cue_width)
    slots = _needle_slots(rng, cue, hidden, len(objects), s.avoid_first_turn)

    border = border_width(s.frame_size)
    size = round(s.needle_scale * s.frame_size)
    low, high = border + 2, s.frame_size - border - 2 - size
    needles = []
    for (colour, shape), slot in zip(objects, slots, strict=True):
        centre = (slot + 0.5) * step
        half = s.needle_span * step / 2
        x, y = (int(v) for v in rng.integers(low, high + 1, size=2))
        needles.append(Needle(colour, shape, slot, centre - half, centre + half, x, y, size))

    return ItemPlan(
        index=index,
        id=item_id(s.seed, index),
        kind=kind,
        question=question,
        options=[f"{LETTERS[i]}. {text}" for i, text in enumerate(option_texts)],
        answer=answer,
        cue_first=cue.start,
        cue_last=cue.stop - 1,
        cue_window=(cue.start * step, cue.stop * step),
        needles=needles,
        first_turn_needles=sum(slot in shown for slot in slots),
    )


def relevant_needles(plan: ItemPlan) -> list[Needle]:
    """The needles the question needs: the one the right option names for colour and shape
    questions, every needle for order and count questions."""
    if plan.kind not in ("colour", "shape"):
        return plan.needles
    text = plan.options[LETTERS.index(plan.answer)].split(". ", 1)[1]
    return [n for n in plan.needles if getattr(n, plan.kind) == text]


# ---------------------------------------------------------------------------------------------
# Drawing


def border_width(frame_size: int) -> int:
    """Width of the cue border in pixels (thick enough to survive downscaling)."""
    return max(2, frame_size // 16)


@lru_cache(maxsize=256)
def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean ``size x size`` mask of a shape; each covers its box's centre."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c = size / 2
    if shape == "square":
        mask = np.ones((size, size), dtype=bool)
    elif shape == "circle":
        mask = (xx - c) ** 2 + (yy - c) ** 2 <= c**2
    elif shape == "triangle":  # apex at the top, base on the bottom edge
        mask = np.abs(xx - c) <= yy / 2
    elif shape == "cross":
        arm = size / 6
        mask = (np.abs(xx - c) <= arm) | (np.abs(yy - c) <= arm)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    mask.setflags(write=False)
    return mask


def paste(frame: np.ndarray, mask: np.ndarray, x: int, y: int, colour: Sequence[int]) -> None:
    """Paint ``mask`` at top-left ``(x, y)`` in ``colour``, clipped to the frame."""
    h, w = frame.shape[:2]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + mask.shape[1], w), min(y + mask.shape[0], h)
    if x0 >= x1 or y0 >= y1:
        return
    region = frame[y0:y1, x0:x1]
    region[mask[y0 - y : y1 - y, x0 - x : x1 - x]] = colour


def draw_border(frame: np.ndarray, width: int) -> None:
    """The cue marker: a solid white frame around the picture."""
    frame[:width], frame[-width:] = BORDER_COLOUR, BORDER_COLOUR
    frame[:, :width], frame[:, -width:] = BORDER_COLOUR, BORDER_COLOUR


@dataclass(frozen=True)
class Scene:
    """The incidental picture: a drifting muted background and grey shapes that bounce.

    No pixel noise: drifting grain made the files three to five times larger for nothing a
    model needs to learn, so the background is smooth travelling plane waves.
    """

    waves: np.ndarray  # (k, 5): amplitude, x-frequency, y-frequency, speed, phase
    tint: np.ndarray  # (3,) per-channel gain near 1: a faint colour cast, never saturated
    movers: list[tuple[str, int, int, np.ndarray, np.ndarray]]  # shape, size, grey, p0, velocity


def make_scene(rng: np.random.Generator, settings: SyntheticSettings) -> Scene:
    """Draw the incidental picture parameters of one video."""
    s = settings.frame_size
    k = 3
    waves = np.column_stack(
        [
            rng.uniform(8, 16, k),  # amplitude in grey levels
            rng.uniform(-2, 2, k) * 2 * np.pi / s,  # up to two cycles across the frame
            rng.uniform(-2, 2, k) * 2 * np.pi / s,
            rng.uniform(-1, 1, k) * 2 * np.pi / 30,  # a cycle every 30 s or slower
            rng.uniform(0, 2 * np.pi, k),
        ]
    )
    movers = []
    for _ in range(settings.distractors):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        size = int(rng.integers(s // 8, s // 4 + 1))
        grey = int(rng.integers(70, 200))
        p0 = rng.uniform(0, s - size, 2)
        velocity = rng.uniform(-s / 12, s / 12, 2)  # pixels per second
        movers.append((shape, size, grey, p0, velocity))
    return Scene(
        waves=waves,
        tint=(1 + rng.uniform(-0.06, 0.06, 3)).astype(np.float32),
        movers=movers,
    )


def background(scene: Scene, size: int, t: float) -> np.ndarray:
    """Muted RGB background at time ``t``: a sum of slowly travelling plane waves.

    Each wave sin(fx*x + fy*y + phase_t) is split as sin(a)cos(b) + cos(a)sin(b), so the whole
    sum is one small matrix product instead of a sine per pixel (several times faster).
    """
    amp, fx, fy, speed, phase = scene.waves.T
    axis = np.arange(size, dtype=np.float64)
    a = np.outer(fx, axis)  # (k, size) along x
    b = np.outer(fy, axis) + (speed * t + phase)[:, None]  # (k, size) along y
    rows = np.concatenate([amp[:, None] * np.cos(b), amp[:, None] * np.sin(b)]).T
    cols = np.concatenate([np.sin(a), np.cos(a)])
    grey = (rows @ cols).astype(np.float32) + 110.0
    # Channel by channel: a broadcast over a trailing axis of 3 is several times slower.
    rgb = np.stack([grey * gain for gain in scene.tint], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _bounce(position: np.ndarray, limit: float) -> np.ndarray:
    """Fold a free position back into ``[0, limit]`` as if it bounced off the edges."""
    period = 2 * limit
    folded = np.mod(position, period)
    return np.where(folded > limit, period - folded, folded)


def draw_movers(frame: np.ndarray, scene: Scene, t: float) -> None:
    """Paint the grey distractor shapes at their positions at time ``t``."""
    s = frame.shape[0]
    for shape, size, grey, p0, velocity in scene.movers:
        x, y = _bounce(p0 + velocity * t, s - size)
        paste(frame, shape_mask(shape, size), int(x), int(y), (grey, grey, grey))


def _shown(frame_index: int, fps: float, start: float, end: float) -> bool:
    """Whether the frame displayed over ``[k/fps, (k+1)/fps)`` overlaps ``[start, end]``."""
    return frame_index / fps <= end and (frame_index + 1) / fps > start


def render_frame(plan: ItemPlan, scene: Scene, settings: SyntheticSettings, k: int) -> np.ndarray:
    """Video frame ``k``: background, distractors, any needle on show, then the cue border."""
    fps, size = settings.fps, settings.frame_size
    t = k / fps
    frame = background(scene, size, t)
    draw_movers(frame, scene, t)
    for needle in plan.needles:
        if _shown(k, fps, needle.start, needle.end):
            mask = shape_mask(needle.shape, needle.size)
            paste(frame, mask, needle.x, needle.y, COLOURS[needle.colour])
    if _shown(k, fps, *plan.cue_window):
        draw_border(frame, border_width(size))
    return frame


def render_frames(plan: ItemPlan, settings: SyntheticSettings) -> Iterator[np.ndarray]:
    """All frames of an item's video, lazily, drawn from the item's own scene stream."""
    _, scene_rng = item_streams(settings.seed, plan.index)
    scene = make_scene(scene_rng, settings)
    for k in range(settings.frame_count):
        yield render_frame(plan, scene, settings, k)


# ---------------------------------------------------------------------------------------------
# Files


def _r(x: float) -> float:
    return round(float(x), 4)


def annotation(plan: ItemPlan, settings: SyntheticSettings, path: str) -> dict[str, Any]:
    """One entry of the annotation file, in Video-MTR's training-file shape plus extras."""
    return {
        "problem_id": plan.id,
        "problem": plan.question,
        "options": plan.options,
        "solution": f"<answer>{plan.answer}</answer>",
        "problem_type": "multiple choice",
        "path": path,
        "duration": _r(settings.duration),
        "relevant_windows": [[_r(n.start), _r(n.end)] for n in relevant_needles(plan)],
        "data_source": DATA_SOURCE,
        "kind": plan.kind,
        "cue_window": [_r(v) for v in plan.cue_window],
        "cue_pool_indices": [plan.cue_first, plan.cue_last],
        "needle_pool_indices": [n.pool_index for n in plan.needles],
        "needles": [
            {
                "colour": n.colour,
                "shape": n.shape,
                "pool_index": n.pool_index,
                "window": [_r(n.start), _r(n.end)],
                "box": [n.x, n.y, n.x + n.size, n.y + n.size],
            }
            for n in plan.needles
        ],
        "first_turn_needles": plan.first_turn_needles,
        "pool_count": settings.pool_count,
        "seed": settings.seed,
        "index": plan.index,
    }


def render_item(out_dir: str | Path, index: int, settings: SyntheticSettings) -> dict[str, Any]:
    """Plan item ``index``, write its video atomically, and return its annotation."""
    plan = plan_item(index, settings)
    rel = f"videos/{plan.id}.mp4"
    final = Path(out_dir) / rel
    tmp = final.with_name(f".{plan.id}.{os.getpid()}.tmp.mp4")
    try:
        write_video(tmp, render_frames(plan, settings), settings.fps, crf=settings.crf)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return annotation(plan, settings, rel)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def generate(
    out_dir: str | Path,
    settings: SyntheticSettings | None = None,
    *,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a split (videos + ``annotations.json`` + ``settings.json``); return the JSON path.

    ``workers > 1`` renders videos in that many spawned processes, safe whatever the caller has
    imported; like any spawn pool it needs an importable main module (a script, the CLI or
    pytest, not ``python -``). ``progress(done, total)`` is called after each item. Videos of
    an earlier, larger run in the same folder are left alone; the JSON lists only this run's.
    """
    settings = settings or SyntheticSettings()
    if workers < 1:
        raise ValueError("workers must be >= 1")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    total = settings.n_items
    job = partial(render_item, out, settings=settings)

    items: list[dict[str, Any]] = []
    if workers == 1:
        results: Iterator[dict[str, Any]] = map(job, range(total))
        items = _collect(results, total, progress)
    else:
        context = multiprocessing.get_context("spawn")
        chunk = max(1, min(16, total // (4 * workers)))
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            items = _collect(pool.map(job, range(total), chunksize=chunk), total, progress)

    write_json_atomic(out / "settings.json", settings.model_dump(mode="json"))
    path = out / "annotations.json"
    write_json_atomic(path, items)
    return path


def _collect(
    results: Iterator[dict[str, Any]], total: int, progress: Callable[[int, int], None] | None
) -> list[dict[str, Any]]:
    items = []
    for item in results:
        items.append(item)
        if progress is not None:
            progress(len(items), total)
    return items
