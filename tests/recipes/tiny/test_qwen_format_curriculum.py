"""The curriculum's token helpers on the real Qwen2.5-VL format, where the protocol's tags are
several tokens and words may be split into pieces."""

from __future__ import annotations

import pytest
import torch

from recipes.tiny.curriculum.reading import reading_marks, reading_supported
from recipes.tiny.curriculum.weights import content_token_ids, content_weights
from vmtr.config import ModelSettings
from vmtr.models.qwen import QwenVideoLM
from vmtr.policies.tags import tag_interior


@pytest.fixture(scope="module")
def lm(qwen_format_dir):
    return QwenVideoLM.load(ModelSettings(model=str(qwen_format_dir), device="cpu"))


def test_word_helpers_on_qwens_bpe(lm) -> None:
    tok = lm.processor.tokenizer
    content = set(content_token_ids(tok).tolist())
    assert {2518, 4878, 16576} <= content  # " red"; " magenta" is " mag" + "enta"
    text = "<think>Seen: frame 3 red circle.</think><retrieve>12, 20</retrieve>"
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    inside = tag_interior(tok, ids, "<retrieve>", "</retrieve>")
    assert tok.decode(ids[inside]) == "12, 20"
    weights = content_weights(ids, ids.clone(), content_token_ids(tok), 5.0, inside)
    assert weights[inside].eq(1.0).all() and weights.eq(5.0).sum() >= 3  # 3, red, circle
    # the reading check steers by single-token tags; on Qwen's BPE it says so instead of misreading
    assert not reading_supported(tok)
    with pytest.raises(ValueError, match="single"):
        reading_marks(tok)
