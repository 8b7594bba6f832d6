"""Short drills beside the protocol episodes: reading drills (captions) and answer drills.

A reading drill shows a handful of labelled frames and the question, and its reply is the honest
``<think>`` of a protocol reply; an answer drill shows no frames at all, only the question and a
scripted reading, and trains the step from what was read to the answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal

import torch

from recipes.tiny.curriculum.episodes import (
    AnswerForm,
    CurriculumError,
    Trajectory,
    answer_reply,
    describe_seen,
    needed_needles,
    needles_of,
)
from vmtr import protocol
from vmtr.config import ProtocolSettings
from vmtr.eval.datasets import QAItem
from vmtr.policies.conversation import IGNORE
from vmtr.tools.select import first_turn_frames

CaptionLayout = Literal["window", "first-turn"]
"""Which frames a reading drill shows: ``caption_frames`` consecutive pool frames (mostly around
the needles), or the protocol's uniform first-turn frames (16, a fifth of the time 32), where the
border shows on a few scattered, labelled frames. Measured on the colour warm start, whose tower
separates border frames from the rest linearly (100 %): after window drills and protocol episodes
its first reply named the border's frames exactly in 5.5 % of held-out items and overlapped them
in 24.5 % (chance), so binding a frame's look to its label on the first turn is drilled apart."""


def plan_caption(
    item: QAItem,
    pool: Sequence[float],
    frames: int,
    rng: random.Random,
    answer_form: AnswerForm = "letter",
    layout: CaptionLayout = "window",
) -> Trajectory:
    """A short reading drill: ``frames`` consecutive pool frames (or, with ``layout``
    ``first-turn``, the first turn's uniform frames), labelled as the protocol labels
    them, then the question; the reply is the honest ``<think>`` of a protocol reply (border
    frames, needles) and, when every needle the question needs is in view, the answer.

    Much shorter than a protocol episode (no system prompt, no rules, a handful of frames), so
    the model sees many more frames to read per second of training; the protocol episodes then
    teach the turn structure around the same reply text. Most windows hold every needle; the rest
    are anywhere in the pool and may show nothing.
    """
    if item.answer is None:
        raise CurriculumError(f"item {item.id} has no answer")
    n = len(pool)
    k = min(frames, n)
    needed = sorted(x["pool_index"] for x in needed_needles(item))
    lo, hi = max(0, needed[-1] - k + 1), min(needed[0], n - k)
    start = rng.randint(lo, hi) if lo <= hi and rng.random() < 0.8 else rng.randint(0, n - k)
    shown = list(range(start, start + k))
    if layout == "first-turn":
        shown = first_turn_frames(n, 32 if rng.random() < 0.2 else 16)
    settings = ProtocolSettings()
    content: list[dict[str, Any]] = []
    for index in shown:
        content.append({"type": "text", "text": protocol.frame_label(index, pool[index], settings)})
        content.append({"type": "image", "frame": index, "timestamp": float(pool[index])})
        content.append({"type": "text", "text": "\n"})
    content.append({"type": "text", "text": question_block(item)})
    seen_text = describe_seen(item, set(shown))
    if set(needed) <= set(shown):
        reply = answer_reply(seen_text, item, False, answer_form)
    else:
        reply = f"<think>{seen_text}</think>"
    messages = [{"role": "user", "content": content}, protocol.assistant_message(reply)]
    return Trajectory(messages, [False], [], settings)


def question_block(item: QAItem) -> str:
    """The question and its lettered options, as the drills show them after any frames."""
    header = f"Question: {item.question.strip()}\nOptions:"
    return "\n".join([header, *protocol.format_options(item.options)])


def plan_answer_drill(item: QAItem, answer_form: AnswerForm = "letter") -> Trajectory:
    """A text-only drill for the last step of an answer: the question and options, then a reply
    whose ``<think>`` names every needle (as a reply does once all were seen) and answers.

    Measured on a warm start that reads colours (82 % teacher-forced): given that scripted
    ``<think>``, the answer letter was right 11 % of the time, so matching what was read to
    the option's letter is a separate skill. It needs no frames, so these examples are short;
    only the answer carries loss (see `answer_only`).
    """
    if item.answer is None:
        raise CurriculumError(f"item {item.id} has no answer")
    seen = {n["pool_index"] for n in needles_of(item)}
    reply = answer_reply(describe_seen(item, seen), item, False, answer_form)
    messages = [
        {"role": "user", "content": [{"type": "text", "text": question_block(item)}]},
        protocol.assistant_message(reply),
    ]
    return Trajectory(messages, [False], [], ProtocolSettings())


def between_tags(ids: torch.Tensor, open_id: int, close_id: int) -> torch.Tensor:
    """True at the tokens strictly between an ``open_id`` tag and its ``close_id``."""
    inside = torch.cumsum((ids == open_id).long() - (ids == close_id).long(), 0) > 0
    return inside & (ids != open_id)


def answer_only(
    ids: torch.Tensor,
    labels: torch.Tensor,
    open_id: int,
    close_id: int,
    with_close: bool = False,
) -> torch.Tensor:
    """``labels`` kept only strictly between ``<answer>`` and ``</answer>``; ``with_close``
    keeps ``</answer>`` too: a needle answer is words, and must learn where it stops."""
    keep = between_tags(ids, open_id, close_id)
    if with_close:
        keep |= ids == close_id
    return torch.where(keep, labels, torch.full_like(labels, IGNORE))
