"""A stand-in for verl's server manager driven by the tiny model (for the verl tests)."""

from __future__ import annotations

import torch

from vmtr.config import GenerationSettings
from vmtr.models.qwen import QwenVideoLM, _Session


class TinyServer:
    """Stands in for verl's server manager: samples with vmtr's own decoding loop from exactly
    the token ids and images the agent loop sends (a fresh prefill each turn, as vLLM sees it)."""

    def __init__(self, lm: QwenVideoLM, generation: GenerationSettings) -> None:
        self.lm = lm
        self.generation = generation
        self.requests: list[tuple[str, int, int]] = []
        self.image_id = lm.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, **_):
        state = _Session()
        state.ids = torch.tensor([prompt_ids], dtype=torch.long)
        state.mm_types = (state.ids == self.image_id).long()
        if image_data:
            encoded = self.lm.processor.image_processor(images=image_data, return_tensors="pt")
            state.grids = list(encoded["image_grid_thw"])
            state.pixels = [encoded["pixel_values"]]
        gen = self.generation.model_copy(update={"max_new_tokens": sampling_params["max_tokens"]})
        tokens, logprobs = self.lm._decode(state, gen)
        self.requests.append((request_id, len(prompt_ids), len(image_data or [])))
        from verl.workers.rollout.replica import TokenOutput

        return TokenOutput(token_ids=tokens, log_probs=logprobs)
