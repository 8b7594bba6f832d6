"""Text-only pretexts that teach a small model to find a token by its identity.

Turning a reading ("green") into the option's letter ("D. green" -> D) needs a lookup by
content. The tiny model did not find that circuit from answer drills alone in thousands of
steps; two synthetic tasks teach it directly (docs/tiny-model.md):

- induction (`induction_batch`): a random sequence, filler, the same sequence again; the loss is
  on the repeat. Rows must not repeat a token (each has one earlier match): with repeats the
  loss stayed at chance for 1,000 steps, without them the circuit appeared after 700-1,100.
- lookup (`lookup_batch`): "K. V" lines after one of the drills' own questions, then "V is K",
  the loss on K. It is the answer's own step (the letter comes before its option's text).
  Drawn after a real question rather than at the start of the row: lookups learned at the
  start were not used on the drills, where the options follow the question.

Both return ``(input_ids, labels)`` for `sft.token_loss`; rows are padded with ``pad`` and the
labels with ``IGNORE``. `PretextSources` gathers what they draw from, `losses` runs a model on
one batch of each.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vmtr.policies.sft import IGNORE, question_header, token_loss


@dataclass(frozen=True)
class LookupMarks:
    """Token ids the lookup rows are written with, as the tiny tokenizer spells the options
    ("D", ".", " green", line break) and the bridge (" green", " is", " ", "D")."""

    dot: int
    newline: int
    is_: int
    space: int

    @classmethod
    def of(cls, tok: Any) -> LookupMarks:
        is_a = tok(" is A", add_special_tokens=False)["input_ids"]
        return cls(
            dot=tok.convert_tokens_to_ids("."),
            newline=tok("\n", add_special_tokens=False)["input_ids"][0],
            is_=is_a[0],
            space=is_a[1] if len(is_a) == 3 else -1,
        )


def reply_words() -> list[str]:
    """The words of the synthetic benchmark's replies that the pretexts draw from."""
    from vmtr.eval.synthetic import COLOURS, SHAPES

    return [*COLOURS, *SHAPES, "frame", "the", "came", "first", "Seen", "Border"]


def word_pool(tok: Any, words: Sequence[str], size: int = 64) -> list[int]:
    """Token ids of ``words`` (each with its leading space), "A"-"D" and the digits, topped up
    with the first ordinary tokens to ``size``."""
    pool = {i for w in words for i in tok(f" {w}", add_special_tokens=False)["input_ids"]}
    pool |= {tok.convert_tokens_to_ids(c) for c in "ABCD0123456789"}
    special = set(tok.all_special_ids) | set(tok.added_tokens_decoder)
    for i in range(len(tok)):
        if len(pool) >= size:
            break
        if i not in special:
            pool.add(i)
    return sorted(pool)


def _pad(rows: list[list[int]], targets: list[list[int]], pad: int) -> tuple[torch.Tensor, ...]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    labels = torch.tensor([t + [IGNORE] * (width - len(t)) for t in targets])
    return ids, labels


def induction_batch(
    pool: Sequence[int], rng: random.Random, batch: int, pad: int, span: int = 12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``3 * span`` distinct tokens: filler, a ``span``-token sequence, more filler
    (0 to ``2 * span`` tokens, so the copy is not at a fixed offset), the sequence again. The
    first token of the repeat cannot be predicted and carries no loss."""
    rows, targets = [], []
    for _ in range(batch):
        drawn = rng.sample(list(pool), 3 * span)
        seq, rest = drawn[:span], drawn[span:]
        gap = rng.randint(0, 2 * span)
        row = rest[gap:] + seq + rest[:gap] + seq
        rows.append(row)
        targets.append([IGNORE] * (len(row) - span + 1) + seq[1:])
    return _pad(rows, targets, pad)


def lookup_batch(
    keys: Sequence[int],
    values: Sequence[int],
    prefixes: Sequence[Sequence[int]],
    marks: LookupMarks,
    rng: random.Random,
    batch: int,
    pad: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a prefix, four "K. V" lines (keys and values without repeats), 0-12 filler
    values, then three queries "V is K." (a space token before K where the tokenizer has one);
    the loss is on each queried K. Values never occur in the row's prefix nor spell a mark, so
    each queried value has exactly one earlier match."""
    rows, targets = [], []
    gap = [marks.space] if marks.space >= 0 else []
    reserved = {marks.dot, marks.newline, marks.is_, marks.space, *keys}
    for _ in range(batch):
        row = list(rng.choice(prefixes))
        allowed = [v for v in values if v not in reserved and v not in row]
        ks = rng.sample(list(keys), 4)
        vs = rng.sample(allowed, 16)
        for k, v in zip(ks, vs[:4], strict=True):
            row += [k, marks.dot, v, marks.newline]
        row += vs[4 : 4 + rng.randint(0, 12)]
        target = [IGNORE] * len(row)
        for q in rng.sample(range(4), 3):
            row += [vs[q], marks.is_, *gap, ks[q], marks.dot]
            target += [IGNORE] * (2 + len(gap)) + [ks[q], IGNORE]
        rows.append(row)
        targets.append(target)
    return _pad(rows, targets, pad)


@dataclass(frozen=True)
class PretextSources:
    """What the pretext rows are drawn from: the reply words' pool (induction), letters A-H
    as keys and the rest of the pool as values (lookup), and question prefixes."""

    pool: list[int]
    keys: list[int]
    values: list[int]
    prefixes: list[list[int]]
    marks: LookupMarks

    @classmethod
    def of(cls, tok: Any, questions: Sequence[str]) -> PretextSources:
        """``questions`` become the lookup rows' prefixes, written as a user turn opens."""
        pool = word_pool(tok, reply_words())
        keys = [tok.convert_tokens_to_ids(c) for c in "ABCDEFGH"]
        prefixes = [
            tok(f"<|im_start|>user\n{question_header(q)}\n")["input_ids"] for q in questions
        ]
        values = [i for i in pool if i not in keys]
        return cls(pool, keys, values, prefixes, LookupMarks.of(tok))


def losses(
    model: Any,
    sources: PretextSources,
    rng: random.Random,
    batch: int,
    pad: int,
    kinds: Sequence[str] = ("induction", "lookup"),
) -> dict[str, torch.Tensor]:
    """``model``'s loss on one batch of each pretext in ``kinds``, drawn from ``rng``."""
    draws = {
        "induction": lambda: induction_batch(sources.pool, rng, batch, pad),
        "lookup": lambda: lookup_batch(
            sources.keys, sources.values, sources.prefixes, sources.marks, rng, batch, pad
        ),
    }
    unknown = set(kinds) - set(draws)
    if unknown:
        raise ValueError(f"unknown pretexts {sorted(unknown)}; choose from {sorted(draws)}")
    device = next(model.parameters()).device
    out = {}
    for kind in kinds:
        ids, labels = draws[kind]()
        out[kind] = token_loss(model(input_ids=ids.to(device)).logits, labels.to(device))
    return out
