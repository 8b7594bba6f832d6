"""`vmtr eval`: run a benchmark, resumably, on one process, a shard, or under accelerate.

A plain function with Typer annotations; `vmtr/cli.py` registers it as ``eval`` and
``python -m vmtr.eval`` runs it alone (so ``accelerate launch -m vmtr.eval ...`` works too).
Progress goes to stderr, the summary to stdout (``--json`` for one JSON object). Every expected
failure (no data, an unknown model, a bad shard) is one ``error:`` line and exit code 1.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vmtr.cli_errors import fail
from vmtr.cli_served import (
    ApiKeyEnvOption,
    BaseUrlOption,
    ExtraBodyOption,
    ImageFormatOption,
    MaxPixelsOption,
    RetriesOption,
    TimeoutOption,
    ToolProtocolOption,
)
from vmtr.config import DEFAULT_MODEL


class Benchmark(str, Enum):
    """Benchmarks `vmtr eval` knows, with the data folder layout each expects."""

    videomme = "videomme"
    mlvu_dev = "mlvu-dev"
    mlvu_test = "mlvu-test"
    egoschema_subset = "egoschema-subset"
    longvideobench = "longvideobench"
    videomathqa = "videomathqa"
    videomathqa_mbin = "videomathqa-mbin"
    synthetic = "synthetic"


class Mode(str, Enum):
    """multi-turn: the agent; single-turn: the same model shown N uniform frames once."""

    multi_turn = "multi-turn"
    single_turn = "single-turn"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return index, count


def _distributed() -> Any:
    """accelerate's process state when launched by `accelerate launch` (or torchrun), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    # Without a GPU, accelerate only treats the processes as a group when told they are CPU ones.
    return PartialState(cpu=not torch.cuda.is_available())


def _store_scorer(spec: str) -> Any:
    """A pool scorer backed by each video's segment store (built on first use, then reused)."""
    from vmtr.tools.segments import store_scorer

    return store_scorer(spec)


def eval_command(
    benchmark: Annotated[Benchmark, typer.Argument(help="Which benchmark to run.")],
    data: Annotated[Path, typer.Option("--data", help="The benchmark's folder, as distributed.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for results.sqlite and reports.")
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Hub id, local checkpoint folder, or `tiny`.")
    ] = DEFAULT_MODEL,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N questions of the benchmark.")
    ] = None,
    mode: Annotated[Mode, typer.Option(help="multi-turn agent or single-turn baseline.")] = (
        Mode.multi_turn
    ),
    frames: Annotated[
        int | None,
        typer.Option(min=1, help="Turn-1 frames (default 16 multi-turn, 32 single-turn)."),
    ] = None,
    max_turns: Annotated[int, typer.Option(min=1, help="Turn budget (multi-turn).")] = 3,
    store: Annotated[
        bool, typer.Option("--store", help="Rank retrieved frames with the CLIP segment store.")
    ] = False,
    embedder: Annotated[str, typer.Option(help="open_clip spec for --store.")] = (
        "ViT-B-32:laion2b_s34b_b79k"
    ),
    oracle_aim: Annotated[
        bool,
        typer.Option(
            "--oracle-aim",
            help="Rewrite every retrieve to the question's relevant windows: an upper bound on "
            "what better aiming would buy (benchmarks with relevant windows).",
        ),
    ] = False,
    subtitles: Annotated[
        bool,
        typer.Option(
            "--subtitles",
            help="Show each turn the subtitle lines near its frames (VideoMME, VideoMathQA).",
        ),
    ] = False,
    subtitle_window: Annotated[
        float, typer.Option(min=0.0, help="Seconds around a frame that count as near it.")
    ] = 2.0,
    shard: Annotated[
        str | None, typer.Option(help="Run only shard i of n (i/n); the folder merges them.")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Questions in flight; their turns are batched.")
    ] = 1,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.1,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 1024,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16, float16.")] = "auto",
    quantization: Annotated[str, typer.Option(help="none, 4bit or 8bit (GPU only).")] = "none",
    retry_errors: Annotated[
        bool, typer.Option(help="Redo questions recorded as errors (e.g. videos now present).")
    ] = False,
    base_url: BaseUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="With --base-url: requests in flight (default --batch-size)."),
    ] = None,
    max_pixels: MaxPixelsOption = 128 * 28 * 28,
    timeout: TimeoutOption = 300.0,
    retries: RetriesOption = 4,
    tool_protocol: ToolProtocolOption = "text",
    image_format: ImageFormatOption = "png",
    extra_body: ExtraBodyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results.json on stdout.")] = False,
) -> None:
    """Evaluate a model on BENCHMARK; re-running the same command resumes where it stopped."""
    from vmtr.eval.datasets import DatasetError
    from vmtr.models.openai_api import ServedModelError
    from vmtr.models.vlm import ModelLoadError
    from vmtr.tools.video import VideoError

    try:
        results = _evaluate(
            benchmark=benchmark.value,
            data=data,
            output=output,
            model=model,
            limit=limit,
            mode=mode.value,
            frames=frames,
            max_turns=max_turns,
            store=embedder if store else None,
            oracle_aim=oracle_aim,
            subtitles=subtitle_window if subtitles else None,
            shard=shard,
            batch_size=batch_size,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            device=device,
            dtype=dtype,
            quantization=quantization,
            retry_errors=retry_errors,
            concurrency=concurrency,
            base_url=base_url,
            api_key_env=api_key_env,
            max_pixels=max_pixels,
            timeout=timeout,
            retries=retries,
            tool_protocol=tool_protocol,
            image_format=image_format,
            extra_body=extra_body,
        )
    except (
        DatasetError,
        ModelLoadError,
        ServedModelError,
        VideoError,
        ValueError,
        OSError,
    ) as error:
        raise fail(str(error)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; re-run the same command to resume") from None
    if results is None:  # a non-main process under accelerate: the main one reports
        return
    if as_json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
        return
    accuracy = results["accuracy"]
    shown = "-" if accuracy is None else f"{100 * accuracy:.1f}%"
    typer.echo(
        f"{results['benchmark']}: accuracy {shown} ({results['convention']}) on {results['n']} "
        f"questions, {results['errors']} errors"
        + ("" if results["complete"] else f", {results['total']} planned (incomplete)")
        + f"; reports in {output}"
    )
    from vmtr.eval.report import evidence_sentence, letters_sentence, pairs_sentence

    for sentence in (
        pairs_sentence(results.get("pairs")),
        evidence_sentence(results.get("evidence")),
        letters_sentence(results.get("letters")),
    ):
        if sentence:
            typer.echo(sentence)


def _evaluate(
    *,
    benchmark: str,
    data: Path,
    output: Path,
    model: str,
    limit: int | None,
    mode: str,
    frames: int | None,
    max_turns: int,
    store: str | None,
    oracle_aim: bool,
    subtitles: float | None,
    shard: str | None,
    batch_size: int,
    temperature: float,
    max_new_tokens: int,
    device: str,
    dtype: str,
    quantization: str,
    retry_errors: bool,
    concurrency: int | None = None,
    base_url: str | None = None,
    api_key_env: str | None = None,
    max_pixels: int = 128 * 28 * 28,
    timeout: float = 300.0,
    retries: int = 4,
    tool_protocol: str = "text",
    image_format: str = "png",
    extra_body: str | None = None,
) -> dict[str, Any] | None:
    """Load, run this process's share, merge; returns results (None off the main process)."""
    from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings
    from vmtr.eval.datasets import first_questions, load_benchmark
    from vmtr.eval.runner import EvalSettings, merge, run
    from vmtr.models.loading import load_video_lm

    state = None
    if shard is not None:
        where = parse_shard(shard)
    else:
        state = _distributed()
        where = (state.process_index, state.num_processes) if state is not None else (0, 1)
    if state is not None and device == "auto":
        device = str(state.device)
    if concurrency is not None and base_url is None:
        raise ValueError("--concurrency is for --base-url; in-process runs use --batch-size")
    items = first_questions(load_benchmark(benchmark, data), limit)
    if not items:
        raise ValueError(f"{data}: the benchmark has no questions")
    from vmtr.cli_served import served_settings

    served = served_settings(
        base_url,
        model,
        timeout=timeout,
        retries=retries,
        tool_protocol=tool_protocol,
        image_format=image_format,
        extra_body=extra_body,
    )
    settings = EvalSettings(
        benchmark=benchmark,
        mode=mode,  # type: ignore[arg-type]
        frames=frames,
        model=ModelSettings(
            model=model,
            device=device,
            dtype=dtype,  # type: ignore[arg-type]
            quantization=quantization,  # type: ignore[arg-type]
            max_pixels=max_pixels,
        ),
        protocol=ProtocolSettings(max_turns=max_turns),
        generation=GenerationSettings(temperature=temperature, max_new_tokens=max_new_tokens),
        store=store,
        oracle_aim=oracle_aim,
        **({} if subtitles is None else {"subtitles": True, "subtitle_window": subtitles}),
        served=served,
    )
    if oracle_aim and not any(item.relevant_windows for item in items):
        raise ValueError(f"--oracle-aim needs relevant windows, and {benchmark} has none")
    if subtitles is not None and not any(item.subtitles for item in items):
        raise ValueError(f"--subtitles: no subtitle files found for {benchmark} under {data}")
    from vmtr.cli_errors import quiet_libraries

    quiet_libraries()
    err = Console(stderr=True)
    if settings.served is not None:
        from vmtr.cli_served import served_video_lm

        with err.status(f"checking {base_url}"):
            lm = served_video_lm(settings.served, settings.model, api_key_env)
    else:
        with err.status(f"loading model {model}"):
            lm = load_video_lm(settings.model)
    scorer = _store_scorer(store) if store else None
    label = "questions" if where[1] == 1 else f"shard {where[0]}/{where[1]}"
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)
        outcome = run(
            items,
            settings,
            output,
            lm,
            shard=where,
            batch_size=concurrency or batch_size,
            retry_errors=retry_errors,
            scorer=scorer,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if outcome.skipped:
        err.print(f"resumed: {outcome.skipped} question(s) were already done", highlight=False)
    if outcome.unexpected:
        err.print(
            f"warning: {len(outcome.unexpected)} question(s) failed unexpectedly and will be "
            f"retried next run; first: {outcome.unexpected[0]}",
            highlight=False,
            soft_wrap=True,
        )
    if state is not None:
        state.wait_for_everyone()
        if not state.is_main_process:
            return None
    return merge(output, items, settings)


def main() -> None:
    """`python -m vmtr.eval`: this one command as a program."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(eval_command)
    app()
