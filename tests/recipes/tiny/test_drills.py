"""Reading and answer drills: short, honest, and with loss only where they teach."""

from __future__ import annotations

import random

import torch

from recipes.tiny.curriculum import drills, episodes, weights
from vmtr import protocol
from vmtr.policies import conversation


def test_reading_drills_are_short_honest_and_answer_only_with_the_evidence(cached, tiny) -> None:
    processor, _ = tiny
    rng = random.Random(0)
    with_answer = 0
    for c in cached:
        for _ in range(6):
            traj = drills.plan_caption(c.item, c.pool, 8, rng)
            shown = traj.frames
            assert shown == list(range(shown[0], shown[0] + 8))
            reply = traj.messages[-1]["content"][0]["text"]
            assert reply.startswith(f"<think>{episodes.describe_seen(c.item, set(shown))}</think>")
            needed = {x["pool_index"] for x in c.item.extra["needles"]}
            assert ("<answer>" in reply) == (needed <= set(shown))
            with_answer += "<answer>" in reply
            encoded = conversation.encode_conversation(
                processor, traj.messages, c.images(shown), traj.guesses
            )
            labelled = encoded["input_ids"][encoded["labels"] != conversation.IGNORE]
            assert processor.tokenizer.decode(labelled).startswith("<think>")
    assert with_answer > len(cached) * 6 // 2  # most drills show every needle


def test_content_loss_labels_only_what_was_read(cached, tiny) -> None:
    processor, _ = tiny
    tok = processor.tokenizer
    only = weights.content_token_ids(tok)
    rng = random.Random(3)
    c = cached[0]
    traj = drills.plan_caption(c.item, c.pool, 8, rng)
    full = conversation.encode_conversation(processor, traj.messages, c.images(traj.frames))
    narrow = conversation.encode_conversation(
        processor, traj.messages, c.images(traj.frames), None, only
    )
    kept = narrow["labels"] != conversation.IGNORE
    assert kept.any()
    assert bool(
        ((full["labels"] != conversation.IGNORE) | ~kept).all()
    )  # a subset of the reply's labels
    words = tok.decode(narrow["input_ids"][kept])
    needle = c.item.extra["needles"][0]
    if needle["pool_index"] in traj.frames:
        assert needle["colour"] in words and needle["shape"] in words
    assert "Seen" not in words and "think" not in words


def test_answer_drills_are_text_only_and_label_only_the_letter(cached, tiny) -> None:
    processor, _ = tiny
    tok = processor.tokenizer
    item = cached[0].item
    traj = drills.plan_answer_drill(item)
    assert traj.frames == []
    reply = traj.messages[-1]["content"]
    reply = reply if isinstance(reply, str) else reply[0]["text"]
    action = protocol.parse_reply(reply, max_index=63, options=item.options)
    assert isinstance(action, protocol.Answer) and action.answer == item.answer
    for needle in item.extra["needles"]:
        assert f"frame {needle['pool_index']} {needle['colour']} {needle['shape']}" in reply
    enc = conversation.encode_conversation(processor, traj.messages, [])
    labels = drills.answer_only(
        enc["input_ids"], enc["labels"], *tok.convert_tokens_to_ids(["<answer>", "</answer>"])
    )
    kept = labels != conversation.IGNORE
    assert tok.decode(enc["input_ids"][kept]).strip() == item.answer


def _answer_drill_labels(tok, text: str, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The ids of ``text`` and which of them an answer drill puts loss on."""
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    tags = tok.convert_tokens_to_ids(["<answer>", "</answer>"])
    return ids, drills.answer_only(ids, ids.clone(), *tags, **kwargs) != conversation.IGNORE


def test_answer_drills_in_needle_form_teach_where_the_answer_stops(tiny) -> None:
    tok = tiny[0].tokenizer
    text = "<think>Seen: frame 3 red circle.</think><answer> red</answer><|im_end|>"
    ids, kept = _answer_drill_labels(tok, text, with_close=True)
    assert tok.convert_ids_to_tokens(ids[kept].tolist())[-1] == "</answer>"
    assert tok.decode(ids[kept]).replace(" ", "") == "red</answer>"
