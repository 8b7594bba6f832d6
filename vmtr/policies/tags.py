"""Where a text-level tag such as ``<answer>`` sits in a token sequence, whatever the tokenizer.

The tiny tokenizer has the protocol's tags as single added tokens, but Qwen's BPE (every
Qwen2.5-VL checkpoint) spells ``<answer>`` as ``<``, ``answer``, ``>`` and may even fuse a tag's
last character with what follows (``>B`` is one token in ``<answer>B</answer>``). So spans are
found on the bytes the tokens stand for, not by token id: each token's bytes are laid end to end
and a token belongs to a span when any of its bytes do.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode


@lru_cache(maxsize=1)
def _byte_of() -> dict[str, int]:
    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_bytes(tokenizer: Any, ids: Sequence[int]) -> list[bytes]:
    """The bytes each token stands for: byte-level BPE pieces mapped back through the GPT-2
    byte alphabet; added tokens (``<|im_end|>``, the tiny model's ``<answer>``) as their text."""
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    byte_of = _byte_of()
    out = []
    for piece in tokenizer.convert_ids_to_tokens(list(ids)):
        if piece is None:
            out.append(b"")
        elif piece in added or any(c not in byte_of for c in piece):
            out.append(piece.encode())
        else:
            out.append(bytes(byte_of[c] for c in piece))
    return out


def tag_interior(
    tokenizer: Any, ids: torch.Tensor | Sequence[int], open_tag: str, close_tag: str
) -> torch.Tensor:
    """True at every token that overlaps the text strictly between an ``open_tag`` and the next
    ``close_tag`` (a token shared with a tag counts: it carries part of what is inside)."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    pieces = token_bytes(tokenizer, values)
    ends, total = [], 0
    for piece in pieces:
        total += len(piece)
        ends.append(total)
    text = b"".join(pieces)
    inside = torch.zeros(len(values), dtype=torch.bool)
    opening, closing = open_tag.encode(), close_tag.encode()
    at = text.find(opening)
    while at >= 0:
        first = at + len(opening)
        last = text.find(closing, first)
        if last < 0:
            last = len(text)
        if last > first:
            for k, end in enumerate(ends):
                start = end - len(pieces[k])
                if start < last and end > first:
                    inside[k] = True
        at = text.find(opening, last)
    return inside


def single_token(tokenizer: Any, text: str) -> int | None:
    """The id of ``text`` when the tokenizer writes it as one token, else None."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None
