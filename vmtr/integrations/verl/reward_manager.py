"""vmtr's reward as a verl reward manager (``reward.reward_manager``, importlib source).

verl computes rewards one episode at a time as rollouts finish (`run_single`); that gives one
number per episode, the sum of its gated per-turn rewards without the batch-level exploration
bonus. The per-turn placement and the bonus come from `VideoMTRAgentLoopManager`, which rescores
the finished batch; `assemble_rm_scores` does the same where verl scores a whole batch through
this manager (a colocated reward model run).
"""

from __future__ import annotations

from typing import Any

import torch
from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from vmtr.integrations.verl.agent_loop import RECORD_KEY, reward_settings
from vmtr.integrations.verl.rewards import reward_tensor, single_reward


def _record(data: DataProto, row: int) -> dict[str, Any]:
    """The episode record of ``row``: in the non-tensor data, or in the agent loop's extra
    fields as verl's streaming reward path hands them over."""
    if RECORD_KEY in data.non_tensor_batch:
        return data.non_tensor_batch[RECORD_KEY][row]
    return data.non_tensor_batch["tool_extra_fields"][row][RECORD_KEY]


class VideoMTRRewardManager(RewardManagerBase):
    """Gated bi-level reward of one Video-MTR episode (settings: ``reward.reward_kwargs.vmtr``)."""

    def __init__(self, config: Any, tokenizer: Any, compute_score: Any = None, **_: Any) -> None:
        # verl also hands over a reward-model router and tokenizer; this reward uses neither
        super().__init__(config, tokenizer, compute_score)

    async def run_single(self, data: DataProto) -> dict[str, Any]:
        reward = single_reward(_record(data, 0), reward_settings(self.config))
        return {
            "reward_score": reward.total,
            "reward_extra_info": {
                "vmtr_answer_reward": reward.answer,
                "vmtr_format_reward": sum(reward.format),
                "vmtr_frame_reward": sum(reward.frames),
            },
        }

    @classmethod
    def assemble_rm_scores(cls, data: DataProto, scores: list[float]) -> torch.Tensor:
        """Per-turn rewards on each reply's last token, the exploration bonus included (the
        per-episode ``scores`` are recomputed with the batch at hand)."""
        records = [_record(data, row) for row in range(len(data))]
        tensor, _ = reward_tensor(records, data.batch["responses"].shape[1])
        return tensor
