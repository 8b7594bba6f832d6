"""Content weighting: what was read weighs more, random retrieve digits do not."""

from __future__ import annotations

import torch

from recipes.tiny.curriculum import weights
from vmtr.policies import conversation
from vmtr.policies.tags import tag_interior


def test_content_weights_boost_what_was_read_but_not_random_ranges(tiny) -> None:
    processor, _ = tiny
    tok = processor.tokenizer
    text = "<think>Seen: frame 3 red circle.</think><retrieve>8, 15</retrieve>"
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    labels = ids.clone()
    labels[:2] = conversation.IGNORE
    content = weights.content_token_ids(tok)
    in_retrieve = tag_interior(tok, ids, "<retrieve>", "</retrieve>")
    boost = weights.content_weights(ids, labels, content, 5.0, in_retrieve)
    words = tok.convert_ids_to_tokens(ids.tolist())
    boosted = {w.strip("Ġ ") for w, x in zip(words, boost.tolist(), strict=True) if x == 5.0}
    assert {"3", "red", "circle"} <= boosted
    assert not {"8", "1", "5"} & boosted  # the retrieve range's digits stay at weight 1
    assert boost[:2].tolist() == [0.0, 0.0]
    assert set(boost[2:].tolist()) <= {1.0, 5.0}
    # aimed ranges were read off the border, so their digits count as content
    aimed = weights.content_weights(ids, labels, content, 5.0, in_retrieve, aimed=True)
    words_at = {w.strip("Ġ ") for w, x in zip(words, aimed.tolist(), strict=True) if x == 5.0}
    assert {"8", "1", "5"} <= words_at
