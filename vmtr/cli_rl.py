"""`vmtr train rl`: the command-line face of `vmtr.policies.trainer.RLRecipe`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def rl(
    data: Annotated[
        Path, typer.Option(help="Video-MTR training json, or a folder holding annotations.json.")
    ],
    out: Annotated[Path, typer.Option(help="Output folder: checkpoints, metrics.jsonl/png.")],
    model: Annotated[
        str, typer.Option(help="Start checkpoint: tiny, a folder or a hub id.")
    ] = "tiny",
    algo: Annotated[str, typer.Option(help="ppo (bi-level GAE + value head) or grpo.")] = "grpo",
    credit: Annotated[
        str,
        typer.Option(
            help="GRPO credit: trajectory (one advantage per episode) or turn (each turn's "
            "reward-to-go against the group's episodes at the same turn)."
        ),
    ] = "trajectory",
    group_std: Annotated[
        bool,
        typer.Option(
            help="GRPO: divide by the group's reward spread (--no-group-std only centres, as "
            "Dr. GRPO does)."
        ),
    ] = True,
    steps: Annotated[int, typer.Option(min=1)] = 500,
    prompts_per_step: Annotated[int, typer.Option(min=1)] = 16,
    samples_per_prompt: Annotated[int, typer.Option(min=1)] = 2,
    actor_lr: Annotated[float, typer.Option()] = 1e-6,
    critic_lr: Annotated[float, typer.Option()] = 1e-5,
    kl_coef: Annotated[float, typer.Option()] = 0.001,
    entropy_coef: Annotated[float, typer.Option()] = 0.001,
    temperature: Annotated[
        float, typer.Option(min=0.0, help="Sampling temperature of rollouts.")
    ] = 0.7,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus of rollouts.")] = 0.95,
    ppo_epochs: Annotated[
        int, typer.Option(min=1, help="Optimizer passes over each step's rollouts.")
    ] = 1,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 512,
    max_turns: Annotated[
        int, typer.Option(min=1, help="Turn budget of the rollouts' protocol (Video-MTR: 3).")
    ] = 3,
    reward: Annotated[str, typer.Option(help="code or paper reward variant.")] = "code",
    frame_reward: Annotated[bool, typer.Option(help="Turn-level frame term (ablation).")] = True,
    gate: Annotated[bool, typer.Option(help="Gate turn rewards on a right answer.")] = True,
    turn_decay: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Code reward: answer reward lost per extra turn. At the released 0.1 it cancels "
            "the extra turn's format term, so a right answer pays the same whether the first or "
            "the second retrieve found the evidence; above 0.1 finding it sooner pays more.",
        ),
    ] = 0.1,
    gate_format: Annotated[
        bool | None,
        typer.Option(
            "--gate-format/--keep-format",
            help="Whether the gate also removes a wrong answer's intermediate format terms (the "
            "paper's gate); unset: the reward variant's own choice.",
            show_default=False,
        ),
    ] = None,
    lora_rank: Annotated[int, typer.Option(min=0, help="> 0: train a LoRA adapter.")] = 0,
    quantization: Annotated[str, typer.Option(help="none, 4bit (QLoRA) or 8bit.")] = "none",
    save_every: Annotated[int, typer.Option(min=1)] = 50,
    freeze_vision: Annotated[
        bool, typer.Option(help="Keep the vision tower fixed (trains only the language model).")
    ] = False,
    train_tokens: Annotated[
        str,
        typer.Option(
            help="reply: the policy gradient moves every sampled token (as Video-MTR); action: "
            "only each reply's <retrieve>/<answer> part, not what its think text says it saw; "
            "decision: the action and the think text's last sentence (where it decides)."
        ),
    ] = "reply",
    kl_tokens: Annotated[
        str,
        typer.Option(
            help="reply: the KL term anchors every sampled token; untrained: only those "
            "--train-tokens leaves out of the policy gradient (what the think text reports)."
        ),
    ] = "reply",
    loss_agg: Annotated[
        str,
        typer.Option(
            help="seq-mean-token-mean (GRPO: each trajectory's token mean), token-mean (DAPO: the "
            "step's token mean) or seq-mean-token-sum-norm (Dr. GRPO: each trajectory's sum over "
            "max-turns x max-new-tokens)."
        ),
    ] = "seq-mean-token-mean",
    micro_batch: Annotated[
        int,
        typer.Option(
            min=0, help="Trajectories per forward in the update (padded); 0: 8 on a GPU, 1 on CPU."
        ),
    ] = 0,
    drop_flat_groups: Annotated[
        bool,
        typer.Option(
            help="GRPO: leave groups whose samples all scored the same out of the update (no "
            "policy gradient; only their entropy bonus and KL share are lost)."
        ),
    ] = True,
    skip_solved: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.99,
            help="The chance of passing over a question whose last group all answered right with "
            "the same reward (it taught nothing) for the next one: rollouts go to open questions.",
        ),
    ] = 0.0,
    branch: Annotated[
        int,
        typer.Option(
            min=0,
            help="GRPO: per group, replay one episode whose first retrieve missed evidence up to "
            "that retrieve and sample this many continuations from there, as a group of their "
            "own (the search after a miss gets its own credit). 0: off.",
        ),
    ] = 0,
    branch_first: Annotated[
        int,
        typer.Option(
            min=0,
            help="GRPO: per group, replay one episode's first reply up to its <retrieve> tag and "
            "sample this many ranges from there, each played out, as a group of their own (the "
            "first aim gets its own credit). 0: off.",
        ),
    ] = 0,
    branch_first_temperature: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Sampling temperature of --branch-first's episodes (default: --temperature).",
        ),
    ] = None,
    share_prompt: Annotated[
        bool,
        typer.Option(
            help="GRPO with --freeze-vision: run a group's shared first prompt once in the update "
            "(the same log-probs and gradients as once per sample, less compute)."
        ),
    ] = True,
    save_merged: Annotated[
        bool,
        typer.Option(help="LoRA: a merged full model in every checkpoint (the final one always)."),
    ] = False,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Fine-tune a model by RL on the agent's own multi-turn protocol (resumes from OUT)."""
    from rich.console import Console

    from vmtr.cli_errors import user_errors
    from vmtr.config import ProtocolSettings
    from vmtr.policies.rewards import RewardSettings
    from vmtr.policies.trainer import RLRecipe, RLSettings

    err = Console(stderr=True)
    with user_errors():
        settings = RLSettings(
            algo=algo,
            credit=credit,
            group_std=group_std,
            steps=steps,
            prompts_per_step=prompts_per_step,
            samples_per_prompt=samples_per_prompt,
            actor_lr=actor_lr,
            critic_lr=critic_lr,
            kl_coef=kl_coef,
            entropy_coef=entropy_coef,
            temperature=temperature,
            top_p=top_p,
            ppo_epochs=ppo_epochs,
            max_new_tokens=max_new_tokens,
            lora_rank=lora_rank,
            quantization=quantization,
            save_every=save_every,
            save_merged=save_merged,
            micro_batch=micro_batch,
            train_tokens=train_tokens,
            kl_tokens=kl_tokens,
            loss_agg=loss_agg,
            drop_flat_groups=drop_flat_groups,
            skip_solved=skip_solved,
            branch=branch,
            branch_first=branch_first,
            branch_first_temperature=branch_first_temperature,
            share_prompt=share_prompt,
            freeze_vision=freeze_vision,
            seed=seed,
            reward=RewardSettings(
                variant=reward,
                use_frame_reward=frame_reward,
                gate=gate,
                gate_format=gate_format,
                turn_decay=turn_decay,
            ),
            protocol=ProtocolSettings(max_turns=max_turns),
        )
        recipe = RLRecipe(data, out, model, settings)
        recipe.setup()

        def progress(step: int, total: int, m: dict) -> None:
            branches = ""
            if m.get("branch_episodes"):
                branches = (
                    f"  branches {m['branch_episodes']} "
                    f"seen {_fraction(m.get('branch_relevant_seen'))}"
                )
            if m.get("first_branch_episodes"):
                branches += (
                    f"  first branches {m['first_branch_episodes']} "
                    f"seen {_fraction(m.get('first_branch_relevant_seen'))}"
                )
            err.print(
                f"step {step}/{total}  reward {m['reward']:.3f}  acc {m['accuracy']:.2f}  "
                f"turns {m['turns']:.2f}  retrieve {m['retrieve_rate']:.2f}  "
                f"seen {_fraction(m.get('relevant_seen'))}{branches}  kl {m['kl']:.4f}  "
                f"({m['step_s']:.1f}s)",
                highlight=False,
            )

        recipe.train(progress=progress)
        err.print(f"done: {out / f'checkpoint-{recipe.step}'}", highlight=False)


def _fraction(value: float | None) -> str:
    """A per-step share for the log line; "-" where the batch had nothing to measure it on."""
    return "-" if value is None else f"{value:.2f}"
