"""On the real Qwen2.5-VL format, the served backend's request renders, under the released chat
template, to exactly the prompt the in-process backend renders: a server (vLLM, SGLang,
`transformers serve`) that applies the model's own template sees the same conversation."""

from __future__ import annotations

import numpy as np
from PIL import Image
from transformers import AutoProcessor

from vmtr import protocol
from vmtr.config import ProtocolSettings
from vmtr.models.openai_api import chat_messages


def served_to_template(messages: list[dict]) -> list[dict]:
    """A chat-completions request as a server hands it to the chat template: each image_url part
    an image, each plain string a single text part."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            out.append({"role": message["role"], "content": [{"type": "text", "text": content}]})
            continue
        parts = [{"type": "image"} if part["type"] == "image_url" else part for part in content]
        out.append({"role": message["role"], "content": parts})
    return out


def test_served_request_renders_like_the_in_process_prompt(qwen_format_dir):
    processor = AutoProcessor.from_pretrained(qwen_format_dir)
    settings = ProtocolSettings(first_turn_frames=3, frames_per_retrieve=2, pool_size=8)
    options = ["A. red", "B. green", "C. blue"]
    messages = [
        protocol.system_message(settings),
        protocol.user_message(
            turn=1,
            frames=[0, 3, 7],
            timestamps=[0.5, 3.5, 7.5],
            question="What colour was the circle?",
            options=options,
            pool_size=8,
            settings=settings,
        ),
        protocol.assistant_message("<think>Look closer.</think><retrieve>2, 4</retrieve>"),
        protocol.user_message(
            turn=2,
            frames=[2, 4],
            timestamps=[2.5, 4.5],
            question="What colour was the circle?",
            options=options,
            pool_size=8,
            settings=settings,
        ),
    ]
    rng = np.random.default_rng(0)

    def frames(indices):
        return [Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)) for _ in indices]

    served = chat_messages(messages, frames)
    in_process = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    rendered = processor.apply_chat_template(
        served_to_template(served), add_generation_prompt=True, tokenize=False
    )
    assert rendered == in_process
    assert rendered.count("<|vision_start|><|image_pad|><|vision_end|>") == 5
