"""The in-process backend on the real Qwen2.5-VL format (random small weights): turn-to-turn KV
reuse gives the greedy tokens of a full recompute, replies stop at Qwen's stop tokens, and the
session's token record is the chat-template rendering of the conversation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vmtr import protocol
from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings
from vmtr.models.qwen import QwenVideoLM

GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=8)
LONG = GenerationSettings(temperature=0.0, max_new_tokens=64)
SETTINGS = ProtocolSettings(first_turn_frames=4, max_turns=3)
QUESTION = "What colour is the shape?"
OPTIONS = ["A. red", "B. green"]


def _images(indices):
    out = []
    for i in indices:
        rng = np.random.default_rng(i)
        out.append(Image.fromarray(rng.integers(0, 255, (56, 84, 3), dtype=np.uint8)))
    return out


def _conversation(first_reply: str | None = None):
    messages = [
        protocol.system_message(SETTINGS),
        protocol.user_message(
            turn=1,
            frames=[0, 5, 10, 15],
            timestamps=[0.5, 5.5, 10.5, 15.5],
            question=QUESTION,
            options=OPTIONS,
            pool_size=16,
            settings=SETTINGS,
        ),
    ]
    if first_reply is not None:
        messages += [
            protocol.assistant_message(first_reply),
            protocol.user_message(
                turn=2,
                frames=[6, 7],
                timestamps=[6.5, 7.5],
                question=QUESTION,
                options=OPTIONS,
                pool_size=16,
                settings=SETTINGS,
            ),
        ]
    return messages


@pytest.fixture(scope="module")
def lm(qwen_format_dir):
    return QwenVideoLM.load(ModelSettings(model=str(qwen_format_dir), device="cpu"))


def _full_recompute(lm: QwenVideoLM, ids, mm, pixels, grids, n: int) -> list[int]:
    """Greedy tokens from a from-scratch forward over everything at every step."""
    out = []
    for _ in range(n):
        with torch.no_grad():
            logits = lm.model(
                input_ids=ids,
                mm_token_type_ids=mm,
                pixel_values=pixels,
                image_grid_thw=grids,
                use_cache=False,
            ).logits[0, -1]
        logits = logits.float()
        logits[lm.banned_ids] = float("-inf")
        token = int(torch.argmax(logits))
        out.append(token)
        if token in lm.stop_ids:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], 1)
        mm = torch.cat([mm, torch.zeros((1, 1), dtype=mm.dtype)], 1)
    return out


def test_stop_and_banned_tokens_are_qwens(lm) -> None:
    # generation_config's eos [<|im_end|>, <|endoftext|>] as released; vision tokens never sampled
    assert lm.stop_ids == [151643, 151645] and lm.end_id == 151645
    assert sorted(lm.banned_ids) == [151652, 151653, 151655, 151656]


def test_kv_reuse_gives_the_greedy_tokens_of_a_full_recompute(lm) -> None:
    fresh = QwenVideoLM(
        lm.model, lm.processor, lm.settings.model_copy(update={"reuse_kv_cache": False})
    )
    first = lm.generate(_conversation(), _images, settings=GREEDY, session="reuse")
    second = lm.generate(_conversation(first.text), _images, settings=GREEDY, session="reuse")
    f_first = fresh.generate(_conversation(), _images, settings=GREEDY, session="fresh")
    f_second = fresh.generate(
        _conversation(f_first.text), _images, settings=GREEDY, session="fresh"
    )
    assert (first.token_ids, second.token_ids) == (f_first.token_ids, f_second.token_ids)
    assert second.new_prompt_tokens < f_second.new_prompt_tokens == f_second.prompt_tokens
    record = lm.session_tokens("reuse")
    n = second.prompt_tokens
    reference = _full_recompute(
        lm,
        record["input_ids"][None, :n],
        record["mm_token_type_ids"][None, :n],
        record["pixel_values"],
        record["image_grid_thw"],
        GREEDY.max_new_tokens,
    )
    assert second.token_ids == reference
    # the record is the chat template's rendering of the conversation, token for token
    messages = [*_conversation(first.text), protocol.assistant_message(second.text)]
    rendered = lm.processor.apply_chat_template(messages, tokenize=False).removesuffix("\n")
    decoded = lm.processor.tokenizer.decode(record["input_ids"], skip_special_tokens=False)
    assert decoded.replace("<|image_pad|>", "") == rendered.replace("<|image_pad|>", "")
    # each 56x84 frame is 2x3 merged patches: 6 image tokens, 4 + 2 frames
    assert int((record["input_ids"] == 151655).sum()) == 6 * 6
    lm.end_session("reuse")


def test_a_reply_stops_at_im_end_and_keeps_its_tokens(lm, force_replies) -> None:
    reply = "<think>Frame 5 shows red.</think><answer>A</answer>"
    force_replies(lm.model, lm.processor.tokenizer, [reply])
    gen = lm.generate(_conversation(), _images, settings=LONG, session="s")
    tok = lm.processor.tokenizer
    assert gen.text == reply
    assert gen.token_ids == [*tok(reply, add_special_tokens=False)["input_ids"], 151645]
    action = protocol.parse_reply(gen.text, max_index=15, options=OPTIONS)
    assert (action.kind, action.answer) == ("answer", "A")
    [span] = lm.session_tokens("s")["replies"]
    assert span.sampled == span.length == len(gen.token_ids)
    ids = lm.session_tokens("s")["input_ids"]
    assert ids[span.start + span.length - 1] == 151645
    assert tok.decode(ids[span.start : span.start + span.length]) == reply + "<|im_end|>"
    lm.end_session("s")


def test_endoftext_also_stops_and_the_turn_is_closed_with_im_end(lm, force_replies) -> None:
    tok = lm.processor.tokenizer
    forced = force_replies(lm.model, tok, [])
    forced.tokens = [*tok("<think>x</think>", add_special_tokens=False)["input_ids"], 151643]
    gen = lm.generate(_conversation(), _images, settings=LONG, session="e")
    assert gen.token_ids[-1] == 151643 and gen.text == "<think>x</think>"
    [span] = lm.session_tokens("e")["replies"]
    ids = lm.session_tokens("e")["input_ids"]
    # the environment closes the turn with <|im_end|>, which the model did not sample
    assert ids[span.start + span.length - 1] == 151645 and span.sampled == span.length - 1
    lm.end_session("e")
