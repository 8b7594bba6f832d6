"""The tiny offline model: the same classes as Video-MTR-7B, small enough for two CPU cores.

No model hub is reachable where vmtr is developed and tested, so the project builds its own:
a byte-level BPE tokenizer trained here with `tokenizers` on the protocol's own text, Qwen2.5-VL
image/video processors built from parameters, and a `Qwen2_5_VLForConditionalGeneration` from a
small config. It is saved with `save_pretrained` and loads back through `AutoProcessor` and
`AutoModelForImageTextToText`, exactly like a hub checkpoint. A copy (trained when the training
recipes have run, random otherwise) ships in ``vmtr/assets/tiny`` as what ``--model tiny`` means.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from vmtr import protocol
from vmtr.config import ProtocolSettings

TINY_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"
"""Where the bundled tiny checkpoint lives inside the installed package."""

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
PROTOCOL_TOKENS = ["<think>", "</think>", "<answer>", "</answer>", "<retrieve>", "</retrieve>"]

# The Qwen2-VL conversation layout (one `<|im_start|>role ... <|im_end|>` block per message,
# images as vision_start / image_pad / vision_end), written as a compact Jinja template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TINY_FRAME_PIXELS = 112 * 112
"""One 112 px frame: 8x8 patches of 14 px, merged 2x2 into 16 visual tokens."""

COLOURS = ["red", "green", "blue", "yellow", "magenta", "cyan", "white", "orange"]
SHAPES = ["square", "circle", "triangle", "cross", "star", "diamond"]


def tokenizer_corpus(n: int = 400, seed: int = 0, extra_texts: Sequence[str] = ()) -> list[str]:
    """Protocol conversations (system, user turns, replies) to train the tokenizer on.

    ``extra_texts`` (for example the training set's questions, options and replies) are added so
    that the text a model is trained on tokenizes compactly.
    """
    rng = random.Random(seed)
    settings = ProtocolSettings()
    lines: list[str] = [protocol.system_message(settings)["content"][0]["text"]]
    for _ in range(n):
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        question = rng.choice(
            [
                f"What colour was the {shape} shown while the marker was visible?",
                f"Which shape appeared while the border was shown? Was it a {shape}?",
                f"Which came first, the {colour} {shape} or the other one?",
                "How many shapes appeared while the marker was shown?",
            ]
        )
        options = [f"{chr(65 + i)}. {rng.choice(COLOURS)} {rng.choice(SHAPES)}" for i in range(4)]
        turn = rng.randint(1, settings.max_turns)
        frames = sorted(rng.sample(range(64), rng.choice([8, 16])))
        message = protocol.user_message(
            turn=turn,
            frames=frames,
            timestamps=[float(i) for i in frames],
            question=question,
            options=options,
            pool_size=64,
            settings=settings,
            error=rng.choice([None, None, "the reply must be exactly one of the two forms."]),
        )
        lines.extend(p["text"] for p in message["content"] if p["type"] == "text")
        s = rng.randint(0, 60)
        lines.append(f"<think>The {colour} {shape} is near frame {s}.</think><answer>B</answer>")
        lines.append(
            f"<think>I need frames {s} to {s + 3}.</think><retrieve>{s}, {s + 3}</retrieve>"
        )
    lines.extend(extra_texts)
    return lines


def build_tokenizer(
    vocab_size: int = 1024, seed: int = 0, extra_texts: Sequence[str] = ()
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (digits split one by one, as Qwen's) on protocol text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(seed=seed, extra_texts=extra_texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=32768,
    )
    fast.add_tokens(PROTOCOL_TOKENS)
    return fast


def build_processor(
    tokenizer: PreTrainedTokenizerFast, max_pixels: int = TINY_FRAME_PIXELS
) -> Qwen2_5_VLProcessor:
    """Qwen2.5-VL processors from parameters: 14 px patches, 2x2 merge, the given pixel budget."""
    size = {"shortest_edge": 56 * 56, "longest_edge": max_pixels}
    image = Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    video = Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    return Qwen2_5_VLProcessor(
        image_processor=image,
        tokenizer=tokenizer,
        video_processor=video,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    vision_depth: int = 2,
    vision_hidden: int = 64,
) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config a few million parameters large.

    With the default vision tower (depth 2, hidden 64) a probe learned to locate a needle's frame,
    and its colour at 112 px frames and lr 3e-4 (at 56 px not for every seed; at lr 1e-3 it split
    the colours into groups); a tower of depth 4 and hidden 128 learned it at lr 1e-3 as well,
    and the trained tiny model has that one (docs/tiny-model.md).
    """
    ids = tokenizer.convert_tokens_to_ids
    head_dim = hidden // heads
    half = head_dim // 2
    # Split the rotary frequencies over (time, height, width) in Qwen2.5-VL-7B's 1:1.5:1.5 ratio.
    temporal = half // 4
    height = (half - temporal) // 2
    mrope = [temporal, height, half - temporal - height]
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": hidden * 4,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "max_position_embeddings": 16384,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": mrope,
            },
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": vision_hidden,
            "intermediate_size": vision_hidden * 2,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [vision_depth - 1],
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )


def build_tiny(
    out_dir: str | Path,
    *,
    seed: int = 0,
    extra_texts: Sequence[str] = (),
    vocab_size: int = 1024,
    **sizes: int,
) -> Path:
    """Build tokenizer, processor and a randomly initialised tiny model, and save all three.

    ``extra_texts`` join the tokenizer's corpus (see `tokenizer_corpus`); ``sizes`` are the
    keyword arguments of `tiny_config` (``hidden``, ``vision_depth``, ...).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(vocab_size=vocab_size, seed=seed, extra_texts=extra_texts)
    processor = build_processor(tokenizer)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(tokenizer, **sizes))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor.save_pretrained(out)
    model.save_pretrained(out)
    (out / "vmtr_tiny.json").write_text(
        json.dumps(
            {
                "trained": False,
                "seed": seed,
                "sizes": sizes,
                "description": "randomly initialised tiny Qwen2.5-VL; its replies are noise.",
                "recipe": "random init (vmtr.models.tiny)",
            }
        )
    )
    return out


def tiny_info(path: str | Path = TINY_DIR) -> dict:
    """What the bundled tiny checkpoint is: how it was trained, on what, and how well."""
    marker = Path(path) / "vmtr_tiny.json"
    return json.loads(marker.read_text()) if marker.exists() else {"trained": False}


if __name__ == "__main__":
    print(build_tiny(TINY_DIR))
