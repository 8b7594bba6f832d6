"""The token record of one episode, built the way vmtr's own backend builds it (no verl needed).

`vmtr.models.qwen.QwenVideoLM` renders the whole conversation with the processor's chat
template before every turn, tokenizes only the text the previous turn had not covered (with the
frames new to it), and keeps each reply's tokens as sampled: the reply text is what the model
sampled up to its stop token, and the environment closes it with ``<|im_end|>``. `Transcript`
applies the same rule to tokens that come back from another server (verl's vLLM replicas), so an
episode run through verl's agent loop holds exactly the token ids, loss mask and reply spans that
`vmtr.policies.rollout` records for the same replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from vmtr.protocol import Message, frames_in


def pixel_budget(processor: Any, max_pixels: int, min_pixels: int) -> dict[str, int]:
    """Per-frame pixel budget for decoding pool frames, capped by the processor's own maximum
    (the rule `QwenVideoLM.pixel_budget` applies)."""
    image_proc = processor.image_processor
    size = getattr(image_proc, "size", None) or {}
    proc_max = size.get("longest_edge") or getattr(image_proc, "max_pixels", None)
    budget = int(max_pixels)
    if proc_max:
        budget = min(budget, int(proc_max))
    factor = image_proc.patch_size * image_proc.merge_size
    return {"max_pixels": budget, "min_pixels": int(min_pixels), "factor": factor}


def stop_token_ids(processor: Any, extra: Sequence[int] = ()) -> tuple[int, list[int]]:
    """(``<|im_end|>`` id, every id that ends a reply): the end of turn, the tokenizer's end of
    sequence and ``<|endoftext|>``, the stops Qwen2.5-VL's generation config names."""
    tok = processor.tokenizer
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    stops = {end_id, *extra}
    if tok.eos_token_id is not None:
        stops.add(int(tok.eos_token_id))
    text_end = tok.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(text_end, int) and text_end != tok.unk_token_id:
        stops.add(text_end)
    return end_id, sorted(stops)


@dataclass
class Transcript:
    """Token ids, loss mask, sampling log-probs and reply spans of one episode, as it grows.

    ``ids`` holds every token the model saw or sampled, prompt first; ``mask`` is 1 on tokens
    the model sampled and 0 on everything the environment added; ``spans`` holds the (first,
    last) index of each reply's sampled tokens, whose last token is where that turn's reward sits.
    """

    processor: Any
    end_id: int
    stop_ids: Sequence[int]
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    text: str = ""
    shown: int = 0  # frames of the conversation already tokenized

    def add_messages(self, messages: Sequence[Message], frames: Any) -> int:
        """Tokenize what ``messages`` add to the transcript (ending with the assistant header),
        decoding their new frames with ``frames(pool_indices) -> images``; returns how many
        tokens were added."""
        text = self.processor.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False
        )
        if not text.startswith(self.text):
            raise ValueError("the conversation no longer extends the transcript")
        wanted = [i for message in messages for i in frames_in(message)]
        new_frames = wanted[self.shown :]
        images = list(frames(new_frames)) if new_frames else None
        encoded = self.processor(text=[text[len(self.text) :]], images=images, return_tensors="pt")
        added = [int(t) for t in encoded["input_ids"][0]]
        self.ids += added
        self.mask += [0] * len(added)
        self.logprobs += [0.0] * len(added)
        self.images += images or []
        self.shown = len(wanted)
        self.text = text
        return len(added)

    def add_reply(self, tokens: Sequence[int], logprobs: Sequence[float] | None) -> str:
        """Append one sampled reply; returns its text (what the parser reads).

        The reply is what was sampled up to its stop token; the environment closes it with
        ``<|im_end|>``. That closing token counts as the model's (mask 1) only when the model
        sampled it; a reply cut by the length limit or ended by another stop token gets it from
        the environment (mask 0)."""
        tokens = [int(t) for t in tokens]
        logprobs = list(logprobs) if logprobs else [0.0] * len(tokens)
        stopped = bool(tokens) and tokens[-1] in self.stop_ids
        closing = tokens[:-1] if stopped else tokens
        sampled = len(closing) + (1 if tokens and tokens[-1] == self.end_id else 0)
        reply = self.processor.tokenizer.decode(
            [t for t in tokens if t not in self.stop_ids], skip_special_tokens=False
        )
        first = len(self.ids)
        self.ids += [*closing, self.end_id]
        self.mask += [1] * sampled + [0] * (len(closing) + 1 - sampled)
        self.logprobs += [float(x) for x in logprobs[:sampled]]
        self.logprobs += [0.0] * (len(closing) + 1 - sampled)
        # A reply whose only token was a foreign stop has no sampled token: its reward sits on
        # the closing token.
        self.spans.append((first, first + max(sampled, 1) - 1))
        self.text += reply + "<|im_end|>"
        return reply
