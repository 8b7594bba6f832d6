"""`vmtr train ...`: the training recipes behind one Typer sub-app.

`vmtr train sft` is the supervised warm start (`vmtr.policies.sft`); the RL recipe joins this
sub-app as `vmtr train rl`. Failures the user can fix end in one line on stderr and exit 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from vmtr.cli_errors import fail

train_app = typer.Typer(
    help="Train the model on the Video-MTR protocol (supervised warm start, RL).",
    no_args_is_help=True,
    add_completion=False,
)


@train_app.callback()
def _group() -> None:
    """Train the model on the Video-MTR protocol (supervised warm start, RL)."""


def _fail(message: str) -> None:
    raise fail(message)


@train_app.command()
def sft(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, log.jsonl, final/.")],
    data: Annotated[
        list[Path] | None,
        typer.Option(help="Folder with annotations.json from `vmtr synth` (repeatable)."),
    ] = None,
    episodes: Annotated[
        list[Path] | None,
        typer.Option(
            help="samples.jsonl written by `vmtr eval` (repeatable): train on those episodes, "
            "for any model (`--model tiny` is then the bundled model)."
        ),
    ] = None,
    only_correct: Annotated[
        bool, typer.Option(help="With --episodes: keep only the right answers.")
    ] = False,
    heldout: Annotated[
        int,
        typer.Option(min=0, help="With --episodes: questions held out and asked (best/ kept)."),
    ] = 0,
    lora_rank: Annotated[
        int, typer.Option(min=0, help="With --episodes: > 0 trains a LoRA adapter.")
    ] = 0,
    quantization: Annotated[
        str, typer.Option(help="With --episodes: none, 4bit (QLoRA) or 8bit.")
    ] = "none",
    max_turns: Annotated[
        int, typer.Option(min=1, help="With --episodes: the turn budget they were recorded with.")
    ] = 3,
    model: Annotated[
        str | None,
        typer.Option(
            help="A hub id or checkpoint folder; `tiny` is the bundled model, `tiny-init` a fresh "
            "random one (default: tiny with --episodes, tiny-init with --data)."
        ),
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 1500,
    batch_size: Annotated[int, typer.Option(min=1, help="Trajectories per step.")] = 8,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (AdamW).")] = 3e-4,
    warmup: Annotated[int, typer.Option(min=0, help="Linear warmup steps.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed for init, data order and trajectories.")] = 0,
    save_every: Annotated[int, typer.Option(min=1, help="Checkpoint every N steps.")] = 100,
    resume: Annotated[
        bool, typer.Option(help="Continue from the last checkpoint in --out.")
    ] = False,
    eval_items: Annotated[
        int, typer.Option(min=0, help="Items held out of training and asked at the end.")
    ] = 40,
    eval_every: Annotated[
        int,
        typer.Option(
            min=0, help="Also evaluate every N steps and keep the best model in best/ (0: off)."
        ),
    ] = 0,
    keep_checkpoints: Annotated[
        int, typer.Option(min=1, help="How many of the newest checkpoints to keep.")
    ] = 2,
    caption_share: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of short reading drills among examples."),
    ] = 0.0,
    single_turn_share: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of protocol episodes with a one-turn budget (half 16, half 32 frames).",
        ),
    ] = 0.5,
    caption_frames: Annotated[
        int, typer.Option(min=1, help="Consecutive frames in a reading drill.")
    ] = 8,
    caption_layout: Annotated[
        str,
        typer.Option(
            help="Frames a reading drill shows: window (caption-frames consecutive ones) or "
            "first-turn (the protocol's uniform first-turn frames)."
        ),
    ] = "window",
    answer_share: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of text-only answer drills: a scripted reading, then the matching "
            "option's letter (the only token with loss).",
        ),
    ] = 0.0,
    caption_content_loss: Annotated[
        bool,
        typer.Option(help="Reading drills carry loss only on colours, shapes, digits, letters."),
    ] = False,
    content_weight: Annotated[
        float,
        typer.Option(
            min=1.0,
            help="Loss weight of colours, shapes, digits and letters in whole replies "
            "(retrieve ranges excepted).",
        ),
    ] = 1.0,
    needle_wording: Annotated[
        str,
        typer.Option(
            help='frame-first ("frame 37 red circle"), colour-first ("red circle at frame 37") '
            'or shape-first ("frame 37 circle in red").'
        ),
    ] = "frame-first",
    answer_form: Annotated[
        str,
        typer.Option(
            help='letter ("<answer>C</answer>"), bridge (the think ends "so yellow is C.", then '
            '"<answer>C</answer>"), text ("<answer> yellow</answer>", which the parser maps '
            "to the option's letter) or needle (the needle asked about as the reading named "
            'it, "<answer> yellow cross</answer>"; the parser maps it to the option it names).'
        ),
    ] = "letter",
    needle_guess: Annotated[
        str,
        typer.Option(
            help="How needle answers guess: random (a random letter, trained) or masked (the "
            "answer's letter, no loss, as the other forms)."
        ),
    ] = "random",
    schedule_steps: Annotated[
        int | None,
        typer.Option(min=1, help="Steps the LR schedule spans (default: --steps)."),
    ] = None,
    retrieve_block: Annotated[
        int,
        typer.Option(
            min=0, help="Script retrieves as random aligned blocks of N frames (0: free ranges)."
        ),
    ] = 0,
    retrieve_labels: Annotated[
        bool,
        typer.Option(
            help="Script retrieves between two first-turn frame labels picked at random "
            "(copyable ranges; which labels is left to RL)."
        ),
    ] = False,
    retrieve_again: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of episodes that retrieve again when a retrieve did not show the "
            "evidence; the others answer on the next turn, guessing. 1: always while turns remain.",
        ),
    ] = 1.0,
    retrieve_aim: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of episodes whose scripted retrieves aim from the border frames the "
            "reply named (the first-turn labels around them; never the needles). 0: none.",
        ),
    ] = 0.0,
    vision_aux_weight: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Weight of an auxiliary loss that classes each merged visual token by the "
            "needle colour and shape covering it (synthetic data only; 0: off).",
        ),
    ] = 0.0,
    frame_aux_weight: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Weight of an auxiliary loss that classes each frame's max-pooled visual "
            "tokens by the needle colour and shape it shows (synthetic data only; 0: off).",
        ),
    ] = 0.0,
    pretext_weight: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Weight of the text-only induction and lookup pretexts trained alongside "
            "(vmtr.policies.pretext; 0: off).",
        ),
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Supervised warm start on scripted multi-turn trajectories (format + reading frames)."""
    from pydantic import ValidationError

    from vmtr.eval.datasets import DatasetError
    from vmtr.models.vlm import ModelLoadError
    from vmtr.policies.sft import SFTConfig, SFTError, run_sft

    if episodes:
        _sft_on_episodes(
            episodes,
            out,
            model or "tiny",
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
            max_turns=max_turns,
            as_json=as_json,
        )
        return
    if not data:
        _fail("give --data (vmtr synth folders) or --episodes (samples.jsonl from vmtr eval)")
    try:
        config = SFTConfig(
            data=data,
            out=out,
            model=model or "tiny-init",
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            warmup=min(warmup, steps),
            seed=seed,
            save_every=save_every,
            eval_items=eval_items,
            eval_every=eval_every,
            keep_checkpoints=keep_checkpoints,
            retrieve_block=retrieve_block,
            retrieve_labels=retrieve_labels,
            retrieve_aim=retrieve_aim,
            retrieve_again=retrieve_again,
            caption_share=caption_share,
            single_turn_share=single_turn_share,
            caption_frames=caption_frames,
            caption_layout=caption_layout,
            caption_content_loss=caption_content_loss,
            answer_share=answer_share,
            content_weight=content_weight,
            needle_wording=needle_wording,
            answer_form=answer_form,
            needle_guess=needle_guess,
            schedule_steps=schedule_steps,
            vision_aux_weight=vision_aux_weight,
            frame_aux_weight=frame_aux_weight,
            pretext_weight=pretext_weight,
        )
        report = run_sft(config, resume=resume, log=lambda m: typer.echo(m, err=True))
    except (SFTError, DatasetError, ModelLoadError, OSError) as err:
        _fail(str(err))
    except ValidationError as err:
        first = err.errors()[0]
        _fail(f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}")
    except KeyboardInterrupt:
        _fail("interrupted; continue with --resume")
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    typer.echo(f"final model: {report['final']} ({report['steps']} steps)")
    if "eval" in report:
        e = report["eval"]
        typer.echo(
            f"held-out accuracy {e['accuracy']:.1%} on {e['items']} items, "
            f"{e['mean_turns']:.2f} turns and {e['mean_frames']:.1f} frames on average"
        )


def _sft_on_episodes(
    episodes: list[Path], out: Path, model: str, *, max_turns: int, as_json: bool, **options: Any
) -> None:
    """`vmtr train sft --episodes`: the recorded-episodes recipe (`vmtr.policies.sft_episodes`);
    failures go through the command line's one error path (an interrupted run resumes when the
    same command runs again)."""
    from vmtr.cli_errors import user_errors
    from vmtr.config import ProtocolSettings
    from vmtr.policies.sft_episodes import EpisodeSFT, EpisodeSFTSettings

    with user_errors():
        settings = EpisodeSFTSettings(
            episodes=episodes,
            out=out,
            model=model,
            protocol=ProtocolSettings(max_turns=max_turns),
            **options,
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
