"""The Video-MTR protocol as a verl agent loop, and the rollout manager that scores its batch.

`VideoMTRAgentLoop` (registered as ``vmtr_video_mtr``) plays one episode per dataset row with
`vmtr.integrations.verl.episode.run_episode`: every reply is generated token-in/token-out by
verl's server manager from the exact token ids and images of the episode so far, so a retrieve's
frames reach the model as images in the next user message. Its output is verl's: the first
prompt, then every reply and environment message as the response, with mask 1 on sampled tokens
only; ``extra_fields["vmtr"]`` carries the per-turn outcomes and each reply's last position.

verl's per-sample reward path can only put one number on the last token, and Video-MTR's
exploration bonus needs the whole batch, so `VideoMTRAgentLoopManager` (set it as
``actor_rollout_ref.rollout.agent.agent_loop_manager_class``) replaces the batch's ``rm_scores``
with the per-turn rewards of `vmtr.integrations.verl.rewards.reward_tensor`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopManager,
    AgentLoopMetrics,
    AgentLoopOutput,
    register,
)
from verl.protocol import DataProto
from verl.utils.ray_utils import auto_await

from vmtr.config import ModelSettings, ProtocolSettings
from vmtr.eval.datasets import QAItem
from vmtr.integrations.verl.data import AGENT_NAME
from vmtr.integrations.verl.episode import frame_reader, reward_inputs, run_episode
from vmtr.integrations.verl.rewards import reward_tensor
from vmtr.integrations.verl.transcript import Transcript, pixel_budget, stop_token_ids
from vmtr.policies.rewards import RewardSettings
from vmtr.tools.video import FrameCache

ITEM_KEY = "vmtr_item"
"""Dataset column holding the item as JSON (`vmtr.integrations.verl.data` writes it)."""
RECORD_KEY = "vmtr"
"""Key of the reward record in the output's ``extra_fields`` (and the batch's non-tensor data)."""


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def item_from_json(text: str | Mapping[str, Any]) -> QAItem:
    """The `QAItem` a dataset row carries (see `vmtr.integrations.verl.data.item_json`)."""
    data = json.loads(text) if isinstance(text, str) else dict(text)
    return QAItem(
        id=str(data["id"]),
        video=Path(data["video"]),
        question=data["question"],
        options=list(data.get("options") or []),
        answer=data.get("answer"),
        relevant_windows=[(float(s), float(e)) for s, e in data.get("relevant_windows") or []],
    )


@register(AGENT_NAME)
class VideoMTRAgentLoop(AgentLoopBase):
    """verl agent loop running one Video-MTR episode per dataset row.

    Keyword settings (from the agent-loop config file): ``protocol`` (`ProtocolSettings`
    fields), ``max_pixels`` / ``min_pixels`` (per-frame budget, vmtr's defaults unless set) and
    ``max_new_tokens`` (per reply; the response length caps the episode as a whole).
    """

    frame_cache = FrameCache(max_frames=1024)  # shared by the episodes of one worker

    def __init__(
        self,
        *args: Any,
        protocol: Mapping[str, Any] | None = None,
        max_pixels: int | None = None,
        min_pixels: int | None = None,
        max_new_tokens: int = 512,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.protocol = ProtocolSettings(**(_plain(protocol) or {}))
        defaults = ModelSettings(model="custom")
        self.budget = pixel_budget(
            self.processor,
            max_pixels if max_pixels is not None else defaults.max_pixels,
            min_pixels if min_pixels is not None else defaults.min_pixels,
        )
        self.max_new_tokens = int(max_new_tokens)
        self.end_id, self.stop_ids = stop_token_ids(self.processor)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        item = item_from_json(kwargs[ITEM_KEY])
        response_length = int(self.rollout_config.response_length)
        request_id = uuid4().hex  # one id per episode: its turns share a server's prefix cache
        transcript = Transcript(self.processor, self.end_id, self.stop_ids)
        metrics = AgentLoopMetrics()
        read = frame_reader(self.frame_cache, self.budget)

        async def generate(
            ids: list[int], images: list[Image.Image], room: int | None
        ) -> tuple[list[int], list[float] | None]:
            limit = self.max_new_tokens if room is None else min(self.max_new_tokens, room)
            output = await self.server_manager.generate(
                request_id=request_id,
                prompt_ids=ids,
                sampling_params=dict(sampling_params, max_tokens=max(1, limit)),
                image_data=images or None,
            )
            return list(output.token_ids), output.log_probs

        async def offload(work: Any) -> Any:
            return await asyncio.get_running_loop().run_in_executor(None, work)

        episode = await run_episode(
            item,
            transcript,
            generate,
            read,
            self.protocol,
            token_budget=response_length,
            offload=offload,
        )
        start = episode.prompt_length
        if start > self.rollout_config.prompt_length:
            raise ValueError(
                f"item {item.id}: the first turn is {start} tokens, over "
                f"rollout.prompt_length={self.rollout_config.prompt_length}; frames cannot be "
                "cut, so raise prompt_length or lower max_pixels / first_turn_frames"
            )
        ids, mask, logprobs = transcript.ids, transcript.mask, transcript.logprobs
        record = reward_inputs(episode)
        return AgentLoopOutput(
            prompt_ids=ids[:start],
            response_ids=ids[start:][:response_length],
            response_mask=mask[start:][:response_length],
            response_logprobs=logprobs[start:][:response_length],
            multi_modal_data={"images": list(transcript.images)} if transcript.images else {},
            num_turns=len(episode.messages),
            metrics=metrics,
            extra_fields={
                RECORD_KEY: record,
                "messages": episode.messages,
                "turn_scores": [],
                "tool_rewards": [],
            },
        )


class VideoMTRAgentLoopManager(AgentLoopManager):
    """verl's agent loop manager, with the batch's token-level scores replaced by vmtr's
    per-turn rewards (the exploration bonus needs every episode of the batch at once).

    Reward settings come from ``reward.reward_kwargs.vmtr`` when present (`RewardSettings`
    fields), else vmtr's defaults (the released code's variant)."""

    @auto_await
    async def generate_sequences(self, prompts: DataProto) -> DataProto:
        output = await super().generate_sequences(prompts)
        settings = reward_settings(self.config)
        return score_batch(output, settings)


def reward_settings(config: Any) -> RewardSettings:
    """`RewardSettings` from ``reward.reward_kwargs.vmtr`` of verl's config (defaults if absent)."""
    try:
        found = config.reward.reward_kwargs.get("vmtr")
    except AttributeError:
        found = None
    return RewardSettings(**(_plain(found) or {}))


def score_batch(output: DataProto, settings: RewardSettings) -> DataProto:
    """Put vmtr's per-turn rewards into ``rm_scores`` (the batch's token-level scores) and the
    reward's parts into the non-tensor data, where verl logs them."""
    records = list(output.non_tensor_batch[RECORD_KEY])
    length = output.batch["responses"].shape[1]
    scores, rewards = reward_tensor(records, length, settings)
    output.batch["rm_scores"] = scores
    parts = {
        "vmtr_answer_reward": [r.answer for r in rewards],
        "vmtr_format_reward": [sum(r.format) for r in rewards],
        "vmtr_frame_reward": [sum(r.frames) for r in rewards],
        "vmtr_bonus": [sum(r.bonus) for r in rewards],
        "vmtr_turns": [len(r.per_turn) for r in rewards],
    }
    for key, values in parts.items():
        output.non_tensor_batch[key] = np.array(values, dtype=np.float32)
    keys = list(output.meta_info.get("reward_extra_keys", []))
    output.meta_info["reward_extra_keys"] = keys + [k for k in parts if k not in keys]
    return output
