"""`vmtr train ...`: the training recipes behind one Typer sub-app.

`vmtr train sft` fine-tunes on recorded episodes (`vmtr.policies.sft_episodes`); the RL recipe
joins this sub-app as `vmtr train rl`. Failures the user can fix end in one line on stderr and
exit 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

AttentionOption = Annotated[
    str,
    typer.Option(
        help="model (as the starting model has it) or gta: fresh grouped-tied attention in the "
        "text decoder, trained from scratch (the other weights kept)."
    ),
]
GtaSettingsOption = Annotated[
    str, typer.Option(help='With --attention gta: GTA settings as JSON, e.g. {"groups": 2}.')
]
"""The two options every trainer that can train GTA from scratch takes (`vmtr train sft`, the
tiny model's curriculum)."""

train_app = typer.Typer(
    help="Train the model on the Video-MTR protocol (SFT on recorded episodes, RL).",
    no_args_is_help=True,
    add_completion=False,
)


@train_app.callback()
def _group() -> None:
    """Train the model on the Video-MTR protocol (SFT on recorded episodes, RL)."""


@train_app.command()
def sft(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, log.jsonl, final/, best/.")],
    episodes: Annotated[
        list[Path],
        typer.Option(
            help="samples.jsonl written by `vmtr eval` (repeatable): the episodes to train on."
        ),
    ],
    only_correct: Annotated[bool, typer.Option(help="Keep only the right answers.")] = False,
    heldout: Annotated[
        int, typer.Option(min=0, help="Questions held out and asked every --eval-every steps.")
    ] = 0,
    lora_rank: Annotated[int, typer.Option(min=0, help="> 0 trains a LoRA adapter.")] = 0,
    quantization: Annotated[str, typer.Option(help="none, 4bit (QLoRA) or 8bit.")] = "none",
    max_turns: Annotated[
        int, typer.Option(min=1, help="The turn budget the episodes were recorded with.")
    ] = 3,
    attention: AttentionOption = "model",
    gta_settings: GtaSettingsOption = "{}",
    model: Annotated[
        str, typer.Option(help="A hub id or checkpoint folder; `tiny` is the bundled model.")
    ] = "tiny",
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 100,
    batch_size: Annotated[int, typer.Option(min=1, help="Episodes per step.")] = 4,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (AdamW).")] = 1e-5,
    warmup: Annotated[int, typer.Option(min=0, help="Linear warmup steps.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed for the held-out split and data order.")] = 0,
    save_every: Annotated[int, typer.Option(min=1, help="Checkpoint every N steps.")] = 50,
    eval_every: Annotated[
        int,
        typer.Option(
            min=0, help="Ask the held-out questions every N steps, keeping the best in best/."
        ),
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Supervised fine-tuning on recorded episodes (`vmtr eval`'s samples.jsonl), for any model:
    loss on the model's replies only; --only-correct makes it rejection-sampling fine-tuning.
    An interrupted run resumes when the same command runs again."""
    from vmtr.cli_errors import user_errors
    from vmtr.config import ProtocolSettings
    from vmtr.policies.sft_episodes import EpisodeSFT, EpisodeSFTSettings

    with user_errors():
        settings = EpisodeSFTSettings(
            episodes=episodes,
            out=out,
            model=model,
            protocol=ProtocolSettings(max_turns=max_turns),
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            warmup=min(warmup, steps),
            seed=seed,
            save_every=save_every,
            eval_every=eval_every,
            only_correct=only_correct,
            heldout=heldout,
            lora_rank=lora_rank,
            quantization=quantization,
            attention=attention,
            gta=json.loads(gta_settings),
        )
        recipe = EpisodeSFT(settings, log=lambda m: typer.echo(m, err=True))
        recipe.setup()
        report = recipe.train()
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    typer.echo(f"final model: {report['final']} ({report['steps']} steps)")
    if "heldout_accuracy" in report:
        typer.echo(f"held-out accuracy {report['heldout_accuracy']:.1%}")


if __name__ == "__main__":
    train_app()
