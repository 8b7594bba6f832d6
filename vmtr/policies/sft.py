"""Supervised warm start: teach a model the Video-MTR reply format and to read its frames.

Before RL (Video-MTR, arXiv 2508.20478) the policy must already produce well-formed turns and
say what its frames show; otherwise every rollout is invalid and the reward is flat. This recipe
writes multi-turn trajectories for synthetic items (`vmtr.eval.synthetic`) through the same
protocol code the agent runs (`vmtr.protocol` prompts and frame labels, the first-turn and
`select_segment` frame rules, `parse_reply` round-trips) and trains on the assistant's tokens
only. The labels are written to be honest about what the frames show:

- the reply's ``<think>`` says which of the frames shown so far carried the border (the cue)
  and lists the needles visible in them (from the generator's ground truth), or says none were
  seen;
- the model answers as soon as the evidence the question needs has been shown (the one needle
  for colour and shape questions, every needle for order and count questions);
- otherwise it retrieves a **random** range (or, with ``retrieve_labels``, the range between
  two first-turn frame labels picked at random): where to look is left for RL to learn, so the
  warm start does not imitate an oracle. With ``retrieve_aim`` a share of episodes instead aim
  from the border frames the reply has just named (`aimed_range`): a fixed rule on what was
  seen, never on where the needles are, which RL can keep, sharpen or drop;
- on the last turn without the evidence it must still answer; that reply says it guesses, and
  the option letter inside ``<answer>`` carries no loss (the format does), so the model is
  never trained to produce an answer it could not have known. With ``needle`` answers the guess
  is a letter drawn at random, with loss: trained without it, such a model filled its guesses
  with an invented needle, which names no option (the letter carries nothing it could know).

A share of the trajectories use a one-turn budget (16 or 32 first-turn frames), so single-turn
evaluation asks the model for something it was trained on. Departure from the paper: Video-MTR
has no SFT stage for its released model; this warm start exists because the tiny model here
starts from random weights.

Encoding matches the inference backend (`vmtr.models.qwen`) exactly: the chat template renders
the conversation, the processor runs on the whole text with all its frames (resized with the
backend's pixel budget), and its outputs are kept whole, ``mm_token_type_ids`` included: without
it Qwen2.5-VL silently falls back to 1-D positions, so a model trained without it decodes wrongly
wherever it is passed, and the reverse.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from vmtr import protocol
from vmtr.config import ModelSettings, ProtocolSettings
from vmtr.eval.datasets import QAItem, load_video_mtr_json
from vmtr.policies.tags import single_token, tag_interior
from vmtr.policies.vision_aux import (
    NeedleHeads,
    capture_merged_tokens,
    example_labels,
    frame_labels,
    merged_sizes,
)
from vmtr.tools import video as video_tools
from vmtr.tools.select import first_turn_frames, select_segment

IGNORE = -100
"""Label value that carries no loss (PyTorch's cross-entropy default)."""

MULTI_TURN = ProtocolSettings()
SINGLE_16 = ProtocolSettings(max_turns=1)
SINGLE_32 = ProtocolSettings(max_turns=1, first_turn_frames=32)


NeedleWording = Literal["frame-first", "colour-first", "shape-first"]
"""How a reply names a needle: "frame 37 red circle" (the bundled model's), "red circle at
frame 37" or "frame 37 circle in red". Colour first was tried as a way to let the colour be read
off any saturated object rather than off the one frame just named; 300 steps of it from the warm
start did not read colours better (docs/tiny-model.md). Shape first asks for the shape
where the frame-first model's attention already rests on the needle (right after the frame
number); at the colour word, where frame-first asks for it, no head looks at the needle
(`recipes/tiny/reading_anatomy.py --attribute shape`)."""

AnswerForm = Literal["letter", "text", "bridge", "needle"]
"""How a scripted reply answers: by the option's letter ("C"); by its text (" yellow"), which
the parser maps back to the letter; or by the letter after a bridge clause that ends the
``<think>`` ("... so yellow is C.", `bridge_clause`), so the letter is looked up right after
the option's text is written. Text was tried because the tiny model that reads the colour 79 %
of the time picked the matching letter only 27 % of the time; it taught the colour but broke
the protocol. The bridge is learned once the model can find a token by its identity (the
pretexts of `vmtr.policies.pretext`); learned from text alone, it cost the protocol, so it is
trained alongside protocol episodes (``pretext_weight``). ``needle`` answers with the needle
the question asks about as the reading named it (" yellow cross"; for counts the number), which
the parser maps to the one option it mentions: the answer is the same words for colour, shape
and order questions, copied from the ``<think>`` just written, so the model never has to match
a word to a letter or choose which word of its reading a question wants. Models trained on
text answers answered that way unprompted; see docs/tiny-model.md."""

CaptionLayout = Literal["window", "first-turn"]
"""Which frames a reading drill shows: ``caption_frames`` consecutive pool frames (mostly around
the needles), or the protocol's uniform first-turn frames (16, a fifth of the time 32), where the
border shows on a few scattered, labelled frames. Measured on the colour warm start, whose tower
separates border frames from the rest linearly (100 %): after window drills and protocol episodes
its first reply named the border's frames exactly in 5.5 % of held-out items and overlapped them
in 24.5 % (chance), so binding a frame's look to its label on the first turn is drilled apart."""

NeedleGuess = Literal["random", "masked"]
"""How a needle-form reply guesses: a random letter with loss (the default), or the answer's
letter with no loss, as the other forms do (how the bundled model's first needle stage ran,
before the random letter; kept so `recipes/tiny/train_tiny.sh` reproduces it)."""


def trains_guesses(form: AnswerForm, needle_guess: NeedleGuess) -> bool:
    """Whether a guess answers a random letter that carries loss (else the answer's, masked)."""
    return form == "needle" and needle_guess == "random"


def answer_body(item: QAItem, form: AnswerForm = "letter") -> str:
    """The inside of ``<answer>`` for ``item`` in ``form``. The text keeps a leading space
    because the tiny tokenizer's words carry one: " yellow" is the token the reading wrote,
    "yellow" would be split into pieces."""
    if item.answer is None:
        raise SFTError(f"item {item.id} has no answer")
    if form in ("letter", "bridge"):
        return item.answer
    if form == "needle" and item.categories.get("kind") != "count":
        first = min(needed_needles(item), key=lambda n: n["pool_index"])
        return f" {first['colour']} {first['shape']}"
    return f" {protocol.option_text(item.options[item.letters.index(item.answer)])}"


class SFTError(RuntimeError):
    """A user-facing failure of the recipe (bad data folder, no checkpoint to resume)."""


class SFTConfig(BaseModel):
    """Everything the recipe needs; defaults are the bundled tiny model's recipe."""

    model_config = ConfigDict(extra="forbid")

    data: list[Path] = Field(description="Folders holding annotations.json (vmtr synth output).")
    out: Path = Field(description="Run folder: checkpoints, logs, frame cache, final model.")
    model: str = Field(
        "tiny-init",
        description="`tiny-init` (a fresh random tiny model), `tiny` (the bundled one) or a "
        "checkpoint folder.",
    )
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(8, ge=1, description="Examples per optimizer step.")
    micro_batch: int = Field(1, ge=1, description="Examples per forward pass (padded together).")
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup: int = Field(100, ge=0, description="Linear warmup steps before the cosine decay.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine floor as a share of lr.")
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0
    save_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    eval_items: int = Field(40, ge=0, description="Items held out of training, asked at the end.")
    eval_every: int = Field(
        0,
        ge=0,
        description="Also ask the held-out items every N steps (0: only at the end) and keep "
        "the most accurate model so far in best/: small models trained briefly peak and dip.",
    )
    single_turn_share: float = Field(
        0.5, ge=0, le=1, description="Share of one-turn trajectories (half 16, half 32 frames)."
    )
    retrieve_width: tuple[int, int] = Field(
        (8, 16), description="Random retrieve ranges span this many pool frames (min, max)."
    )
    retrieve_block: int = Field(
        0,
        ge=0,
        description="If > 0, retrieve a random aligned block of this many pool frames instead "
        "(starts at multiples of it): fewer distinct ranges, which greedy decoding reproduces "
        "well-formed.",
    )
    retrieve_labels: bool = Field(
        False,
        description="Retrieve between two first-turn frame labels picked at random "
        "(`label_range`) instead of a random range or block: RL then only has to learn which "
        "labels to copy.",
    )
    retrieve_again: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of protocol episodes that, still without the evidence after a "
        "retrieve, retrieve again while turns remain; the others answer then, as a guess. "
        "Below 1, most episodes retrieve once and answer on the next turn.",
    )
    retrieve_aim: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of protocol episodes whose retrieves aim from the border frames "
        "they named (`aimed_range`) instead of the random rule; their range digits carry "
        "the content weight. 0 leaves all aiming to RL.",
    )
    caption_share: float = Field(
        0.0, ge=0, le=1, description="Share of examples that are short reading drills (captions)."
    )
    caption_frames: int = Field(8, ge=1, description="Consecutive frames in a reading drill.")
    caption_layout: CaptionLayout = Field(
        "window",
        description="Which frames a reading drill shows (see `CaptionLayout`); `first-turn` "
        "ignores caption_frames.",
    )
    answer_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of examples that are text-only answer drills (`plan_answer_drill`): "
        "the letter that matches a scripted reading, with loss on the letter alone.",
    )
    caption_content_loss: bool = Field(
        False,
        description="Reading drills carry loss only on what was read (colours, shapes, digits, "
        "letters; see `content_token_ids`).",
    )
    needle_wording: NeedleWording = Field(
        "frame-first", description="How replies name a needle (see `NeedleWording`)."
    )
    answer_form: AnswerForm = Field(
        "letter", description="What replies put inside <answer> (see `AnswerForm`)."
    )
    needle_guess: NeedleGuess = Field(
        "random", description="How needle-form replies guess (see `NeedleGuess`)."
    )
    content_weight: float = Field(
        1.0,
        ge=1.0,
        description="Loss weight of the content tokens (colours, shapes, digits, letters) in "
        "whole-reply examples, outside <retrieve> ranges, whose digits are random: > 1 keeps the "
        "few tokens that need the image from drowning among the format tokens.",
    )
    schedule_steps: int | None = Field(
        None,
        ge=1,
        description="Steps the warmup + cosine schedule spans (default: steps); larger stops "
        "the run part-way through a longer schedule.",
    )
    tiny_sizes: dict[str, int] = Field(
        default_factory=lambda: {"vision_depth": 4, "vision_hidden": 128},
        description="tiny_config sizes for a fresh tiny model.",
    )
    tiny_vocab: int = Field(1024, ge=300)
    max_new_tokens: int = Field(96, ge=8, description="Reply length limit in the final eval.")
    vision_aux_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the auxiliary needle loss on the vision tower's merged tokens "
        "(`vmtr.policies.vision_aux`): each token's cell is classed by the needle colour and "
        "shape covering it, or none. 0 turns it off.",
    )
    frame_aux_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the frame-level needle loss: each image's merged tokens, "
        "max-pooled, classed by the needle colour and shape the frame shows, or none. A cell "
        "sees too little of a needle to tell its shape; a frame does. 0 turns it off.",
    )
    pretext_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the text-only pretexts (`vmtr.policies.pretext`: induction and "
        "key-from-value lookup, one batch of each per step) that teach finding a token by its "
        "identity; they keep protocol episodes in the same steps. 0 turns them off.",
    )
    pretext_batch: int = Field(32, ge=1, description="Rows of each pretext per step.")

    @property
    def needle_heads(self) -> bool:
        """Whether either auxiliary vision loss is on (both train `NeedleHeads`)."""
        return self.vision_aux_weight > 0 or self.frame_aux_weight > 0


# ---------------------------------------------------------------------------------------------
# Trajectories


@dataclass
class Trajectory:
    """One scripted episode: chat messages with frame placeholders, and which replies guess."""

    messages: list[protocol.Message]
    guesses: list[bool]  # per assistant reply: its answer letter carries no loss
    actions: list[protocol.Action]
    settings: ProtocolSettings
    aimed: bool = False  # a retrieve followed `aimed_range` (its digits carry information)

    @property
    def frames(self) -> list[int]:
        """Pool indices of every frame placeholder, in conversation order."""
        return [i for m in self.messages for i in protocol.frames_in(m)]


def needles_of(item: QAItem) -> list[dict[str, Any]]:
    """The generator's needles (pool index, colour, shape) of a synthetic item."""
    needles = item.extra.get("needles")
    if not needles:
        raise SFTError(f"item {item.id} has no needle annotations; is it a vmtr synth item?")
    return needles


def needed_needles(item: QAItem) -> list[dict[str, Any]]:
    """The needles the question needs: for colour and shape questions the one(s) the right
    option names (a colour item may hold other needles, whose colours no option names); for
    order and count questions every needle."""
    needles = needles_of(item)
    kind = item.categories.get("kind")
    if kind not in ("colour", "shape") or item.answer is None:
        return needles
    text = protocol.option_text(item.options[item.letters.index(item.answer)])
    named = [n for n in needles if n[kind] == text]
    return named or needles


def describe_needles(
    needles: Sequence[dict[str, Any]], seen: set[int], wording: NeedleWording = "frame-first"
) -> str:
    """The needles among the frames shown so far, in pool order, worded as ``wording``."""
    visible = sorted((n for n in needles if n["pool_index"] in seen), key=lambda n: n["pool_index"])
    if not visible:
        return "Seen: no shapes."
    if wording == "colour-first":
        named = [f"{n['colour']} {n['shape']} at frame {n['pool_index']}" for n in visible]
    elif wording == "shape-first":
        named = [f"frame {n['pool_index']} {n['shape']} in {n['colour']}" for n in visible]
    else:
        named = [f"frame {n['pool_index']} {n['colour']} {n['shape']}" for n in visible]
    listed = ", ".join(named)
    return f"Seen: {listed}."


def border_frames(cue: Sequence[int] | None, seen: set[int]) -> list[int]:
    """The frames shown so far that carried the border (the cue ``[first, last]``), in order."""
    return sorted(i for i in seen if cue[0] <= i <= cue[1]) if cue else []


def describe_border(cue: Sequence[int] | None, seen: set[int]) -> str:
    """Where the border (the cue) showed among the frames shown so far; empty if unknown.

    This is reading, not aiming: it names only frames the model was shown, and it is the
    evidence an RL-trained policy can learn to aim its retrieves from.
    """
    if not cue:
        return ""
    framed = border_frames(cue, seen)
    if not framed:
        return "No border. "
    if len(framed) == 1:
        return f"Border: frame {framed[0]}. "
    return f"Border: frames {framed[0]} to {framed[-1]}. "


def describe_seen(item: QAItem, seen: set[int], wording: NeedleWording = "frame-first") -> str:
    """What the frames shown so far reveal: the honest part of every reply."""
    return describe_border(item.extra.get("cue_pool_indices"), seen) + describe_needles(
        needles_of(item), seen, wording
    )


BRIDGE_WORD = " so"
"""Opens the bridge clause; one token of the tiny tokenizer, so the reading check finds it."""


def bridge_token_id(tokenizer: Any) -> int | None:
    """`BRIDGE_WORD`'s token id, or None where the tokenizer splits it (no clause is found)."""
    ids = tokenizer(BRIDGE_WORD, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def bridge_clause(item: QAItem) -> str:
    """The clause " so yellow is C.": the chosen option's text, then its letter."""
    return f"{BRIDGE_WORD}{answer_body(item, 'text')} is {item.answer}."


def answer_reply(
    seen_text: str, item: QAItem, guess: bool, form: AnswerForm = "letter", guess_letter: str = ""
) -> str:
    """An answer turn in ``form``; a guess says so (and writes no bridge: the frames did not
    show what it would claim). A needle-form guess answers ``guess_letter`` (a random one)."""
    note = " Guessing." if guess else ""
    if form == "bridge" and not guess:
        note = bridge_clause(item)
    body = answer_body(item, form)
    if guess and form == "needle":  # a needle would name what was not seen
        body = guess_letter or item.answer
    return f"<think>{seen_text}{note}</think><answer>{body}</answer>"


def retrieve_reply(seen_text: str, start: int, end: int) -> str:
    """A retrieve turn for the range ``start..end``."""
    return f"<think>{seen_text} Need more frames.</think><retrieve>{start}, {end}</retrieve>"


def random_range(
    rng: random.Random, pool: int, width: tuple[int, int], block: int = 0
) -> tuple[int, int]:
    """A uniformly random range (not the oracle's: it never looks at where the needles are).

    ``block > 0`` picks one of the aligned blocks ``[k*block, (k+1)*block - 1]`` instead of any
    range of ``width`` frames. Free ranges have so many equally likely spellings that a greedy
    decoder trained on them writes malformed ones ("2, 4, 4"); aligned blocks do not.
    """
    if block > 0:
        start = block * rng.randrange(math.ceil(pool / block))
        return start, min(pool - 1, start + block - 1)
    span = min(pool, rng.randint(*width))
    start = rng.randint(0, pool - span)
    return start, start + span - 1


def label_range(rng: random.Random, labels: Sequence[int]) -> tuple[int, int]:
    """Two of ``labels`` picked at random, adjacent or one apart: a range the model can copy
    from its prompt's frame labels instead of computing it. Which labels is left to RL (this
    never looks at the needles either)."""
    if len(labels) < 2:
        raise SFTError("a label range needs at least two frame labels")
    gap = rng.choice((1, 2)) if len(labels) > 2 else 1
    first = rng.randrange(len(labels) - gap)
    return labels[first], labels[first + gap]


def aimed_range(
    labels: Sequence[int], border: Sequence[int], retrieves_done: int
) -> tuple[int, int] | None:
    """Where to look next from the border frames seen so far (None when none was seen).

    The border (the cue) is one contiguous interval, and the first-turn frames ``labels`` that
    bracket the frames seen inside it bound it. The first retrieve spans the first border frame
    to the label after the last one, the second the label before the first border frame to it:
    two copies of numbers the reply has just written, each paired with its neighbour among the
    first-turn labels (a fixed lookup). On the README's held-out items the two retrieves show
    every needle 92-93 % of the time, against 34 % for random ranges. It reads only which
    frames showed the border, never the needles.
    """
    if not border:
        return None
    first, last = min(border), max(border)
    if retrieves_done == 0:
        after = [i for i in labels if i > last]
        return first, after[0] if after else last
    before = [i for i in labels if i < first]
    return (before[-1] if before else first), first


def plan_trajectory(
    item: QAItem,
    pool: Sequence[float],
    settings: ProtocolSettings,
    rng: random.Random,
    retrieve_width: tuple[int, int] = (8, 16),
    retrieve_block: int = 0,
    wording: NeedleWording = "frame-first",
    answer_form: AnswerForm = "letter",
    needle_guess: NeedleGuess = "random",
    retrieve_labels: bool = False,
    aim: bool = False,
    retrieve_again: float = 1.0,
) -> Trajectory:
    """Script one episode of ``item`` under ``settings`` (see the module docstring's rules);
    ``aim`` retrieves by `aimed_range` where a border was seen. After a retrieve that did not
    show the evidence, the episode retrieves again with probability ``retrieve_again`` and
    otherwise answers at once, guessing.

    Every reply is checked with `protocol.parse_reply` against the action it was written for.
    """
    if item.answer is None:
        raise SFTError(f"item {item.id} has no answer")
    needed = {n["pool_index"] for n in needed_needles(item)}
    n = len(pool)
    messages = [protocol.system_message(settings)]
    frames = first_turn_frames(n, settings.first_turn_frames)
    overview = sorted(set(frames))
    seen: set[int] = set()
    guesses: list[bool] = []
    actions: list[protocol.Action] = []
    aimed = False  # whether a retrieve followed `aimed_range` (not the random fallback)
    for turn in range(1, settings.max_turns + 1):
        messages.append(
            protocol.user_message(
                turn=turn,
                frames=frames,
                timestamps=[pool[i] for i in frames],
                question=item.question,
                options=item.options,
                pool_size=n,
                settings=settings,
            )
        )
        seen |= set(frames)
        last = turn == settings.max_turns
        seen_text = describe_seen(item, seen, wording)
        # (no draw when every episode retrieves again, so such runs keep their data stream)
        stop = last or bool(
            actions and not needed <= seen and retrieve_again < 1 and rng.random() >= retrieve_again
        )
        if needed <= seen or stop:
            guess = not needed <= seen
            trained = guess and trains_guesses(answer_form, needle_guess)
            letter = rng.choice(item.letters) if trained else ""
            reply = answer_reply(seen_text, item, guess, answer_form, letter)
            expected: protocol.Action = protocol.Answer(letter or item.answer, "")
        else:
            guess = False
            border = border_frames(item.extra.get("cue_pool_indices"), seen)
            target = aimed_range(overview, border, len(actions)) if aim else None
            if target is not None:
                start, end = target
                aimed = True
            elif retrieve_labels:
                start, end = label_range(rng, overview)
            else:
                start, end = random_range(rng, n, retrieve_width, retrieve_block)
            reply = retrieve_reply(seen_text, start, end)
            expected = protocol.Retrieve(start, end, "")
        action = protocol.parse_reply(reply, max_index=n - 1, options=item.options, last_turn=last)
        assert _same_action(action, expected), (reply, action)
        messages.append(protocol.assistant_message(reply))
        guesses.append(guess)
        actions.append(action)
        if isinstance(action, protocol.Answer):
            break
        frames = select_segment(action.start, action.end, settings.frames_per_retrieve)
    return Trajectory(messages, guesses, actions, settings, aimed=aimed)


def _same_action(got: protocol.Action, want: protocol.Action) -> bool:
    if isinstance(want, protocol.Answer):
        return isinstance(got, protocol.Answer) and got.answer == want.answer
    return isinstance(got, protocol.Retrieve) and (got.start, got.end) == (want.start, want.end)


def plan_caption(
    item: QAItem,
    pool: Sequence[float],
    frames: int,
    rng: random.Random,
    wording: NeedleWording = "frame-first",
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
        raise SFTError(f"item {item.id} has no answer")
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
    seen_text = describe_seen(item, set(shown), wording)
    if set(needed) <= set(shown):
        reply = answer_reply(seen_text, item, False, answer_form)
    else:
        reply = f"<think>{seen_text}</think>"
    messages = [{"role": "user", "content": content}, protocol.assistant_message(reply)]
    return Trajectory(messages, [False], [], settings)


def question_header(question: str) -> str:
    """The lines a drill writes before the options (also the pretexts' lookup prefixes)."""
    return f"Question: {question.strip()}\nOptions:"


def question_block(item: QAItem) -> str:
    """The question and its lettered options, as the drills show them after any frames."""
    return "\n".join([question_header(item.question), *protocol.format_options(item.options)])


def plan_answer_drill(
    item: QAItem, wording: NeedleWording = "frame-first", answer_form: AnswerForm = "letter"
) -> Trajectory:
    """A text-only drill for the last step of an answer: the question and options, then a reply
    whose ``<think>`` names every needle (as a reply does once all were seen) and answers.

    Measured on a warm start that reads colours (82 % teacher-forced): given that scripted
    ``<think>``, the answer letter was right 11 % of the time, so matching what was read to
    the option's letter is a separate skill. It needs no frames, so these examples are short;
    only the letter carries loss (see `answer_only`).
    """
    if item.answer is None:
        raise SFTError(f"item {item.id} has no answer")
    seen = {n["pool_index"] for n in needles_of(item)}
    reply = answer_reply(describe_seen(item, seen, wording), item, False, answer_form)
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
    bridge_id: int | None = None,
    with_close: bool = False,
) -> torch.Tensor:
    """``labels`` kept only strictly between ``<answer>`` and ``</answer>``, and from the last
    ``bridge_id`` (`BRIDGE_WORD`) on, when given, so a bridge answer is taught whole.
    ``with_close`` keeps ``</answer>`` too: a text answer must learn where it stops."""
    keep = between_tags(ids, open_id, close_id)
    if with_close:
        keep |= ids == close_id
    if bridge_id is not None and bool((ids == bridge_id).any()):
        start = int((ids == bridge_id).nonzero()[-1])
        keep[start:] |= (labels[start:] != IGNORE) & (torch.cumsum(ids == close_id, 0) == 0)[start:]
    return torch.where(keep, labels, torch.full_like(labels, IGNORE))


def pick_settings(rng: random.Random, single_turn_share: float) -> ProtocolSettings:
    """Multi-turn (16 + 8 + 8) most of the time, else a one-turn budget of 16 or 32 frames."""
    if rng.random() >= single_turn_share:
        return MULTI_TURN
    return SINGLE_16 if rng.random() < 0.5 else SINGLE_32


# ---------------------------------------------------------------------------------------------
# Frames: decoded once per item, kept on disk as one uint8 array


def decode_pool(video: Path, budget: dict[str, int]) -> tuple[list[float], np.ndarray]:
    """The agent's frame pool of ``video``: timestamps and frames as one uint8 array.

    Frames are resized with the backend's pixel budget, so they equal what the agent would feed
    the model.
    """
    info = video_tools.probe(video)
    pool = video_tools.pool_timestamps(
        info, max_frames=MULTI_TURN.pool_size, max_fps=MULTI_TURN.pool_max_fps
    )
    images = video_tools.decode_at(video, pool, **budget)
    return pool, np.stack([np.asarray(im.convert("RGB")) for im in images])


def backend_pixel_budget(model: Any, processor: Any) -> dict[str, int]:
    """The frame size the inference backend would use for ``model``, so training frames equal
    what the agent feeds it."""
    from vmtr.models.qwen import QwenVideoLM

    return QwenVideoLM(model, processor, ModelSettings(model="sft")).pixel_budget


@dataclass
class CachedItem:
    """A training item whose pool is decoded on first use and kept on disk as ``.npz``.

    Decoding costs more than a tiny model's step, so each video is decoded once per run folder.
    """

    item: QAItem
    cache_dir: Path
    budget: dict[str, int]
    _pool: list[float] | None = field(default=None, repr=False)
    _frames: np.ndarray | None = field(default=None, repr=False)

    def _load(self) -> None:
        path = self.cache_dir / f"{self.item.id}.npz"
        if not path.exists():
            pool, frames = decode_pool(self.item.video, self.budget)
            tmp = path.with_name(f".{path.stem}.tmp.npz")
            np.savez(tmp, pool=np.asarray(pool, dtype=np.float64), frames=frames)
            tmp.replace(path)
        with np.load(path) as data:
            self._pool = [float(t) for t in data["pool"]]
            self._frames = data["frames"]

    @property
    def pool(self) -> list[float]:
        if self._pool is None:
            self._load()
        return self._pool  # type: ignore[return-value]

    def images(self, indices: Sequence[int]) -> list[Image.Image]:
        if self._frames is None:
            self._load()
        frames = self._frames
        assert frames is not None
        return [Image.fromarray(frames[i]) for i in indices]

    def release(self) -> None:
        """Drop the frames from memory (they stay on disk)."""
        self._frames = None


# ---------------------------------------------------------------------------------------------
# Encoding


def assistant_spans(ids: Sequence[int], start_id: int, header: Sequence[int], end_id: int):
    """(first, last) token positions of each assistant reply, its closing ``<|im_end|>`` included.

    A reply starts after ``<|im_start|>`` + the tokens of ``assistant\\n`` and ends at the next
    ``<|im_end|>``.
    """
    spans = []
    h = len(header)
    i = 0
    while i < len(ids):
        if ids[i] == start_id and list(ids[i + 1 : i + 1 + h]) == list(header):
            first = i + 1 + h
            last = first
            while last < len(ids) and ids[last] != end_id:
                last += 1
            spans.append((first, min(last, len(ids) - 1)))
            i = last
        i += 1
    return spans


def encode_conversation(
    processor: Any,
    messages: Sequence[protocol.Message],
    images: Sequence[Image.Image],
    guesses: Sequence[bool] | None = None,
    only_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Processor outputs of a whole conversation plus ``labels`` on the assistant's tokens only.

    ``only_ids`` narrows the labels further to those token ids (see `content_token_ids`).

    ``images`` are the frames of the placeholders in order. Labels are ``IGNORE`` everywhere but
    each reply and its ``<|im_end|>``; for a reply flagged in ``guesses`` the tokens inside
    ``<answer>...</answer>`` carry no loss either. Tensors are 1-D per token (no batch axis)
    except ``pixel_values`` and ``image_grid_thw``.
    """
    text = processor.apply_chat_template(list(messages), tokenize=False)
    encoded = processor(text=[text], images=list(images) or None, return_tensors="pt")
    if images and "mm_token_type_ids" not in encoded:
        raise RuntimeError("processor output lacks mm_token_type_ids; positions would be wrong")
    tok = processor.tokenizer
    ids = encoded["input_ids"][0]
    header = tok("assistant\n", add_special_tokens=False)["input_ids"]
    spans = assistant_spans(
        ids.tolist(),
        tok.convert_tokens_to_ids("<|im_start|>"),
        header,
        tok.convert_tokens_to_ids("<|im_end|>"),
    )
    n_replies = sum(m["role"] == "assistant" for m in messages)
    if len(spans) != n_replies:
        raise RuntimeError(
            f"found {len(spans)} assistant replies in the tokens, expected {n_replies}"
        )
    labels = torch.full_like(ids, IGNORE)
    for k, (first, last) in enumerate(spans):
        labels[first : last + 1] = ids[first : last + 1]
        if guesses and guesses[k]:
            guessed = tag_interior(tok, ids[first : last + 1], "<answer>", "</answer>")
            labels[first : last + 1][guessed] = IGNORE
    if only_ids is not None:
        labels = torch.where(torch.isin(labels, only_ids), labels, torch.full_like(labels, IGNORE))
    out = {
        "input_ids": ids,
        "attention_mask": encoded["attention_mask"][0],
        "labels": labels,
        "mm_token_type_ids": encoded.get("mm_token_type_ids", torch.zeros_like(ids[None]))[0],
    }
    if images:
        out["pixel_values"] = encoded["pixel_values"]
        out["image_grid_thw"] = encoded["image_grid_thw"]
    return out


def content_token_ids(tokenizer: Any) -> torch.Tensor:
    """Ids of the tokens that carry what a reply read: colours, shapes, digits, option letters.

    Measured here: with the loss on every reply token, a tiny model trained from scratch kept
    the loss on colour words at chance for 600 steps of reading drills, while the same drills
    with the loss on colour words alone taught colour in 100 steps. The format tokens are
    learned early and their residual loss drowns the few tokens that need the image.
    """
    from vmtr.eval.synthetic import COLOURS, SHAPES
    from vmtr.policies.reading import word_ids

    ids = set(word_ids(tokenizer, [*COLOURS, *SHAPES], pieces=True))
    ids |= set(word_ids(tokenizer, [*map(str, range(10)), *"ABCD"], prefix="", pieces=True))
    return torch.tensor(sorted(ids))


def content_weights(
    ids: torch.Tensor,
    labels: torch.Tensor,
    content_ids: torch.Tensor,
    weight: float,
    in_retrieve: torch.Tensor,
    aimed: bool = False,
) -> torch.Tensor:
    """Per-token loss weights: ``weight`` on labelled content tokens, 1 on other labelled ones,
    0 where there is no label. Tokens ``in_retrieve`` (between ``<retrieve>`` and
    ``</retrieve>``, see `tag_interior`) stay at 1 unless the ranges were ``aimed``: random
    ranges' digits would only add noise.
    """
    weights = (labels != IGNORE).float()
    boost = torch.isin(labels, content_ids)
    if not aimed:
        boost &= ~in_retrieve
    return torch.where(boost, weights * weight, weights)


def collate(examples: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded conversations into one batch; images concatenated in order."""
    length = max(int(e["input_ids"].shape[0]) for e in examples)
    batch: dict[str, torch.Tensor] = {}
    for key, fill in (
        ("input_ids", pad_id),
        ("attention_mask", 0),
        ("labels", IGNORE),
        ("mm_token_type_ids", 0),
        ("loss_weights", 0.0),
    ):
        if key not in examples[0]:
            continue
        rows = [
            torch.nn.functional.pad(e[key], (0, length - e[key].shape[0]), value=fill)
            for e in examples
        ]
        batch[key] = torch.stack(rows)
    with_images = [e for e in examples if "pixel_values" in e]
    # image-side tensors (per patch, per image or per merged token), all in image order
    for key in (
        "pixel_values",
        "image_grid_thw",
        "aux_colour",
        "aux_shape",
        "aux_frame_colour",
        "aux_frame_shape",
    ):
        if with_images and key in with_images[0]:
            batch[key] = torch.cat([e[key] for e in with_images])
    return batch


def token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    reduction: str = "mean",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy over labelled positions (mean, or sum for accumulation),
    optionally weighted per label position (``weights`` aligned with ``labels``)."""
    shifted = logits[:, :-1].float()
    targets = labels[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    )
    if weights is None:
        weights = (targets != IGNORE).float()
    else:
        weights = weights[:, 1:]
    total = (losses * weights.reshape(-1)).sum()
    return total if reduction == "sum" else total / weights.sum().clamp(min=1e-9)


def lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    """Linear warmup then cosine decay to ``floor`` (a share of the peak)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# Texts for the tokenizer of a fresh tiny model


def corpus_texts(items: Sequence[QAItem], n: int = 300, seed: int = 0) -> list[str]:
    """Questions, options and scripted replies of some items, for `build_tiny`'s tokenizer."""
    rng = random.Random(seed)
    texts: list[str] = []
    for item in rng.sample(list(items), min(n, len(items))):
        texts.append(item.question)
        texts.extend(item.options)
        seen = {x["pool_index"] for x in needles_of(item)}
        described = describe_seen(item, seen)
        note = " Guessing." if rng.random() < 0.3 else ""
        texts.append(f"<think>{described}{note}</think><answer>{item.answer or 'A'}</answer>")
        texts.append(retrieve_reply(describe_seen(item, set(range(2, 40, 3))), 3, 17))
    return texts


# ---------------------------------------------------------------------------------------------
# The recipe


def _progress(total: int, initial: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, file=sys.stderr, desc="sft", dynamic_ncols=True)


class SFTRecipe:
    """setup() -> train() -> save(); evaluate() asks held-out items through the real agent."""

    def __init__(self, config: SFTConfig, log: Callable[[str], None] = print) -> None:
        self.cfg = config
        self.log = log
        self.step = 0

    # -- setup ----------------------------------------------------------------------------------

    def setup(self, resume: bool = False) -> None:
        """Load items and frames, build or load the model, the optimizer and the schedule."""
        from accelerate import Accelerator
        from transformers import AutoProcessor

        from vmtr.models.gta import load_model

        cfg = self.cfg
        cfg.out.mkdir(parents=True, exist_ok=True)
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        items = self._load_items()
        rng = random.Random(cfg.seed)
        rng.shuffle(items)
        if cfg.eval_items >= len(items):
            raise SFTError(f"{len(items)} items cannot spare {cfg.eval_items} for evaluation")
        self.eval_items = items[: cfg.eval_items]
        train_items = items[cfg.eval_items :]

        checkpoint = self.last_checkpoint() if resume else None
        if resume and checkpoint is None:
            raise SFTError(f"--resume: no checkpoint under {cfg.out / 'checkpoints'}")
        source = checkpoint or self._initial_model(train_items)
        torch.manual_seed(cfg.seed)
        self.processor = AutoProcessor.from_pretrained(source)
        model = load_model(source, dtype=torch.float32)  # GTA checkpoints stay GTA
        self.budget = backend_pixel_budget(model, self.processor)
        self.content_ids = content_token_ids(self.processor.tokenizer)
        tok = self.processor.tokenizer
        self.answer_tags = [single_token(tok, t) for t in ("<answer>", "</answer>")]
        if cfg.answer_share > 0 and None in self.answer_tags:
            raise SFTError(
                "answer drills keep the loss on the tokens between <answer> and </answer>, "
                "which needs both tags to be single tokens; this tokenizer splits them"
            )
        self.bridge_id = bridge_token_id(self.processor.tokenizer)
        self.items = self._cache_frames(train_items)
        self.pretexts = None
        if self.cfg.pretext_weight > 0:
            from vmtr.policies.pretext import PretextSources

            questions = [c.item.question for c in self.items[:200]]
            self.pretexts = PretextSources.of(self.processor.tokenizer, questions)
        self.heads = self._needle_heads(model, source)

        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": rest, "weight_decay": 0},
        ]
        if self.heads is not None:
            groups.append({"params": list(self.heads.parameters()), "weight_decay": 0})
        optimizer = torch.optim.AdamW(
            groups,
            lr=cfg.lr,
            betas=(0.9, 0.95),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_factor(s, cfg.schedule_steps or cfg.steps, cfg.warmup, cfg.min_lr_ratio),
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(
            model, optimizer, scheduler
        )
        if checkpoint is not None:
            state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            self.log(f"resumed from {checkpoint} at step {self.step}")
        n_params = sum(p.numel() for p in model.parameters())
        self.log(
            f"{len(self.items)} training items, {len(self.eval_items)} held out; "
            f"model {n_params / 1e6:.2f} M parameters from {source}"
        )

    def _load_items(self) -> list[QAItem]:
        items: list[QAItem] = []
        self.frame_px: dict[str, int] = {}  # item id -> the needle boxes' pixel space
        for folder in self.cfg.data:
            path = folder / "annotations.json" if folder.is_dir() else folder
            if not path.exists():
                raise SFTError(f"{folder}: no annotations.json (generate one with `vmtr synth`)")
            loaded = load_video_mtr_json(path)
            settings = path.parent / "settings.json"
            if self.cfg.needle_heads:
                if not settings.exists():
                    raise SFTError(
                        f"{folder}: no settings.json, which the auxiliary vision losses need"
                    )
                size = int(json.loads(settings.read_text())["frame_size"])
                self.frame_px.update((item.id, size) for item in loaded)
            items.extend(loaded)
        if not items:
            raise SFTError("the training data holds no items")
        for item in items[:1]:
            needles_of(item)
        return items

    def _initial_model(self, items: Sequence[QAItem]) -> Path:
        """A fresh random tiny model (so the recipe reproduces from scratch), or the given path
        (``tiny``: the bundled model)."""
        if self.cfg.model != "tiny-init":
            from vmtr.models.qwen import resolve_model_path
            from vmtr.models.vlm import ModelLoadError

            try:
                path = Path(resolve_model_path(self.cfg.model))
            except ModelLoadError as err:
                raise SFTError(str(err)) from err
            if not (path / "config.json").exists():
                raise SFTError(f"{self.cfg.model}: not a checkpoint folder (no config.json)")
            return path
        from vmtr.models.tiny import build_tiny

        init = self.cfg.out / "init"
        if not (init / "config.json").exists():
            build_tiny(
                init,
                seed=self.cfg.seed,
                extra_texts=corpus_texts(items, seed=self.cfg.seed),
                vocab_size=self.cfg.tiny_vocab,
                **self.cfg.tiny_sizes,
            )
        return init

    def _needle_heads(self, model: Any, source: Path) -> NeedleHeads | None:
        """The auxiliary vision heads (`vmtr.policies.vision_aux`), when asked for; a source
        checkpoint that trained them passes them on."""
        if not self.cfg.needle_heads:
            return None
        from vmtr.eval.synthetic import COLOURS, SHAPES

        hidden = model.config.vision_config.out_hidden_size
        heads = NeedleHeads(hidden, len(COLOURS), len(SHAPES))
        state_file = Path(source) / "trainer_state.pt"
        if state_file.exists():
            state = torch.load(state_file, weights_only=False)
            if "needle_heads" in state:
                # (checkpoints from before the frame-level heads lack them: those start at zero)
                heads.load_state_dict(state["needle_heads"], strict=False)
        return heads.to(self.accelerator.device)

    def _cache_frames(self, items: Sequence[QAItem]) -> list[CachedItem]:
        cache_dir = self.cfg.out / "frames"
        cache_dir.mkdir(parents=True, exist_ok=True)
        return [CachedItem(item, cache_dir, self.budget) for item in items]

    # -- data -----------------------------------------------------------------------------------

    def batch_at(self, step: int) -> tuple[list[dict[str, torch.Tensor]], list[Trajectory]]:
        """The examples of ``step``, encoded: a pure function of (seed, step), so a resumed run
        sees the same data."""
        rng = random.Random(self.cfg.seed * 1_000_003 + step)
        examples, trajectories = [], []
        for _ in range(self.cfg.batch_size):
            cached = self.items[rng.randrange(len(self.items))]
            only = None
            # (no draw when off, so runs without answer drills keep their data stream)
            answer_drill = self.cfg.answer_share > 0 and rng.random() < self.cfg.answer_share
            if answer_drill:
                traj = plan_answer_drill(cached.item, self.cfg.needle_wording, self.cfg.answer_form)
            elif rng.random() < self.cfg.caption_share:
                traj = plan_caption(
                    cached.item,
                    cached.pool,
                    self.cfg.caption_frames,
                    rng,
                    self.cfg.needle_wording,
                    self.cfg.answer_form,
                    self.cfg.caption_layout,
                )
                if self.cfg.caption_content_loss:
                    only = self.content_ids
            else:
                settings = pick_settings(rng, self.cfg.single_turn_share)
                # (no draw when off, so runs without aiming keep their data stream)
                aim = self.cfg.retrieve_aim > 0 and rng.random() < self.cfg.retrieve_aim
                traj = plan_trajectory(
                    cached.item,
                    cached.pool,
                    settings,
                    rng,
                    self.cfg.retrieve_width,
                    self.cfg.retrieve_block,
                    self.cfg.needle_wording,
                    self.cfg.answer_form,
                    self.cfg.needle_guess,
                    self.cfg.retrieve_labels,
                    aim,
                    self.cfg.retrieve_again,
                )
            # guesses carry loss only as needle-form random letters (`trains_guesses`)
            trained = trains_guesses(self.cfg.answer_form, self.cfg.needle_guess)
            masked = None if trained else traj.guesses
            example = encode_conversation(
                self.processor, traj.messages, cached.images(traj.frames), masked, only
            )
            if answer_drill:
                example["labels"] = answer_only(
                    example["input_ids"],
                    example["labels"],
                    *self.answer_tags,
                    self.bridge_id if self.cfg.answer_form == "bridge" else None,
                    with_close=self.cfg.answer_form in ("text", "needle"),
                )
            if self.heads is not None and traj.frames:
                example.update(self._aux_labels(cached, traj, example))
            example["loss_weights"] = content_weights(
                example["input_ids"],
                example["labels"],
                self.content_ids,
                self.cfg.content_weight if only is None else 1.0,
                tag_interior(
                    self.processor.tokenizer, example["input_ids"], "<retrieve>", "</retrieve>"
                ),
                traj.aimed,
            )
            examples.append(example)
            cached.release()
            trajectories.append(traj)
        return examples, trajectories

    def _aux_labels(
        self, cached: CachedItem, traj: Trajectory, example: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Cell-level and frame-level needle classes of the example's images."""
        from vmtr.eval.synthetic import COLOURS, SHAPES

        needles = needles_of(cached.item)
        colour, shape = example_labels(
            needles,
            traj.frames,
            example["image_grid_thw"],
            self.processor.image_processor.merge_size,
            self.frame_px[cached.item.id],
            list(COLOURS),
            SHAPES,
        )
        frame_colour, frame_shape = frame_labels(needles, traj.frames, list(COLOURS), SHAPES)
        return {
            "aux_colour": colour,
            "aux_shape": shape,
            "aux_frame_colour": frame_colour,
            "aux_frame_shape": frame_shape,
        }

    def micro_batches(
        self, examples: list[dict[str, torch.Tensor]]
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Padded micro-batches of ``micro_batch`` examples, similar lengths together.

        On CPU a micro-batch of one is fastest: with no padding, attention takes the fused causal
        path instead of materialising a mask.
        """
        order = sorted(range(len(examples)), key=lambda i: int(examples[i]["input_ids"].shape[0]))
        size = self.cfg.micro_batch
        pad = self.processor.tokenizer.pad_token_id
        for k in range(0, len(order), size):
            yield collate([examples[i] for i in order[k : k + size]], pad)

    # -- train ----------------------------------------------------------------------------------

    def train(self) -> None:
        """The loop: forward, loss on assistant tokens, clip, step; logs, checkpoints."""
        cfg = self.cfg
        log_path = cfg.out / "log.jsonl"
        bar = _progress(cfg.steps, self.step)
        self.model.train()
        started = time.perf_counter()
        first_step = self.step
        with log_path.open("a", encoding="utf-8") as log_file:
            while self.step < cfg.steps:
                examples, _ = self.batch_at(self.step)
                total_weight = sum(float(e["loss_weights"].sum()) for e in examples)
                loss_sum, aux_sum, frame_sum, tokens = 0.0, 0.0, 0.0, 0
                n_micro = math.ceil(len(examples) / cfg.micro_batch)
                for batch in self.micro_batches(examples):
                    batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
                    labels = batch.pop("labels")
                    weights = batch.pop("loss_weights")
                    aux = batch.pop("aux_colour", None), batch.pop("aux_shape", None)
                    frame_aux = (
                        batch.pop("aux_frame_colour", None),
                        batch.pop("aux_frame_shape", None),
                    )
                    with self._capture() as merged:
                        out = self.model(**batch)
                    # Weighted sum over tokens / all weight of the step: a token-level mean.
                    loss = token_loss(out.logits, labels, "sum", weights) / max(1e-9, total_weight)
                    loss_sum += float(loss.detach())
                    if self.heads is not None and aux[0] is not None and merged:
                        tokens_seen = torch.cat(merged)
                        if cfg.vision_aux_weight > 0:
                            aux_loss = self.heads.loss(tokens_seen, *aux) / n_micro
                            aux_sum += float(aux_loss.detach())
                            loss = loss + cfg.vision_aux_weight * aux_loss
                        if cfg.frame_aux_weight > 0:
                            sizes = merged_sizes(
                                batch["image_grid_thw"], self.processor.image_processor.merge_size
                            )
                            frame_loss = self.heads.frame_loss(tokens_seen, sizes, *frame_aux)
                            frame_sum += float(frame_loss.detach()) / n_micro
                            loss = loss + cfg.frame_aux_weight * frame_loss / n_micro
                    self.accelerator.backward(loss)
                    tokens += int(batch["attention_mask"].sum())
                pretext_log = {}
                if self.pretexts is not None:
                    parts = self.pretext_losses(self.step)
                    self.accelerator.backward(cfg.pretext_weight * sum(parts.values()))
                    pretext_log = {
                        f"{k}_loss": round(float(v.detach()), 5) for k, v in parts.items()
                    }
                norm = self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                elapsed = time.perf_counter() - started
                record = {
                    "step": self.step,
                    "loss": round(loss_sum, 5),
                    **({"vision_aux_loss": round(aux_sum, 5)} if cfg.vision_aux_weight else {}),
                    **({"frame_aux_loss": round(frame_sum, 5)} if cfg.frame_aux_weight else {}),
                    **pretext_log,
                    "grad_norm": round(float(norm), 4),
                    "lr": self.scheduler.get_last_lr()[0],
                    "tokens": tokens,
                    "seconds": round(elapsed, 2),
                    "steps_per_s": round((self.step - first_step) / max(elapsed, 1e-9), 4),
                }
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}")
                if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                    self.save_checkpoint()
                if cfg.eval_every and self.eval_items and self.step % cfg.eval_every == 0:
                    log_file.write(
                        json.dumps({"step": self.step, "eval": self.track_best()}) + "\n"
                    )
                    log_file.flush()
        bar.close()

    def pretext_losses(self, step: int) -> dict[str, torch.Tensor]:
        """The induction and lookup losses of ``step`` (a pure function of seed and step), kept
        apart: the induction circuit shows as a sudden drop of its loss alone."""
        from vmtr.policies import pretext

        assert self.pretexts is not None
        rng = random.Random(self.cfg.seed * 7_000_003 + step)
        pad = self.processor.tokenizer.pad_token_id or 0
        return pretext.losses(self.model, self.pretexts, rng, self.cfg.pretext_batch, pad)

    def _capture(self) -> Any:
        """Collect the merged visual tokens for the auxiliary loss (nothing when it is off)."""
        if self.heads is None:
            return contextlib.nullcontext([])
        return capture_merged_tokens(self.accelerator.unwrap_model(self.model).model.visual)

    def track_best(self) -> dict[str, Any]:
        """Evaluate now; save to best/ when held-out accuracy beats every earlier evaluation.

        Ties go to the later model, which has trained longer. The best score is read back from
        best/ so a resumed run keeps comparing against it.
        """
        result = self.evaluate()
        marker = self.cfg.out / "best" / "vmtr_best.json"
        best = json.loads(marker.read_text())["eval"]["accuracy"] if marker.exists() else -1.0
        if result["accuracy"] >= best:
            self.save(self.cfg.out / "best")
            marker.write_text(json.dumps({"step": self.step, "eval": result}, indent=2) + "\n")
            self.log(f"step {self.step}: held-out accuracy {result['accuracy']:.1%}, new best")
        else:
            self.log(
                f"step {self.step}: held-out accuracy {result['accuracy']:.1%} (best {best:.1%})"
            )
        return result

    # -- save -----------------------------------------------------------------------------------

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint folder, if any."""
        folder = self.cfg.out / "checkpoints"
        done = sorted(p for p in folder.glob("step-*") if (p / "trainer_state.pt").exists())
        return done[-1] if done else None

    def save_checkpoint(self) -> Path:
        """Model + processor + optimizer/scheduler/step, written to a temp folder then renamed."""
        folder = self.cfg.out / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"step-{self.step:06d}"
        tmp = folder / f".tmp-{self.step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.save(tmp)
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "config": self.cfg.model_dump(mode="json"),
        }
        if self.heads is not None:
            state["needle_heads"] = self.heads.state_dict()
        torch.save(state, tmp / "trainer_state.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(folder.glob("step-*"))[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def save(self, folder: Path | None = None) -> Path:
        """``save_pretrained`` of the model and processor (the final model by default)."""
        folder = folder or self.cfg.out / "final"
        folder.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        model.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        return folder

    # -- evaluate -------------------------------------------------------------------------------

    def evaluate(self, settings: ProtocolSettings = MULTI_TURN) -> dict[str, Any]:
        """Greedy multi-turn accuracy on the held-out items, through `vmtr.ask` itself, and the
        teacher-forced reading accuracy (`vmtr.policies.reading`) on the same items where the
        tokenizer supports it (`reading_supported`)."""
        from vmtr.policies.reading import reading_accuracy, reading_supported

        model = self.accelerator.unwrap_model(self.model)
        result = evaluate_items(
            model, self.processor, self.eval_items, settings, max_new_tokens=self.cfg.max_new_tokens
        )
        if not reading_supported(self.processor.tokenizer):
            return result
        return result | reading_accuracy(
            model,
            self.processor,
            self.eval_items,
            self.cfg.out / "frames",
            settings,
            budget=self.budget,
            wording=self.cfg.needle_wording,
            answer_form=self.cfg.answer_form,
        )


def reads_first_turn(item: QAItem, turns: Sequence[dict[str, Any]]) -> bool | None:
    """Whether the first reply names exactly the needles its frames showed (None: none shown),
    in either `NeedleWording`.

    A direct check of reading, apart from answer accuracy, which a lucky guess can inflate.
    """
    if not turns:
        return None
    needles = needles_of(item)
    shown = set(turns[0].get("frames", []))
    if not any(n["pool_index"] in shown for n in needles):
        return None
    raw = turns[0].get("raw", "")
    return any(describe_needles(needles, shown, w) in raw for w in get_args(NeedleWording))


def evaluate_items(
    model: Any,
    processor: Any,
    items: Sequence[QAItem],
    settings: ProtocolSettings = MULTI_TURN,
    max_new_tokens: int = 96,
) -> dict[str, Any]:
    """Accuracy, mean turns, frames seen and valid-reply rate of the agent on ``items``."""
    from vmtr.agent.ask import ask
    from vmtr.models.qwen import QwenVideoLM

    lm = QwenVideoLM(model.eval(), processor, ModelSettings(model="sft", device="cpu"))
    rows = []
    for item in _iter_progress(items, "held-out eval"):
        result = ask(
            item.video,
            item.question,
            item.options,
            model=lm,
            temperature=0,
            max_new_tokens=max_new_tokens,
            **settings.model_dump(),
        )
        rows.append(
            {
                "id": item.id,
                "correct": result.answer == item.answer,
                "turns": len(result.turns),
                "frames": len(result.frames_seen),
                "invalid": sum(t["action"] == "invalid" for t in result.turns),
                "reads": reads_first_turn(item, result.turns),
            }
        )
    model.train()
    read = [r["reads"] for r in rows if r["reads"] is not None]
    n = max(1, len(rows))
    return {
        "items": len(rows),
        "accuracy": sum(r["correct"] for r in rows) / n,
        "mean_turns": sum(r["turns"] for r in rows) / n,
        "mean_frames": sum(r["frames"] for r in rows) / n,
        "invalid_turns": sum(r["invalid"] for r in rows),
        "needle_shown_items": len(read),
        "reads_shown_needles": sum(read) / len(read) if read else None,
    }


def _iter_progress(items: Sequence[QAItem], desc: str) -> Iterator[QAItem]:
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, file=sys.stderr, dynamic_ncols=True)


def run_sft(config: SFTConfig, resume: bool = False, log: Callable[[str], None] = print) -> dict:
    """The whole recipe: setup, train, save the final model, evaluate held-out items."""
    recipe = SFTRecipe(config, log=log)
    recipe.setup(resume=resume)
    recipe.train()
    final = recipe.save()
    report: dict[str, Any] = {"final": str(final), "steps": recipe.step}
    if recipe.eval_items:
        report["eval"] = recipe.evaluate()
    (config.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
