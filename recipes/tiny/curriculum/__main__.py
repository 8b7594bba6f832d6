"""`python -m recipes.tiny.curriculum`: one stage of the tiny model's supervised curriculum.

Run from the repository root (recipes/tiny/train_tiny.sh and recipes/tiny/warm_start.sh chain
the stages). Failures the user can fix end in one ``error:`` line on stderr and exit 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from recipes.tiny.curriculum.config import CurriculumConfig
from recipes.tiny.curriculum.episodes import CurriculumError
from recipes.tiny.curriculum.trainer import run_curriculum
from vmtr.cli_errors import fail
from vmtr.cli_train import AttentionOption, GtaSettingsOption
from vmtr.eval.datasets import DatasetError
from vmtr.models.vlm import ModelLoadError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, log.jsonl, final/.")],
    data: Annotated[
        list[Path],
        typer.Option(help="Folder with annotations.json from `vmtr synth` (repeatable)."),
    ],
    model: Annotated[
        str,
        typer.Option(
            help="`tiny-init` (a fresh random tiny model, its tokenizer fitted to the data), "
            "`tiny` (the bundled model) or a checkpoint folder."
        ),
    ] = "tiny-init",
    attention: AttentionOption = "model",
    gta_settings: GtaSettingsOption = "{}",
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 1500,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per step.")] = 8,
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
            "answer (the only tokens with loss).",
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
            "(random retrieve ranges excepted).",
        ),
    ] = 1.0,
    answer_form: Annotated[
        str,
        typer.Option(
            help='letter ("<answer>C</answer>") or needle (the needle asked about as the '
            'reading named it, "<answer> yellow cross</answer>"; the parser maps it to the '
            "option it names)."
        ),
    ] = "letter",
    needle_guess: Annotated[
        str,
        typer.Option(
            help="How needle answers guess: random (a random letter, trained) or masked (the "
            "answer's letter, no loss, as letter answers)."
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
            help="Script retrieves between two first-turn frame labels picked at random, or "
            "with --retrieve-block N the N frames from one (copyable ranges; which label is "
            "left to RL)."
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
            "needle colour and shape covering it (0: off).",
        ),
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """One stage of the tiny model's curriculum: scripted protocol episodes of `vmtr synth`
    items, reading and answer drills, content weighting and an auxiliary vision loss."""
    try:
        config = CurriculumConfig(
            data=data,
            out=out,
            model=model,
            attention=attention,
            gta=json.loads(gta_settings),
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
            answer_form=answer_form,
            needle_guess=needle_guess,
            schedule_steps=schedule_steps,
            vision_aux_weight=vision_aux_weight,
        )
        report = run_curriculum(config, resume=resume, log=lambda m: typer.echo(m, err=True))
    except (CurriculumError, DatasetError, ModelLoadError, OSError) as err:
        raise fail(str(err)) from None
    except ValidationError as err:
        first = err.errors()[0]
        raise fail(f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}") from None
    except KeyboardInterrupt:
        raise fail("interrupted; continue with --resume") from None
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


if __name__ == "__main__":
    app()
