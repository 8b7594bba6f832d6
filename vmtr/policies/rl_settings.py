"""`RLSettings`: everything `vmtr train rl` can change, checked once, before anything loads.

Defaults follow Video-MTR's released run script (clip 0.2, entropy 0.001, KL 0.001, grad clip 1.0,
actor lr 1e-6, critic lr 1e-5, rollout temperature 0.7, top-p 0.95, 512 new tokens, 16 prompts x
2 samples). Options that only mean something under one algorithm refuse the other, so a flag never
silently does nothing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vmtr.config import ProtocolSettings
from vmtr.policies.loss_agg import LossAgg
from vmtr.policies.rewards import RewardSettings


class RLSettings(BaseModel):
    """Everything `vmtr train rl` can change."""

    model_config = ConfigDict(extra="forbid")

    algo: Literal["ppo", "grpo"] = "grpo"
    credit: Literal["trajectory", "turn"] = Field(
        "trajectory",
        description="GRPO only: one advantage per episode, or per turn (reward-to-go normalised "
        "among the group's episodes at the same turn).",
    )
    group_std: bool = Field(
        True,
        description="GRPO: divide by the group's standard deviation (False: only centre, as "
        "Dr. GRPO does, so small reward gaps stay small).",
    )
    steps: int = Field(500, ge=1)
    prompts_per_step: int = Field(16, ge=1)
    samples_per_prompt: int = Field(2, ge=1)
    actor_lr: float = 1e-6
    critic_lr: float = 1e-5
    clip: float = 0.2
    entropy_coef: float = 0.001
    kl_coef: float = 0.001
    grad_clip: float = 1.0
    ppo_epochs: int = Field(1, ge=1)
    micro_batch: int = Field(
        0,
        ge=0,
        description="Trajectories per forward in the update (padded to the longest); 0: 8 on a "
        "GPU, 1 on the CPU (one thread gains nothing from rows side by side: a colour RL step's "
        "32 trajectories updated in 20-22 s one at a time against 24-26 s in eights).",
    )
    gamma_turn: float = 1.0
    lam_turn: float = 1.0
    gamma: float = 1.0
    lam: float = 1.0
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 512
    lora_rank: int = Field(0, ge=0, description="> 0 trains a LoRA adapter instead.")
    train_tokens: Literal["reply", "action", "decision"] = Field(
        "reply",
        description="Which sampled tokens the policy gradient moves: the whole reply (as "
        "Video-MTR); only its action (`<retrieve>`/`<answer>`), keeping what the think text "
        "says it saw out of RL's reach, which leaves a decision the think text states ('Need "
        "more frames.') untrained; or the decision: the think block's last sentence and the "
        "action (vmtr.policies.action_tokens).",
    )
    kl_tokens: Literal["reply", "untrained"] = Field(
        "reply",
        description="Which sampled tokens the KL term anchors to the reference: all of them, or "
        "those the policy gradient leaves alone (with --train-tokens action or decision: what "
        "the think text reports seeing), so the shared weights cannot drift that text while "
        "the action and decision train.",
    )
    loss_agg: LossAgg = Field(
        "seq-mean-token-mean",
        description="How the policy-gradient and entropy terms sum a step's tokens (verl's "
        "loss_agg_mode): each trajectory's mean over its trained tokens, then the mean over "
        "trajectories (GRPO's); the mean over every trained token of the step (DAPO's); or each "
        "trajectory's sum over a fixed horizon, max_turns x max_new_tokens (Dr. GRPO's). The "
        "first gives every trajectory the same weight, however many turns it took; the last two "
        "give every token the same weight (vmtr.policies.loss_agg).",
    )
    share_prompt: bool = Field(
        True,
        description="GRPO with the vision tower fixed: the update runs a group's shared first "
        "prompt once for all its samples (the same log-probs and gradients, less compute).",
    )
    drop_flat_groups: bool = Field(
        True,
        description="GRPO, one process: leave out of the update every trajectory with no "
        "advantage on the tokens it trains (a group whose samples all scored the same), as "
        "DAPO's dynamic sampling drops such groups. Their policy gradient is zero; they would add "
        "only their share of the entropy bonus and KL term, at the cost of a forward and backward "
        "pass each (a third to two thirds of a colour RL step's trajectories).",
    )
    skip_solved: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="The chance of passing over a question whose last group all answered right "
        "with the same reward (under GRPO no advantage: its episodes taught nothing) and asking "
        "the next one instead, so more of a step's rollouts land on questions the policy has "
        "not solved (vmtr.policies.prompt_picker). 0: every question is equally likely.",
    )
    branch: int = Field(
        0,
        ge=0,
        description="GRPO: after each step's rollouts, replay one episode per group whose first "
        "retrieve left evidence unseen up to that retrieve, and sample this many continuations "
        "from there; they form a group of their own with the replayed reply untrained, so the "
        "search after a missed first look is judged against searches from the same place "
        "(vmtr.policies.branching). 0: no branches.",
    )
    branch_first: int = Field(
        0,
        ge=0,
        description="GRPO: after each step's rollouts, replay the first reply of one episode per "
        "group whose first turn left evidence unseen up to its <retrieve> tag, and sample this "
        "many ranges from there, each played out; they form a group of their own with the "
        "replayed text untrained, so first aims that follow the same reading are compared "
        "(vmtr.policies.branching.branch_first). 0: none.",
    )
    branch_first_temperature: float | None = Field(
        None,
        gt=0.0,
        description="Sampling temperature of the first-decision branches (their range and all "
        "that follows); None: the rollouts' own.",
    )
    freeze_vision: bool = Field(
        False,
        description="Keep the vision tower fixed: RL then trains where to look and when to answer, "
        "and the update skips the tower's backward pass.",
    )
    save_merged: bool = Field(
        False,
        description="LoRA: a merged full model in every checkpoint's merged/ (the final one "
        "always gets it).",
    )
    quantization: Literal["none", "4bit", "8bit"] = "none"
    save_every: int = Field(50, ge=1)
    seed: int = 0
    reward: RewardSettings = RewardSettings()
    protocol: ProtocolSettings = ProtocolSettings()

    @model_validator(mode="after")
    def _grpo_options_need_grpo(self) -> RLSettings:
        if self.algo == "ppo" and self.credit != "trajectory":
            raise ValueError(
                "--credit is GRPO's; PPO's bi-level GAE already gives each turn its own"
            )
        if self.algo == "ppo" and not self.group_std:
            raise ValueError(
                "--no-group-std is GRPO's; PPO whitens its advantages over the whole batch"
            )
        if self.algo == "ppo" and (self.branch or self.branch_first):
            raise ValueError("--branch and --branch-first are GRPO's: they form groups")
        if self.kl_tokens == "untrained" and (self.train_tokens == "reply" or self.kl_coef <= 0):
            raise ValueError(
                "--kl-tokens untrained anchors what --train-tokens action or decision leaves "
                "untrained, with --kl-coef > 0"
            )
        return self
