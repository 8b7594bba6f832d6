"""The Video-MTR turn protocol: prompts, the strict output parser and the last-turn rule.

Each turn the model sees a user message with some frames of the video (named by their index in
the frame pool) and must reply with exactly one of

    <think>...</think><answer>X</answer>
    <think>...</think><retrieve>s, e</retrieve>

The prompts carry the fields of the released Video-MTR code (turn number, frame count and pool
indices, one `frame_idx:i` line per frame, the question, the options, a note on what the model may
do, the format rule, the highest frame index); the wording is vmtr's own. The long-context mode
(`vmtr.agent.long_context`) alone puts one label before a group of consecutive frames
(`frame_idx:8-11`), as Video-XL-2 puts one timestamp before every 4 frames. The parser is as strict
as the released one: anything else is an invalid turn, which uses up a turn and is explained to the
model in the next message. Messages are plain JSON-able dicts in the Hugging Face chat format, with
frames as ``{"type": "image", "frame": pool_index}`` placeholders that the model backend resolves.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vmtr.config import ProtocolSettings

Message = dict[str, Any]
SubtitleLine = tuple[int, float, float, str]
"""(pool index of the shown frame it is nearest, start s, end s, text) of one subtitle line."""
ErrorKind = Literal[
    "format", "retrieve_format", "retrieve_range", "answer_option", "retrieve_on_last_turn"
]

_ANSWER_RE = re.compile(r"^\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$", re.DOTALL)
RETRIEVE_RE = re.compile(r"^\s*<think>(.*?)</think>\s*<retrieve>(.*?)</retrieve>\s*$", re.DOTALL)
_RANGE_RE = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*$")
_LETTER_RE = re.compile(r"^\(?([A-Za-z])\)?(?:[.:)]\s*.*)?$", re.DOTALL)
_OPTION_RE = re.compile(r"^\s*\(?([A-Z])[.:)]\s*")

ANSWER_SHAPE = "<think>your reasoning</think><answer>your answer</answer>"
RETRIEVE_SHAPE = "<think>your reasoning</think><retrieve>start, end</retrieve>"


@dataclass(frozen=True)
class Answer:
    """The model committed to an answer; the episode ends."""

    answer: str
    think: str
    kind: Literal["answer"] = "answer"


@dataclass(frozen=True)
class Retrieve:
    """The model asked for frames from pool indices ``start..end`` (inclusive)."""

    start: int
    end: int
    think: str
    kind: Literal["retrieve"] = "retrieve"


@dataclass(frozen=True)
class Invalid:
    """The reply broke the protocol; ``message`` is what the model is told next turn."""

    error: ErrorKind
    message: str
    kind: Literal["invalid"] = "invalid"


Action = Answer | Retrieve | Invalid


def option_letters(options: Sequence[str] | None) -> list[str]:
    """Letters of the options ("A. red" -> "A"); falls back to A, B, C... for unlabelled ones."""
    if not options:
        return []
    letters = []
    for i, text in enumerate(options):
        match = _OPTION_RE.match(text)
        letters.append(match.group(1) if match else chr(ord("A") + i))
    return letters


def _plain(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


def option_text(option: str) -> str:
    """An option without its letter: "B. blue" -> "blue"."""
    return _OPTION_RE.sub("", option, count=1).strip()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _mentions(words: Sequence[str], phrase: Sequence[str]) -> bool:
    n = len(phrase)
    return n > 0 and any(list(words[i : i + n]) == list(phrase) for i in range(len(words) - n + 1))


def option_by_text(body: str, options: Sequence[str]) -> str | None:
    """The letter of the option a free answer names; None if it names none or several.

    An answer that repeats one option's text (case, spacing and a final full stop aside) names
    it. Otherwise an answer that mentions exactly one option's words, as a whole-word phrase,
    names that one ("a blue circle" names "B. blue" among colours), the rule VLMEvalKit's
    `can_infer_text` applies to free answers. An answer that mentions two options names neither,
    so listing every option never scores. Failing both, a short answer that is a whole-word
    phrase of exactly one option names it ("the red cross" for "C. the red cross came first");
    one that fits several ("red" among "the red cross ..." and "the red square ...") names none.
    """
    letters = option_letters(options)
    texts = [option_text(text) for text in options]
    wanted = _plain(body)
    exact = [letter for letter, text in zip(letters, texts, strict=True) if _plain(text) == wanted]
    if exact:
        return exact[0] if len(exact) == 1 else None
    words = _words(body)
    named = [
        letter
        for letter, text in zip(letters, texts, strict=True)
        if _mentions(words, _words(text))
    ]
    if named:
        return named[0] if len(named) == 1 else None
    inside = [
        letter
        for letter, text in zip(letters, texts, strict=True)
        if _mentions(_words(text), words)
    ]
    return inside[0] if len(inside) == 1 else None


def format_options(options: Sequence[str]) -> list[str]:
    """Options as "A. text" strings, labelling any that arrive without a letter."""
    letters = option_letters(options)
    return [
        text.strip() if _OPTION_RE.match(text) else f"{letter}. {text.strip()}"
        for letter, text in zip(letters, options, strict=True)
    ]


def parse_reply(
    text: str,
    *,
    max_index: int,
    options: Sequence[str] | None = None,
    last_turn: bool = False,
) -> Action:
    """Parse one model reply into an action, strictly, as the released parser does.

    ``max_index`` is the highest valid pool index. With options, an answer must name one of them:
    by letter ("B", "B.", "(B)" and "B. full option text" are all read as "B") or by naming
    exactly one option's text (`option_by_text`: "blue" and "a blue circle" are both read as the
    letter of "B. blue"). On the last turn a
    retrieve is invalid because no turn is left to show its frames.
    """
    answer = _ANSWER_RE.match(text)
    if answer:
        think, body = answer.group(1).strip(), answer.group(2).strip()
        if not options:
            if not body:
                return Invalid("answer_option", "the answer tag is empty.")
            return Answer(body, think)
        letters = option_letters(options)
        letter_match = _LETTER_RE.match(body)
        letter = letter_match.group(1).upper() if letter_match else None
        if letter not in letters:
            letter = option_by_text(body, options)
        if letter is None:
            allowed = ", ".join(letters)
            return Invalid(
                "answer_option",
                f"the answer must be one option's letter ({allowed}) or its text, "
                f"got {body[:40]!r}.",
            )
        return Answer(letter, think)
    retrieve = RETRIEVE_RE.match(text)
    if retrieve:
        if last_turn:
            return Invalid("retrieve_on_last_turn", "no turns are left for new frames; answer now.")
        think, body = retrieve.group(1).strip(), retrieve.group(2)
        numbers = _RANGE_RE.match(body)
        if not numbers:
            return Invalid(
                "retrieve_format",
                f"the retrieve tag must hold two frame indices like '3, 10', got {body[:40]!r}.",
            )
        start, end = int(numbers.group(1)), int(numbers.group(2))
        if not 0 <= start <= end <= max_index:
            return Invalid(
                "retrieve_range",
                f"the range must satisfy 0 <= start <= end <= {max_index}, got {start}, {end}.",
            )
        return Retrieve(start, end, think)
    shapes = ANSWER_SHAPE if last_turn else f"{ANSWER_SHAPE} or {RETRIEVE_SHAPE}"
    return Invalid("format", f"the reply must be exactly {shapes}.")


def system_message(settings: ProtocolSettings) -> Message:
    """The system prompt: what the assistant does and that the turn budget is hard."""
    text = (
        "You are an assistant that studies videos to answer questions about them. Each turn you "
        "see frames sampled from the video, each labelled with its frame index. When the frames "
        "you have are not enough, you may request more frames from a range of frame indices. "
        f"You have at most {settings.max_turns} turns and must give your final answer by the "
        "last one."
    )
    return {"role": "system", "content": [{"type": "text", "text": text}]}


def frame_label(index: int, timestamp: float, settings: ProtocolSettings) -> str:
    """The text put before each frame's image; timestamps only when the setting asks."""
    if settings.label_timestamps:
        return f"frame_idx:{index} (time {timestamp:.1f}s), "
    return f"frame_idx:{index}, "


def group_label(
    indices: Sequence[int], timestamps: Sequence[float], settings: ProtocolSettings
) -> str:
    """The text put before a group of consecutive frames that share one label: ``frame_idx:8-11``
    names the first and last pool index (a group of one gets `frame_label`)."""
    if len(indices) == 1:
        return frame_label(indices[0], timestamps[0], settings)
    first, last = indices[0], indices[-1]
    if settings.label_timestamps:
        return f"frame_idx:{first}-{last} (time {timestamps[0]:.1f}-{timestamps[-1]:.1f}s), "
    return f"frame_idx:{first}-{last}, "


def user_message(
    *,
    turn: int,
    frames: Sequence[int],
    timestamps: Sequence[float],
    question: str,
    options: Sequence[str] | None,
    pool_size: int,
    settings: ProtocolSettings,
    error: str | None = None,
    frames_per_label: int = 1,
    subtitles: Sequence[SubtitleLine] | None = None,
) -> Message:
    """One user turn: the new frames (possibly none), the question and the rules for replying.

    ``timestamps`` are the pool timestamps of ``frames``. ``error`` explains why the previous reply
    was rejected; such a turn carries no new frames. ``frames_per_label`` consecutive frames share
    one `group_label` and one line (1, the Video-MTR protocol: a label and a line per frame); it
    is meant for runs of consecutive pool indices, as the long-context mode shows. ``subtitles``
    (None: the run shows none) are the subtitle lines near this turn's frames, put after the
    frames (`subtitle_text`).
    """
    if frames_per_label < 1:
        raise ValueError(f"frames_per_label must be at least 1, got {frames_per_label}")
    last = turn >= settings.max_turns
    content: list[dict[str, Any]] = []
    lines = [f"Turn {turn} of {settings.max_turns}."]
    if error:
        lines.append(f"Your previous reply could not be used: {error}")
    if frames:
        listed = ", ".join(str(i) for i in frames)
        lines.append(f"Here are {len(frames)} frames from the video, frame indices [{listed}]:")
    else:
        lines.append("No new frames are shown this turn.")
    content.append({"type": "text", "text": "\n".join(lines) + "\n"})
    if len(frames) != len(timestamps):
        raise ValueError(f"{len(frames)} frames but {len(timestamps)} timestamps")
    for first in range(0, len(frames), frames_per_label):
        group = frames[first : first + frames_per_label]
        times = timestamps[first : first + frames_per_label]
        content.append({"type": "text", "text": group_label(group, times, settings)})
        for index, ts in zip(group, times, strict=True):
            content.append({"type": "image", "frame": int(index), "timestamp": float(ts)})
        content.append({"type": "text", "text": "\n"})
    if subtitles is not None:
        content.append({"type": "text", "text": subtitle_text(subtitles, settings)})
    tail = [f"Question: {question.strip()}"]
    if options:
        tail.append("Options:")
        tail.extend(format_options(options))
    if last:
        tail.append(
            "This is your last turn: no more frames can be requested, so give your answer now."
        )
        tail.append(f"Reply exactly in this form: {ANSWER_SHAPE}")
    else:
        tail.append(
            "If the frames so far are not enough, request more frames from a range of frame "
            "indices; otherwise answer the question."
        )
        tail.append(f"Reply exactly in one of these forms: {ANSWER_SHAPE} or {RETRIEVE_SHAPE}")
    if options:
        # (the wording the bundled model was trained on; the parser also takes an option's text)
        tail.append("Inside the answer tag put only the letter of the chosen option.")
    tail.append(f"Frame indices run from 0 to {pool_size - 1}.")
    content.append({"type": "text", "text": "\n".join(tail)})
    return {"role": "user", "content": content}


def subtitle_text(lines: Sequence[SubtitleLine], settings: ProtocolSettings) -> str:
    """The subtitle block of a turn: one line per subtitle, named by the frame it falls near
    (with its times when frames are labelled with theirs), or a sentence saying there are none."""
    if not lines:
        return "No subtitles fall near these frames.\n"
    rows = ["Subtitles spoken near these frames:"]
    for index, start, end, text in lines:
        when = f" ({start:.1f}-{end:.1f}s)" if settings.label_timestamps else ""
        rows.append(f"frame_idx:{index}{when}: {text}")
    return "\n".join(rows) + "\n"


def assistant_message(text: str) -> Message:
    """The model's reply as a chat message, kept verbatim."""
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def frames_in(message: Message) -> list[int]:
    """Pool indices of the frame placeholders in a message, in order."""
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [part["frame"] for part in content if part.get("type") == "image"]
