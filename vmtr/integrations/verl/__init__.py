"""Video-MTR training on verl: agent loop, reward and turn-level GRPO (``pip install vmtr[verl]``).

With verl installed, importing this package registers, in the importing process, the agent loop
``vmtr_video_mtr`` and the advantage estimator ``vmtr_grpo_turn``; verl's Ray workers import it
through ``VERL_USE_EXTERNAL_MODULES=vmtr.integrations.verl``. See ``examples/verl/``. The
framework-free parts (`transcript`, `episode`, `rewards`, `advantages`, `data`) import without
verl, so vmtr's own tests and tools can use them anywhere.
"""

from __future__ import annotations

from typing import Any

_VERL_NAMES = (
    "AGENT_NAME",
    "ESTIMATOR",
    "VideoMTRAgentLoop",
    "VideoMTRAgentLoopManager",
    "VideoMTRRewardManager",
    "compute_turn_grpo_advantage",
)

try:
    import verl  # noqa: F401
except ImportError:
    verl = None

if verl is not None:
    from vmtr.integrations.verl.agent_loop import AGENT_NAME as AGENT_NAME
    from vmtr.integrations.verl.agent_loop import VideoMTRAgentLoop as VideoMTRAgentLoop
    from vmtr.integrations.verl.agent_loop import (
        VideoMTRAgentLoopManager as VideoMTRAgentLoopManager,
    )
    from vmtr.integrations.verl.estimators import ESTIMATOR as ESTIMATOR
    from vmtr.integrations.verl.estimators import (
        compute_turn_grpo_advantage as compute_turn_grpo_advantage,
    )
    from vmtr.integrations.verl.reward_manager import (
        VideoMTRRewardManager as VideoMTRRewardManager,
    )
else:

    def __getattr__(name: str) -> Any:
        if name in _VERL_NAMES:
            raise ImportError(f"{name} needs verl: pip install 'vmtr[verl]'")
        raise AttributeError(name)
