"""Video-MTR training on verl: agent loop, reward and turn-level GRPO (``pip install vmtr[verl]``).

Importing this package registers, in the process that imports it, the agent loop
``vmtr_video_mtr`` and the advantage estimator ``vmtr_grpo_turn``; verl's Ray workers import it
through ``VERL_USE_EXTERNAL_MODULES=vmtr.integrations.verl``. See ``examples/verl/``.
"""

from __future__ import annotations

try:
    import verl  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "vmtr.integrations.verl needs verl: pip install 'vmtr[verl]'"
    ) from err

from vmtr.integrations.verl.agent_loop import (
    AGENT_NAME,
    VideoMTRAgentLoop,
    VideoMTRAgentLoopManager,
)
from vmtr.integrations.verl.estimators import ESTIMATOR, compute_turn_grpo_advantage
from vmtr.integrations.verl.reward_manager import VideoMTRRewardManager

__all__ = [
    "AGENT_NAME",
    "ESTIMATOR",
    "VideoMTRAgentLoop",
    "VideoMTRAgentLoopManager",
    "VideoMTRRewardManager",
    "compute_turn_grpo_advantage",
]
