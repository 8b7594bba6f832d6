"""`vmtr train rl`: PPO (bi-level GAE, value head) or GRPO on the agent's own protocol.

One recipe class, read top to bottom: `setup` (policy, frozen reference, critic, optimiser, data),
`train` (per step: rollouts through the agent graph -> gated bi-level rewards -> advantages ->
clipped policy loss + value loss + KL to the reference - entropy bonus), `save` / `resume`.
Batch means go to ``metrics.jsonl``, every episode (replies, actions, reward terms per turn) to
``rollouts.jsonl``; a resumed run drops the rows of steps it repeats.
Settings (`vmtr.policies.rl_settings`) default to Video-MTR's released run script; the tiny model
needs a far larger learning rate.

Under `accelerate launch` each process rolls out its own share of the step's prompts and DDP
averages gradients. Full fine-tuning for small models; LoRA (peft) or QLoRA (4-bit) for big ones,
where the reference is the base model with the adapter switched off.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vmtr.config import GenerationSettings, ModelSettings
from vmtr.eval.datasets import QAItem, load_video_mtr_json
from vmtr.models.adapters import MERGED_DIR, add_lora, load_adapter, save_adapter, save_merged
from vmtr.models.qwen import QwenVideoLM
from vmtr.policies.action_tokens import action_token_mask
from vmtr.policies.advantages import bilevel_gae, grpo_advantages, grpo_turn_advantages
from vmtr.policies.branching import branch, branch_first, branch_stats
from vmtr.policies.logprobs import (
    batch_inputs,
    group_token_logprobs,
    shared_prefix,
    token_logprobs,
    vision_replayed,
)
from vmtr.policies.loss_agg import row_divisors
from vmtr.policies.prompt_picker import PromptPicker
from vmtr.policies.rl_settings import RLSettings
from vmtr.policies.rollout import Trajectory, rollout, score
from vmtr.policies.run_log import plot_metrics, rollout_record, trim_log

BRANCH_ON_ONE_PROCESS = (
    "--branch and --branch-first run on one process: how many episodes a step branches differs "
    "between processes, and under DDP every process must run the same backward passes"
)


class ValueModel(nn.Module):
    """The critic: a copy of the policy's backbone with a scalar head (zero-initialised, so
    training starts from value 0 everywhere, as the paper's critic-from-policy does in spirit)."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(policy.model)
        hidden = policy.config.text_config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, **inputs: Any) -> torch.Tensor:
        hidden = self.backbone(**vision_replayed(self.backbone, inputs)).last_hidden_state
        return self.head(hidden.float()).squeeze(-1)


def length_chunks(trajectories: Sequence[Trajectory], size: int) -> list[list[int]]:
    """Indices of ``trajectories`` in micro-batches of at most ``size``, shortest first: rows of
    like length share a batch, so little of it is padding (a multi-turn step's trajectories
    range from one turn to four, and a batch costs as much as its longest row)."""
    order = sorted(range(len(trajectories)), key=lambda i: int(trajectories[i].input_ids.shape[0]))
    return [order[first : first + size] for first in range(0, len(order), size)]


def padded(rows: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """1-D tensors stacked into ``[rows, width]``, zero-padded on the right."""
    out = torch.zeros((len(rows), width), dtype=rows[0].dtype)
    for row, x in enumerate(rows):
        out[row, : x.shape[0]] = x
    return out


def turn_token_advantages(traj: Trajectory, turn_adv: list[float]) -> torch.Tensor:
    """Each turn's advantage on that turn's sampled tokens, 0 on everything else."""
    adv = torch.zeros(traj.action_mask.shape, dtype=torch.float32)
    for (first, last), a in zip(traj.turn_spans, turn_adv, strict=True):
        adv[first : last + 1] = a
    return adv * traj.action_mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the mask's ones; per row (last axis) for 2-D inputs."""
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


class RLRecipe:
    """setup -> train -> save, with resume."""

    def __init__(
        self,
        data: str | Path,
        out: str | Path,
        model: str,
        settings: RLSettings,
        *,
        log: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.data, self.out, self.model_spec = Path(data), Path(out), model
        self.s = settings
        self.log = log
        self.step = 0

    # -- setup ----------------------------------------------------------------------------------

    def setup(self) -> None:
        from accelerate import Accelerator

        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        if (self.s.branch or self.s.branch_first) and self.acc.num_processes > 1:
            raise ValueError(BRANCH_ON_ONE_PROCESS)
        random.seed(self.s.seed + self.acc.process_index)
        torch.manual_seed(self.s.seed)
        self.items = load_video_mtr_json(self.data)
        if not self.items:
            raise ValueError(f"{self.data}: no training items")
        self.by_id = {item.id: item for item in self.items}
        self.picker = PromptPicker(
            self.items, self.s.prompts_per_step, self.s.seed, self.s.skip_solved
        )
        resume = self.latest_checkpoint()
        lora = self.s.lora_rank > 0
        # A LoRA checkpoint holds the adapter alone: the base loads from the original spec and
        # the adapter goes back on it, trainable, so the optimiser state lines up again.
        spec = str(resume) if resume and not lora else self.model_spec
        self.lm = QwenVideoLM.load(
            ModelSettings(
                model=spec,
                device=str(self.acc.device),
                quantization=self.s.quantization,
                dtype="float32" if self.acc.device.type == "cpu" else "auto",
            )
        )
        policy = self.lm.model
        if lora:
            policy = (
                load_adapter(policy, resume, trainable=True)
                if resume
                else add_lora(policy, self.s.lora_rank)
            )
        if self.s.freeze_vision:
            self.lm.core.visual.requires_grad_(False)
        # a fixed tower's embeddings from the rollouts stand in for its forward in the update
        # (one process: under DDP the embedding lookup would run outside the wrapped forward)
        self.cached_vision = self.s.freeze_vision and self.acc.num_processes == 1
        self.micro_batch = self.s.micro_batch or (1 if self.acc.device.type == "cpu" else 8)
        self.reference = None
        if self.s.kl_coef > 0 and not lora:
            self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
        policy.train()
        self.optimizer = torch.optim.AdamW(
            [p for p in policy.parameters() if p.requires_grad], lr=self.s.actor_lr
        )
        self.critic = self.critic_optimizer = None
        if self.s.algo == "ppo":
            self.critic = ValueModel(policy if self.s.lora_rank == 0 else self.lm.model)
            if resume and (resume / "critic.pt").exists():
                self.critic.load_state_dict(torch.load(resume / "critic.pt", weights_only=True))
            self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), lr=self.s.critic_lr)
            self.critic, self.critic_optimizer = self.acc.prepare(
                self.critic, self.critic_optimizer
            )
        self.policy, self.optimizer = self.acc.prepare(policy, self.optimizer)
        if resume:
            state = torch.load(resume / "trainer_state.pt", weights_only=False)
            self.optimizer.load_state_dict(state["optimizer"])
            if self.critic_optimizer is not None and "critic_optimizer" in state:
                self.critic_optimizer.load_state_dict(state["critic_optimizer"])
            self.step = state["step"]
            # rows past the checkpoint came from steps that will run again
            trim_log(self.rollouts_path(), self.step)
            if self.acc.is_main_process:
                trim_log(self.out / "metrics.jsonl", self.step)
            self.picker.replay(self.rollouts_path())
            random.setstate(state["python_rng"])
            torch.set_rng_state(state["torch_rng"])

    def rollouts_path(self) -> Path:
        """This process's per-episode log (one file per process: episodes are not gathered)."""
        rank = self.acc.process_index
        return self.out / ("rollouts.jsonl" if rank == 0 else f"rollouts-rank{rank}.jsonl")

    def log_rollouts(self, trajectories: list[Trajectory]) -> None:
        """One line per episode of the step about to be trained on: its replies, actions and
        reward terms per turn, so a drift (to more turns, to one letter) can be traced to the
        episodes and rewards that drove it; metrics.jsonl only has batch means."""
        with self.rollouts_path().open("a") as f:
            for traj in trajectories:
                f.write(json.dumps(rollout_record(self.step + 1, traj)) + "\n")

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        found = [p for p in found if (p / "trainer_state.pt").exists()]
        return found[-1] if found else None

    # -- one step -------------------------------------------------------------------------------

    def sample_prompts(self) -> list[QAItem]:
        return self.picker.pick(self.step, self.acc.process_index, self.acc.num_processes)

    def train_step(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.policy.eval()
        gen = GenerationSettings(
            temperature=self.s.temperature, top_p=self.s.top_p, max_new_tokens=self.s.max_new_tokens
        )
        self.lm.model = self.acc.unwrap_model(self.policy)
        with torch.no_grad():
            trajectories = rollout(
                self.lm,
                self.sample_prompts(),
                group_size=self.s.samples_per_prompt,
                seed=self.rollout_seed,
                protocol_settings=self.s.protocol,
                generation=gen,
            )
        stats = score(trajectories, self.by_id, self.s.reward)
        self.picker.record(
            (t.item_id, t.group, t.reward.total, bool(t.correct)) for t in trajectories
        )
        if self.s.branch:
            branches = self.branched(branch, self.s.branch, trajectories, gen)
            stats.update(branch_stats(branches, self.by_id, self.s.reward))
            trajectories = trajectories + branches
        if self.s.branch_first:
            hot = self.s.branch_first_temperature
            first_gen = gen if hot is None else gen.model_copy(update={"temperature": hot})
            firsts = self.branched(branch_first, self.s.branch_first, trajectories, first_gen)
            stats.update(branch_stats(firsts, self.by_id, self.s.reward, "first_branch"))
            trajectories = trajectories + firsts
        self.log_rollouts(trajectories)
        rollout_seconds = time.perf_counter() - started
        self.policy.train()
        losses = self.update(trajectories)
        self.step += 1
        metrics = {
            "step": self.step,
            **stats,
            **losses,
            "prompts_passed_over": self.picker.passed_over,
            "rollout_s": rollout_seconds,
            "step_s": time.perf_counter() - started,
        }
        return metrics

    @property
    def rollout_seed(self) -> int:
        """This step's sampling seed on this process."""
        return self.s.seed * 100_003 + self.step * 101 + self.acc.process_index

    def branched(
        self,
        make: Callable[..., list[Trajectory]],
        k: int,
        trajectories: list[Trajectory],
        gen: GenerationSettings,
    ) -> list[Trajectory]:
        """This step's branches from its own episodes: `branching.branch`'s continuations after
        a first retrieve that missed, or `branching.branch_first`'s after a first reply's
        ``<retrieve>`` tag (``make``), ``k`` from each point."""
        with torch.no_grad():
            return make(
                self.lm,
                trajectories,
                self.by_id,
                k=k,
                seed=self.rollout_seed,
                protocol_settings=self.s.protocol,
                generation=gen,
            )

    def advantages(self, trajectories: list[Trajectory]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per trajectory: (token advantages [L], value targets [L] or empty)."""
        out = []
        if self.s.algo == "grpo" and self.s.credit == "turn":
            per_turn = grpo_turn_advantages(
                [t.reward.per_turn for t in trajectories],
                [t.group for t in trajectories],
                gamma=self.s.gamma_turn,
                scale=self.s.group_std,
            )
            for traj, turn_adv in zip(trajectories, per_turn, strict=True):
                out.append((turn_token_advantages(traj, turn_adv), torch.empty(0)))
            return out
        if self.s.algo == "grpo":
            adv = grpo_advantages(
                [t.reward.total for t in trajectories],
                [t.group for t in trajectories],
                scale=self.s.group_std,
            )
            for traj, a in zip(trajectories, adv, strict=True):
                out.append((traj.action_mask * a, torch.empty(0)))
            return out
        all_values: list[torch.Tensor] = [torch.empty(0)] * len(trajectories)
        for indices in length_chunks(trajectories, self.micro_batch):
            chunk = [trajectories[i] for i in indices]
            with torch.no_grad():
                inputs = batch_inputs(self.lm, chunk, cached_vision=self.cached_vision)
                values = self.critic(**inputs).view(len(chunk), -1).cpu()
            for i, v in zip(indices, values, strict=True):
                all_values[i] = v[: trajectories[i].input_ids.shape[0]]
        for traj, values in zip(trajectories, all_values, strict=True):
            a, ret = bilevel_gae(
                values,
                traj.turn_spans,
                traj.reward.per_turn,
                gamma_turn=self.s.gamma_turn,
                lam_turn=self.s.lam_turn,
                gamma=self.s.gamma,
                lam=self.s.lam,
            )
            out.append((a, ret))
        return out

    @property
    def horizon(self) -> int:
        """The most tokens a trajectory can sample: Dr. GRPO's fixed divisor."""
        return self.s.protocol.max_turns * self.s.max_new_tokens

    def update(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """PPO epochs over the step's trajectories, ``micro_batch`` of them per forward (right
        padded; each trajectory's loss is its own token sum over its ``loss_agg`` divisor, as one
        at a time)."""
        targets = self.advantages(trajectories)
        if self.s.algo == "ppo":  # whiten PPO advantages over the batch's response tokens
            masks = torch.cat([t.action_mask for t in trajectories])
            flat = torch.cat([a for a, _ in targets])
            mean = (flat * masks).sum() / masks.sum().clamp(min=1)
            std = (((flat - mean) ** 2) * masks).sum().div(masks.sum().clamp(min=1)).sqrt()
            targets = [
                ((a - mean) / (std + 1e-8) * t.action_mask, r)
                for (a, r), t in zip(targets, trajectories, strict=True)
            ]
        totals = {
            "policy_loss": 0.0,
            "kl": 0.0,
            "entropy": 0.0,
            "value_loss": 0.0,
            "clip_frac": 0.0,
            "ratio_max": 0.0,
        }
        banned = self.lm.banned_ids
        n = len(trajectories)
        # the tokens the policy gradient and entropy bonus move, found once for every epoch
        moved = [t.action_mask for t in trajectories]
        if self.s.train_tokens != "reply":
            tokenizer, part = self.lm.processor.tokenizer, self.s.train_tokens
            moved = [  # within the action mask: a branch's replayed reply stays untrained
                action_token_mask(t.input_ids, t.turn_spans, tokenizer, part) * t.action_mask
                for t in trajectories
            ]
        # what the KL term holds to the reference, where it is not the whole reply
        anchored = None
        if self.s.kl_tokens == "untrained":
            anchored = [
                (t.action_mask - m).clamp(min=0) for t, m in zip(trajectories, moved, strict=True)
            ]
        divisors = row_divisors(moved, self.s.loss_agg, self.horizon)
        kept = self.trained(targets, moved)
        totals["trained_share"] = len(kept) / max(1, n)
        # the loss stays divided by all n: a kept trajectory's gradient is what it was with all
        units = self.backward_units(trajectories, kept)
        seen = max(1, len(kept))
        temperature = self.s.temperature
        for _ in range(self.s.ppo_epochs):
            self.optimizer.zero_grad()
            if self.critic_optimizer is not None:
                self.critic_optimizer.zero_grad()
            # Under DDP nothing is left out (`trained`), reply-less trajectories included: every
            # process must run the same number of backward passes.
            for prefix, unit in units:
                inputs = [
                    batch_inputs(
                        self.lm, [trajectories[i] for i in c], cached_vision=self.cached_vision
                    )
                    for c in unit
                ]
                if prefix:
                    scores = group_token_logprobs(self.policy, inputs, prefix, banned, temperature)
                else:
                    scores = [token_logprobs(self.policy, x, banned, temperature) for x in inputs]
                loss = torch.zeros((), device=self.acc.device)
                for indices, chunk_inputs, (logp, entropy) in zip(
                    unit, inputs, scores, strict=True
                ):
                    chunk = [trajectories[i] for i in indices]
                    chunk_targets = [targets[i] for i in indices]
                    width = max(int(t.input_ids.shape[0]) for t in chunk)
                    mask = padded([t.action_mask for t in chunk], width).to(self.acc.device)
                    pg_mask = padded([moved[i] for i in indices], width).to(self.acc.device)
                    adv = padded([a for a, _ in chunk_targets], width).to(self.acc.device)
                    old = padded([t.old_logprobs for t in chunk], width).to(self.acc.device)
                    logp, entropy = logp.view(len(chunk), -1), entropy.view(len(chunk), -1)
                    ratio = torch.exp(torch.clamp(logp - old, -20, 20))
                    clipped = torch.clamp(ratio, 1 - self.s.clip, 1 + self.s.clip)
                    # per row, each divided by its aggregation divisor (vmtr.policies.loss_agg)
                    divisor = torch.tensor([divisors[i] for i in indices], device=self.acc.device)
                    pg = (-torch.minimum(ratio * adv, clipped * adv) * pg_mask).sum(-1) / divisor
                    ent = masked_mean(entropy, pg_mask)
                    rows = pg - self.s.entropy_coef * (entropy * pg_mask).sum(-1) / divisor
                    kl = torch.zeros_like(pg)
                    if self.s.kl_coef > 0:
                        ref_logp = self.reference_logprobs(chunk_inputs, banned)
                        ref_logp = ref_logp.view(len(chunk), -1)
                        kl_mask = mask
                        if anchored is not None:
                            kl_mask = padded([anchored[i] for i in indices], width)
                            kl_mask = kl_mask.to(self.acc.device)
                        log_ratio = torch.where(
                            kl_mask.bool(), ref_logp - logp, torch.zeros_like(logp)
                        )
                        kl = masked_mean(torch.exp(log_ratio) - log_ratio - 1, kl_mask)  # k3
                        rows = rows + self.s.kl_coef * kl
                    loss = loss + rows.sum() / n
                    totals["policy_loss"] += float(pg.detach().sum()) / n
                    totals["kl"] += float(kl.detach().sum()) / n
                    totals["entropy"] += float(ent.detach().sum()) / seen
                    outside = ((ratio - 1).abs() > self.s.clip).float()
                    totals["clip_frac"] += float(masked_mean(outside, pg_mask).sum()) / seen
                    ratio_max = float((ratio.detach() * mask).max())
                    totals["ratio_max"] = max(totals["ratio_max"], ratio_max)
                    if self.critic is not None:
                        values = self.critic(**chunk_inputs).view(len(chunk), -1)
                        ret = padded([r for _, r in chunk_targets], width).to(values.device)
                        v_loss = 0.5 * masked_mean((values - ret) ** 2, mask)
                        self.acc.backward(v_loss.sum() / n)
                        totals["value_loss"] += float(v_loss.detach().sum()) / n
                # one backward per unit: a shared prompt's graph serves all of its rows
                self.acc.backward(loss)
            totals["grad_norm"] = float(
                self.acc.clip_grad_norm_(self.policy.parameters(), self.s.grad_clip)
            )
            self.optimizer.step()
            if self.critic_optimizer is not None:
                self.acc.clip_grad_norm_(self.critic.parameters(), self.s.grad_clip)
                self.critic_optimizer.step()
        return totals

    def backward_units(
        self, trajectories: list[Trajectory], kept: list[int]
    ) -> list[tuple[int, list[list[int]]]]:
        """The update's forward plan: ``(prefix, chunks)`` per backward pass, each chunk at most
        ``micro_batch`` of ``kept``, shortest first. With ``share_prompt`` (GRPO, images replayed
        from the rollout's embeddings) a unit is one group, whose shared first prompt
        (`shared_prefix`, ``prefix`` tokens) runs once for all its chunks; otherwise every chunk
        is its own unit with ``prefix`` 0."""
        share = self.s.share_prompt and self.s.algo == "grpo" and self.cached_vision
        if not share:
            return [
                (0, [[kept[i] for i in c]])
                for c in length_chunks([trajectories[i] for i in kept], self.micro_batch)
            ]
        groups: dict[int, list[int]] = {}
        for i in kept:
            groups.setdefault(trajectories[i].group, []).append(i)
        units = []
        for members in groups.values():
            chunks = [
                [members[i] for i in c]
                for c in length_chunks([trajectories[i] for i in members], self.micro_batch)
            ]
            prefix = shared_prefix([trajectories[i] for i in members]) if len(members) > 1 else 0
            if prefix:
                units.append((prefix, chunks))
            else:
                units.extend((0, [c]) for c in chunks)
        return units

    def trained(
        self, targets: list[tuple[torch.Tensor, torch.Tensor]], moved: list[torch.Tensor]
    ) -> list[int]:
        """Indices of the trajectories the update runs on: all of them, unless
        ``drop_flat_groups`` leaves out GRPO trajectories with no advantage on their trained
        tokens (one process only: under DDP every process must run the same backward passes)."""
        everything = list(range(len(targets)))
        if not self.s.drop_flat_groups or self.s.algo != "grpo" or self.acc.num_processes > 1:
            return everything
        return [i for i in everything if bool(((targets[i][0] * moved[i]) != 0).any())]

    def reference_logprobs(self, inputs: dict[str, Any], banned: list[int]) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                return token_logprobs(self.reference, inputs, banned, self.s.temperature)[0]
            unwrapped = self.acc.unwrap_model(self.policy)
            with unwrapped.disable_adapter():
                return token_logprobs(unwrapped, inputs, banned, self.s.temperature)[0]

    # -- loop and saving ------------------------------------------------------------------------

    def train(self, progress: Callable[[int, int, dict[str, Any]], None] | None = None) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        log_path = self.out / "metrics.jsonl"
        while self.step < self.s.steps:
            metrics = self.train_step()
            if self.acc.is_main_process:
                with log_path.open("a") as f:
                    f.write(json.dumps(metrics) + "\n")
                if self.log is not None:
                    self.log(metrics)
                if progress is not None:
                    progress(self.step, self.s.steps, metrics)
            if self.step % self.s.save_every == 0 or self.step == self.s.steps:
                self.save(self.out / f"checkpoint-{self.step}")
        if self.acc.is_main_process:
            plot_metrics(log_path, self.out / "metrics.png")

    def save(self, folder: Path) -> None:
        """Model + processor (loadable with `--model folder`) + optimiser, RNG and step.

        A LoRA run saves the adapter alone (a folder `--model` also loads, base + adapter);
        the final checkpoint, or every one with ``save_merged``, gets a merged full model in
        ``merged/`` too, built from a copy: the live policy keeps its adapter and keeps training.
        """
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        model = self.acc.unwrap_model(self.policy)
        if self.s.lora_rank > 0:
            save_adapter(model, tmp)
            merge = self.s.save_merged or self.step == self.s.steps
            if merge and self.s.quantization == "none":
                save_merged(model, tmp / MERGED_DIR, self.lm.processor)
        else:
            model.save_pretrained(tmp)
        self.lm.processor.save_pretrained(tmp)
        if self.critic is not None:
            torch.save(self.acc.unwrap_model(self.critic).state_dict(), tmp / "critic.pt")
        state = {
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "python_rng": random.getstate(),
            "torch_rng": torch.get_rng_state(),
            "settings": self.s.model_dump(),
            "base_model": self.model_spec,
        }
        if self.critic_optimizer is not None:
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        torch.save(state, tmp / "trainer_state.pt")
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        tmp.rename(folder)
