"""Scripted protocol episodes of synthetic items: honest replies, random (or aimed) retrieves.

Each episode is written through the same protocol code the agent runs (`vmtr.protocol` prompts
and frame labels, the first-turn and `select_segment` frame rules, `parse_reply` round-trips).
The labels are honest about what the frames show:

- the reply's ``<think>`` says which of the frames shown so far carried the border (the cue)
  and lists the needles visible in them (from the generator's ground truth), or says none were
  seen;
- the model answers as soon as the evidence the question needs has been shown (the one needle
  for colour and shape questions, every needle for order and count questions);
- otherwise it retrieves a **random** range (or, with ``retrieve_labels``, the range between
  two first-turn frame labels picked at random, or the ``retrieve_block`` frames from one):
  where to look is left for RL to learn, so the warm start does not imitate an oracle. With
  ``aim`` an episode instead aims from the border frames the reply has just named
  (`aimed_range`): a fixed rule on what was seen, never on where the needles are, which RL can
  keep, sharpen or drop;
- on the last turn without the evidence it must still answer; that reply says it guesses, and
  the option letter inside ``<answer>`` carries no loss (the format does), so the model is
  never trained to produce an answer it could not have known. With ``needle`` answers the guess
  is a letter drawn at random, with loss: trained without it, such a model filled its guesses
  with an invented needle, which names no option (the letter carries nothing it could know).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vmtr import protocol
from vmtr.config import ProtocolSettings
from vmtr.eval.datasets import QAItem
from vmtr.tools.select import first_turn_frames, select_segment

MULTI_TURN = ProtocolSettings()
SINGLE_16 = ProtocolSettings(max_turns=1)
SINGLE_32 = ProtocolSettings(max_turns=1, first_turn_frames=32)

AnswerForm = Literal["letter", "needle"]
"""How a scripted reply answers: by the option's letter ("C"), or, ``needle``, with the needle
the question asks about as the reading named it (" yellow cross"; for counts the number), which
the parser maps to the one option it mentions: the answer is the same words for colour, shape
and order questions, copied from the ``<think>`` just written, so the model never has to match
a word to a letter or choose which word of its reading a question wants (docs/tiny-model.md)."""

NeedleGuess = Literal["random", "masked"]
"""How a needle-form reply guesses: a random letter with loss (the default), or the answer's
letter with no loss, as the letter form does (how the bundled model's first needle stage ran,
before the random letter; kept so `recipes/tiny/train_tiny.sh` reproduces it)."""


class CurriculumError(RuntimeError):
    """A user-facing failure of the curriculum (bad data folder, no checkpoint to resume)."""


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


def trains_guesses(form: AnswerForm, needle_guess: NeedleGuess) -> bool:
    """Whether a guess answers a random letter that carries loss (else the answer's, masked)."""
    return form == "needle" and needle_guess == "random"


def needles_of(item: QAItem) -> list[dict[str, Any]]:
    """The generator's needles (pool index, colour, shape) of a synthetic item."""
    needles = item.extra.get("needles")
    if not needles:
        raise CurriculumError(f"item {item.id} has no needle annotations; is it a vmtr synth item?")
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


def answer_body(item: QAItem, form: AnswerForm = "letter") -> str:
    """The inside of ``<answer>`` for ``item`` in ``form``. A needle keeps a leading space
    because the tiny tokenizer's words carry one: " yellow" is the token the reading wrote,
    "yellow" would be split into pieces."""
    if item.answer is None:
        raise CurriculumError(f"item {item.id} has no answer")
    if form == "letter":
        return item.answer
    if item.categories.get("kind") != "count":
        first = min(needed_needles(item), key=lambda n: n["pool_index"])
        return f" {first['colour']} {first['shape']}"
    return f" {protocol.option_text(item.options[item.letters.index(item.answer)])}"


def describe_needles(needles: Sequence[dict[str, Any]], seen: set[int]) -> str:
    """The needles among the frames shown so far, in pool order ("frame 37 red circle")."""
    visible = sorted((n for n in needles if n["pool_index"] in seen), key=lambda n: n["pool_index"])
    if not visible:
        return "Seen: no shapes."
    listed = ", ".join(f"frame {n['pool_index']} {n['colour']} {n['shape']}" for n in visible)
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


def describe_seen(item: QAItem, seen: set[int]) -> str:
    """What the frames shown so far reveal: the honest part of every reply."""
    return describe_border(item.extra.get("cue_pool_indices"), seen) + describe_needles(
        needles_of(item), seen
    )


def answer_reply(
    seen_text: str, item: QAItem, guess: bool, form: AnswerForm = "letter", guess_letter: str = ""
) -> str:
    """An answer turn in ``form``; a guess says so. A needle-form guess answers
    ``guess_letter`` (a random one)."""
    note = " Guessing." if guess else ""
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


def label_range(
    rng: random.Random, labels: Sequence[int], block: int = 0, pool: int = 0
) -> tuple[int, int]:
    """A range the model can copy from its prompt's frame labels instead of computing it; which
    labels is left to RL (this never looks at the needles either).

    With ``block == 0``: two of ``labels`` picked at random, adjacent or one apart. With
    ``block > 0``: the ``block`` frames from one label picked at random (clipped to ``pool``), so
    the range's start is a copy and its end one of only ``len(labels)`` fixed spellings; a model
    trained on label pairs copies the first label but ends its ranges anywhere, too wide for 8
    spread frames to show a short needle.
    """
    if block > 0:
        start = rng.choice(list(labels))
        return start, min(pool - 1, start + block - 1) if pool else start + block - 1
    if len(labels) < 2:
        raise CurriculumError("a label range needs at least two frame labels")
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
        raise CurriculumError(f"item {item.id} has no answer")
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
        seen_text = describe_seen(item, seen)
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
                start, end = label_range(rng, overview, retrieve_block, n)
            else:
                start, end = random_range(rng, n, retrieve_width, retrieve_block)
            reply = retrieve_reply(seen_text, start, end)
            expected = protocol.Retrieve(start, end, "")
        action = protocol.parse_reply(reply, max_index=n - 1, options=item.options, last_turn=last)
        if not _same_action(action, expected):
            raise AssertionError(f"scripted reply {reply!r} parses as {action!r}")
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


def pick_settings(rng: random.Random, single_turn_share: float) -> ProtocolSettings:
    """Multi-turn (16 + 8 + 8) most of the time, else a one-turn budget of 16 or 32 frames."""
    if rng.random() >= single_turn_share:
        return MULTI_TURN
    return SINGLE_16 if rng.random() < 0.5 else SINGLE_32


def reads_first_turn(item: QAItem, turns: Sequence[dict[str, Any]]) -> bool | None:
    """Whether the first reply names exactly the needles its frames showed (None: none shown).

    A direct check of reading, apart from answer accuracy, which a lucky guess can inflate.
    """
    if not turns:
        return None
    needles = needles_of(item)
    shown = set(turns[0].get("frames", []))
    if not any(n["pool_index"] in shown for n in needles):
        return None
    return describe_needles(needles, shown) in turns[0].get("raw", "")
