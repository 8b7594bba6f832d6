"""The pretext rows are what their docstrings promise: every labelled token is predictable by
finding one earlier token by its identity, and nothing else is labelled."""

from __future__ import annotations

import random

import pytest
from transformers import AutoProcessor

from vmtr.eval.synthetic import COLOURS, SHAPES
from vmtr.models.tiny import build_tiny
from vmtr.policies import pretext


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    folder = build_tiny(tmp_path_factory.mktemp("tiny"), seed=0, extra_texts=[" so green is D."])
    return AutoProcessor.from_pretrained(folder).tokenizer


def test_word_pool_holds_the_reply_words_and_letters(tok) -> None:
    pool = pretext.word_pool(tok, [*COLOURS, *SHAPES], size=64)
    assert len(pool) == 64 == len(set(pool))
    assert tok(" green", add_special_tokens=False)["input_ids"][0] in pool
    assert tok.convert_tokens_to_ids("D") in pool
    assert not set(pool) & set(tok.all_special_ids)


def test_induction_rows_repeat_a_sequence_whose_tokens_occur_once_before(tok) -> None:
    pool = pretext.word_pool(tok, [*COLOURS, *SHAPES])
    ids, labels = pretext.induction_batch(pool, random.Random(0), batch=16, pad=0, span=12)
    offsets = set()
    for row, target in zip(ids.tolist(), labels.tolist(), strict=True):
        assert len(row) == 48
        assert len(set(row[:36])) == 36  # no repeats before the copy
        labelled = [i for i, t in enumerate(target) if t != pretext.IGNORE]
        assert labelled == list(range(37, 48))  # the repeat, less its first token
        for i in labelled:
            assert target[i] == row[i]
            earlier = row.index(row[i - 1])  # the one earlier match of the previous token
            assert row[earlier + 1] == row[i]
        offsets.add(36 - row.index(row[36]))
    assert len(offsets) > 3, "the copy must not sit at a fixed offset"


def test_lookup_rows_ask_a_key_from_its_value(tok) -> None:
    marks = pretext.LookupMarks.of(tok)
    keys = [tok.convert_tokens_to_ids(c) for c in "ABCDEFGH"]
    pool = pretext.word_pool(tok, [*COLOURS, *SHAPES])
    values = [i for i in pool if i not in keys]
    prefix = tok("Question: which?\nOptions:\n")["input_ids"]
    ids, labels = pretext.lookup_batch(
        keys, values, [prefix], marks, random.Random(1), batch=8, pad=0
    )
    for row, target in zip(ids.tolist(), labels.tolist(), strict=True):
        assert row[: len(prefix)] == prefix
        labelled = [i for i, t in enumerate(target) if t != pretext.IGNORE]
        assert len(labelled) == 3
        for i in labelled:
            assert target[i] == row[i] and row[i] in keys
            value = row[i - 3] if marks.space >= 0 else row[i - 2]
            first = row.index(value)
            assert first < i - 3 and row[first - 2] == row[i]  # "K. V" earlier in the row
            assert row[first - 1] == marks.dot
