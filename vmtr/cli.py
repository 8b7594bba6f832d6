"""The `vmtr` command line: ask, demo, and the tools around them.

Conventions: human text on stdout, machine-readable JSON with ``--json``, progress on stderr;
exit code 0 on success, 1 on failure, 2 on a usage error. Every expected failure (bad video,
missing model, empty question) is one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from vmtr.cli_errors import quiet_libraries, user_errors
from vmtr.cli_served import (
    ApiKeyEnvOption,
    BaseUrlOption,
    ExtraBodyOption,
    ImageFormatOption,
    MaxPixelsOption,
    RetriesOption,
    TimeoutOption,
    ToolProtocolOption,
    served_settings,
    served_video_lm,
)
from vmtr.config import DEFAULT_MODEL

app = typer.Typer(
    name="vmtr",
    help="Answer questions about long videos with a multi-turn, segment-selecting VLM agent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def progress_printer(status: Any, max_turns: int) -> Callable[[str, dict[str, Any]], None]:
    """Update a rich status line as graph nodes finish."""

    def on_update(node: str, update: dict[str, Any]) -> None:
        if node == "prepare":
            status.update(f"turn 1/{max_turns}: the model is looking at the first frames")
        elif node == "reason":
            for turn in update.get("turns", []):
                err.print(
                    f"  turn {turn['turn']}: {turn['action']} ({turn['seconds']:.1f}s)",
                    highlight=False,
                )
        elif node == "select_segment":
            status.update("the model is looking at the frames it asked for")

    return on_update


def _frames_text(frames: list[int]) -> str:
    if not frames:
        return "-"
    if len(frames) > 6:
        return f"{len(frames)}: {frames[0]},{frames[1]},..,{frames[-1]}"
    return ",".join(str(f) for f in frames)


def _seconds_text(timestamps: list[float]) -> str:
    if not timestamps:
        return "-"
    return (
        f"{timestamps[0]:.1f}-{timestamps[-1]:.1f}s"
        if len(timestamps) > 1
        else (f"{timestamps[0]:.1f}s")
    )


def print_result(result: Any) -> None:
    """The answer, then one table row per turn."""
    answer = result.answer if result.answer is not None else "(no answer: turn budget used up)"
    out.print(f"[bold]Answer:[/] {answer}", highlight=False)
    if result.answer and result.options:
        chosen = [o for o in result.options if o.strip().upper().startswith(result.answer)]
        if chosen:
            out.print(f"        {chosen[0]}", highlight=False)
    table = Table(title=f"{len(result.turns)} turn(s) over {result.duration:.1f}s of video")
    for column in ("turn", "frames (pool idx)", "seconds", "action", "model said"):
        table.add_column(column, overflow="fold")
    for turn in result.turns:
        action = turn["action"]
        if action == "retrieve":
            action = f"retrieve {turn['retrieve'][0]}-{turn['retrieve'][1]}"
        elif action == "invalid":
            action = f"invalid ({turn['error']})"
        else:
            action = f"answer {turn['answer']}"
        said = turn["raw"].strip().replace("\n", " ")
        table.add_row(
            str(turn["turn"]),
            _frames_text(turn["frames"]),
            _seconds_text(turn["timestamps"]),
            action,
            said[:80] + ("..." if len(said) > 80 else ""),
        )
    out.print(table)


def run_ask(
    video: Path,
    question: str,
    options: list[str],
    as_json: bool,
    *,
    store: str | None = None,
    first_turn_top: int = 0,
    encoder: str = "dense",
    frames: int = 256,
    frames_per_label: int = 4,
    served: Any = None,
    api_key_env: str | None = None,
    **settings: Any,
) -> Any:
    """Shared body of `ask` and `demo`: validate, load, run with progress, print. With
    ``served`` (`ServedSettings`) the model is the one behind that endpoint."""
    from vmtr.agent.ask import split_settings
    from vmtr.agent.long_context import ask_with_encoder
    from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings
    from vmtr.models.loading import load_video_lm
    from vmtr.tools.video import probe

    quiet_libraries()

    if not question.strip():
        raise ValueError("the question is empty")
    proto, _, model_settings = split_settings(
        settings, ProtocolSettings, GenerationSettings, ModelSettings
    )
    with err.status("probing the video"):
        probe(video)
    scorer = None
    if store:
        from vmtr.tools.segments import store_scorer

        with err.status(f"loading embedder {store}"):
            scorer = store_scorer(store)  # the store itself is built (or reopened) on first use
    if served is not None:
        if encoder != "dense":
            raise ValueError("--encoder kv-sparse needs the model in this process, not --base-url")
        with err.status(f"checking {served.base_url}"):
            lm = served_video_lm(served, model_settings, api_key_env)
    else:
        with err.status(f"loading model {model_settings.model}"):
            lm = load_video_lm(model_settings)
    settings.pop("model", None)
    with err.status("decoding frames") as status:
        result = ask_with_encoder(
            video,
            question,
            options or None,
            encoder=encoder,
            frames=frames,
            frames_per_label=frames_per_label,
            model=lm,
            on_update=progress_printer(status, proto.max_turns),
            scorer=scorer,
            guided_retrieve=scorer is not None,
            first_turn_top=first_turn_top if scorer is not None else 0,
            **settings,
        )
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        print_result(result)
    return result


ModelOption = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="Hub id, local checkpoint folder, or `tiny` (bundled, offline)."
    ),
]


@app.command()
def ask(
    video: Annotated[Path, typer.Argument(help="Video file (mp4, mkv, avi, webm, ...).")],
    question: Annotated[str, typer.Argument(help="The question to answer.")],
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="A multiple-choice option; repeat for each."),
    ] = None,
    model: ModelOption = DEFAULT_MODEL,
    max_turns: Annotated[int, typer.Option(min=1, help="Turn budget.")] = 3,
    pool_size: Annotated[int, typer.Option(min=1, help="Frames in the pool.")] = 64,
    first_turn_frames: Annotated[int, typer.Option(min=1)] = 16,
    frames_per_retrieve: Annotated[int, typer.Option(min=1)] = 8,
    label_timestamps: Annotated[bool, typer.Option(help="Add seconds to frame labels.")] = False,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.1,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 1024,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16, float16.")] = "auto",
    quantization: Annotated[str, typer.Option(help="none, 4bit or 8bit (GPU only).")] = "none",
    store: Annotated[
        bool,
        typer.Option(help="Rank frames by CLIP similarity to the question (segment store)."),
    ] = False,
    embedder: Annotated[
        str, typer.Option(help="open_clip MODEL:TAG, MODEL:/path/ckpt or MODEL:none.")
    ] = "ViT-B-32:laion2b_s34b_b79k",
    first_turn_top: Annotated[
        int, typer.Option(min=0, help="With --store: top-matching frames mixed into turn 1.")
    ] = 0,
    encoder: Annotated[
        str,
        typer.Option(
            help="dense: Video-MTR turns with images. kv-sparse: --frames frames on turn 1 as "
            "chunked, pooled KV, dense for the chunks the question attends to most (or that "
            "--store ranks first); a retrieve makes its chunks dense."
        ),
    ] = "dense",
    frames: Annotated[int, typer.Option(min=1, help="kv-sparse: frames taken in on turn 1.")] = 256,
    frames_per_label: Annotated[
        int,
        typer.Option(
            min=1, help="kv-sparse: consecutive frames under one frame_idx:s-e label on turn 1."
        ),
    ] = 4,
    base_url: BaseUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    max_pixels: MaxPixelsOption = 128 * 28 * 28,
    timeout: TimeoutOption = 300.0,
    retries: RetriesOption = 4,
    tool_protocol: ToolProtocolOption = "text",
    image_format: ImageFormatOption = "png",
    extra_body: ExtraBodyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Answer QUESTION about VIDEO; print the answer and the turns that led to it."""
    if encoder not in ("dense", "kv-sparse"):
        raise typer.BadParameter("use dense or kv-sparse", param_hint="--encoder")
    with user_errors():
        served = served_settings(
            base_url,
            model,
            timeout=timeout,
            retries=retries,
            tool_protocol=tool_protocol,
            image_format=image_format,
            extra_body=extra_body,
        )
        run_ask(
            video,
            question,
            list(option or []),
            as_json,
            model=model,
            max_turns=max_turns,
            pool_size=pool_size,
            first_turn_frames=min(first_turn_frames, pool_size),
            frames_per_retrieve=frames_per_retrieve,
            label_timestamps=label_timestamps,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            device=device,
            dtype=dtype,
            quantization=quantization,
            store=embedder if store else None,
            first_turn_top=first_turn_top,
            encoder=encoder,
            frames=frames,
            frames_per_label=frames_per_label,
            max_pixels=max_pixels,
            served=served,
            api_key_env=api_key_env,
        )


@app.command()
def demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    seed: Annotated[int, typer.Option(help="Which generated video and question.")] = 1,
) -> None:
    """Generate a short video, then run the whole agent on it offline with the tiny model."""
    from vmtr.models.tiny import tiny_info

    with user_errors(), tempfile.TemporaryDirectory(prefix="vmtr-demo-") as tmp:
        with err.status("generating a synthetic video"):
            item = demo_item(Path(tmp), seed)
        info = tiny_info()
        if not as_json:
            out.print(f"[bold]Video:[/] {item['video']} ({item['duration']:.0f}s, generated)")
            out.print(f"[bold]Question:[/] {item['question']}", highlight=False)
            for opt in item["options"]:
                out.print(f"  {opt}", highlight=False)
            out.print(f"[bold]Model:[/] {describe_tiny(info)}", highlight=False)
        result = run_ask(
            Path(item["video"]),
            item["question"],
            item["options"],
            as_json,
            model="tiny",
            device="cpu",
            max_new_tokens=256,
        )
        if not as_json:
            verdict = "correct" if result.answer == item["answer"] else "wrong"
            out.print(f"Right answer: {item['answer']} — the model was {verdict}.")


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder for videos/ and annotations.json.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of questions.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed; item i depends only on (seed, i).")] = 0,
    minutes: Annotated[float, typer.Option(min=0.1, help="Length of each video.")] = 2.0,
    workers: Annotated[int, typer.Option(min=1, help="Processes rendering videos.")] = 1,
    kinds: Annotated[
        str,
        typer.Option(
            help="Question kinds, a comma list of colour, shape, order, count, cycled over items."
        ),
    ] = "colour,shape,order,count",
    colour_needles: Annotated[
        int,
        typer.Option(
            min=1,
            help="Most needles in a colour item (1 to N): with several, the question names the "
            "shape it asks about and no option names another needle's colour.",
        ),
    ] = 1,
    needle_scale: Annotated[
        float, typer.Option(help="Needle side as a share of the frame side (0.05-0.6).")
    ] = 0.3,
    frame_size: Annotated[int, typer.Option(help="Frame width and height in pixels (even).")] = 112,
    avoid_first_turn: Annotated[
        bool,
        typer.Option(help="Put needles only on pool frames the 16 first-turn frames do not show."),
    ] = False,
) -> None:
    """Generate the synthetic long-video QA set (Video-MTR training-file format)."""
    from rich.progress import Progress

    from vmtr.eval.synthetic import SyntheticSettings, generate

    with user_errors():
        settings = SyntheticSettings(
            n_items=n,
            seed=seed,
            minutes=minutes,
            kinds=parse_kinds(kinds),
            colour_needles=colour_needles,
            needle_scale=needle_scale,
            frame_size=frame_size,
            avoid_first_turn=avoid_first_turn,
        )
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("rendering videos", total=n)
            path = generate(
                out_dir,
                settings,
                workers=workers,
                progress=lambda done, total: bar.update(task, completed=done),
            )
        out.print(f"wrote {n} questions to {path}", highlight=False)


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"colour, count"`` -> ``("colour", "count")``; unknown or repeated kinds are refused."""
    from typing import get_args

    from vmtr.eval.synthetic import QuestionKind

    known = get_args(QuestionKind)
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in known]
    if not kinds or unknown:
        raise ValueError(f"--kinds: unknown kind(s) {unknown or [text]}; choose from {list(known)}")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"--kinds: {text!r} names a kind twice")
    return kinds


def describe_tiny(info: dict[str, Any]) -> str:
    """One honest sentence on what the bundled tiny model is and can do."""
    if not info.get("trained"):
        return (
            "bundled tiny Qwen2.5-VL (1.3 M parameters), randomly initialised and untrained: "
            "its replies are noise and it will rarely follow the protocol. This demo shows the "
            "pipeline (decoding, frame pool, turns, parsing), not answer quality."
        )
    return str(info.get("description", "bundled tiny Qwen2.5-VL, trained on the synthetic set"))


def demo_item(folder: Path, seed: int) -> dict[str, Any]:
    """One generated colour question with its 2-minute video, for the demo: the needle is on
    none of the 16 first-turn frames, so an answer needs a retrieve (the tiny model reads
    colours, not shapes, order or counts)."""
    from vmtr.eval.datasets import load_video_mtr_json
    from vmtr.eval.synthetic import SyntheticSettings, generate

    settings = SyntheticSettings(
        n_items=1, seed=seed, minutes=2.0, kinds=("colour",), avoid_first_turn=True
    )
    path = generate(folder, settings)
    item = load_video_mtr_json(path)[0]
    return {
        "video": str(item.video),
        "question": item.question,
        "options": item.options,
        "answer": item.answer,
        "duration": item.duration or 0.0,
    }


def _mount_subcommands() -> None:
    """Commands that live in their own modules: store, evaluation and training."""
    from vmtr.cli_eval import eval_command
    from vmtr.cli_rl import rl
    from vmtr.cli_store import index, search
    from vmtr.cli_train import train_app

    app.command("index")(index)
    app.command("search")(search)
    app.command("eval")(eval_command)
    train_app.command("rl")(rl)
    app.add_typer(train_app, name="train")


_mount_subcommands()


def main() -> None:
    """Entry point that keeps Click's usage errors at exit code 2."""
    app()


if __name__ == "__main__":
    main()
