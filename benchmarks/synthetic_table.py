"""The README's results table on a held-out synthetic set: chance, single-turn, multi-turn.

    python benchmarks/synthetic_table.py [--n 200] [--seed 5000] [--model tiny] [--workers 2]

Generates the held-out set (seed different from training) if it is missing, runs the agent with
greedy decoding under each setting, and prints a Markdown table of accuracy, mean distinct frames
seen and mean turns. Settings, all through `vmtr.ask`:

- chance: 1 / number of options (25 % with four options); no frames;
- single-turn with 16 and with 32 uniform frames (``max_turns=1``);
- multi-turn with the protocol's defaults (16 first-turn frames, retrieves of 8, 3 turns), and
  with two turns (one retrieve, then the answer);
- multi-turn with oracle aim (`vmtr.eval.oracle.OracleAim`): the same model and protocol, but
  every retrieve it writes asks for 8 frames around the needles. It bounds what better aiming
  (the part of the policy RL can move) could buy this model; the rest is reading;
- the same in two turns: the aimed retrieve's turn is the last, so its prompt asks for an
  answer. It adds a stopping rule to the bound: answer once the needles were shown.

Every setting runs through the evaluation runner (`vmtr.eval.runner`, as `vmtr eval` runs), its
results files in a folder beside the data, so an interrupted run resumes where it stopped. Items
are split between worker processes with one thread each (the tiny model is far too small to use
more than one core well).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, get_args

from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings
from vmtr.eval.datasets import QAItem
from vmtr.eval.report import evidence_sentence
from vmtr.eval.runner import EvalSettings, collect, run
from vmtr.eval.scoring import breakdown, evidence_split, letter_balance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `recipes`

from recipes.tiny.curriculum.episodes import AnswerForm, reads_first_turn  # noqa: E402

SETTINGS: dict[str, dict[str, Any]] = {
    "single-turn, 16 uniform frames": {"max_turns": 1, "first_turn_frames": 16},
    "single-turn, 32 uniform frames": {"max_turns": 1, "first_turn_frames": 32},
    "multi-turn (16 + 8 + 8, 3 turns)": {},
    "two turns (16 + 8)": {"max_turns": 2},
    "multi-turn, oracle aim": {},
    "two turns, oracle aim": {"max_turns": 2},
}
MULTI, TWO_TURNS = "multi-turn (16 + 8 + 8, 3 turns)", "two turns (16 + 8)"
ORACLE, TWO_TURNS_ORACLE = "multi-turn, oracle aim", "two turns, oracle aim"
ORACLE_SETTINGS = {ORACLE, TWO_TURNS_ORACLE}
"""The settings whose model is wrapped in `OracleAim` over the item's needle frames."""

_LM: Any = None


def _init_worker(model: str) -> None:
    import torch

    from vmtr.models.qwen import QwenVideoLM

    global _LM
    torch.set_num_threads(1)
    _LM = QwenVideoLM.load(ModelSettings(model=model, device="cpu"))


def eval_settings(model: str, setting: str, max_new_tokens: int) -> EvalSettings:
    """The evaluation runner's settings for one of `SETTINGS`: greedy, its protocol, and the
    oracle's aim for the oracle rows."""
    protocol = ProtocolSettings(**SETTINGS[setting])
    return EvalSettings(
        benchmark="synthetic",
        model=ModelSettings(model=model),
        frames=protocol.first_turn_frames,
        protocol=protocol,
        generation=GenerationSettings(temperature=0, max_new_tokens=max_new_tokens),
        oracle_aim=setting in ORACLE_SETTINGS,
    )


def _run_shard(
    settings: EvalSettings, items: list[QAItem], folder: Path, shard: tuple[int, int]
) -> int:
    """One worker's share of one setting, through the evaluation runner; how many it ran."""
    return run(items, settings, folder, _LM, shard=shard).done


def table_row(setting: str, item: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
    """The table's per-item row from the runner's sample. The answer is the protocol's own (a
    reply the protocol cannot parse answers nothing), as the agent gives it."""
    turns = sample.get("turns") or []
    answer = sample.get("prediction") if sample.get("parsed_by") == "protocol" else None
    return {
        "setting": setting,
        "status": sample.get("status"),
        "id": item["id"],
        "answer": answer,
        "truth": item["answer"],
        "correct": answer == item["answer"],
        "frames": int(sample.get("n_frames") or 0),
        "turns": len(turns),
        "invalid": sum(t.get("action") == "invalid" for t in turns),
        "retrieved": any(t.get("action") == "retrieve" for t in turns),
        "stop_reason": sample.get("stop_reason"),
        "saw_evidence": sample.get("saw_evidence"),
        # Did the first reply name exactly the needles its frames showed? (None: none shown.)
        "reads": reads_first_turn(item["item"], turns),
        "seconds": sample.get("seconds"),
    }


def load_items(folder: Path, n: int, seed: int, minutes: float) -> list[dict[str, Any]]:
    """The held-out items, generating the set first when it is not there."""
    from vmtr.eval.datasets import load_video_mtr_json
    from vmtr.eval.synthetic import SyntheticSettings, generate

    path = folder / "annotations.json"
    if not path.exists():
        print(f"generating {n} held-out items (seed {seed}) in {folder}", file=sys.stderr)
        started = time.perf_counter()
        generate(folder, SyntheticSettings(n_items=n, seed=seed, minutes=minutes))
        print(f"generated in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    items = load_video_mtr_json(path)[:n]
    return [
        {
            "id": it.id,
            "video": str(it.video),
            "question": it.question,
            "options": it.options,
            "answer": it.answer,
            "windows": it.relevant_windows,
            "extra": {"needles": it.extra["needles"]},
            "kind": it.categories.get("kind"),
            "item": it,
        }
        for it in items
    ]


def summary_row(
    rows: list[dict[str, Any]], label: str, kinds: dict[str, str] | None = None
) -> dict[str, Any]:
    """Accuracy, frames, turns, retrieve rate and invalid replies over ``rows`` (one setting);
    ``kinds`` (item id -> question kind) adds accuracy per kind to the turns-taken breakdown."""
    n = len(rows)
    categories = [
        {"turns taken": r["turns"], **({"kind": kinds.get(r["id"])} if kinds else {})} for r in rows
    ]
    return {
        "setting": label,
        "accuracy": sum(r["correct"] for r in rows) / n,
        "frames": sum(r["frames"] for r in rows) / n,
        "turns": sum(r["turns"] for r in rows) / n,
        "invalid": sum(r["invalid"] for r in rows) / n,
        "retrieve_rate": sum(bool(r.get("retrieved")) for r in rows) / n,
        "n": n,
        "reads": [r["reads"] for r in rows if r.get("reads") is not None],
        "evidence": evidence_split(rows),
        "letters": letter_balance(rows, gold_key="truth", predicted_key="answer"),
        "breakdown": breakdown(
            {**r, "categories": c} for r, c in zip(rows, categories, strict=True)
        ),
    }


def breakdown_line(row: dict[str, Any]) -> str | None:
    """Right answers per question kind and per number of turns taken, as a line under the
    table: where a policy loses (a kind it cannot read, a turn it reads worse on)."""
    groups = row.get("breakdown")
    if not groups:
        return None
    parts = [
        f"{key} "
        + ", ".join(f"{value} {cell['correct']}/{cell['n']}" for value, cell in cells.items())
        for key, cells in sorted(groups.items())
    ]
    return f"- {row['setting']}: right answers by " + "; by ".join(parts)


def evidence_line(row: dict[str, Any]) -> str | None:
    """The row's `evidence_split` as a line under the table: did the frames shown hold the
    needles, and was the answer better when they did?"""
    sentence = evidence_sentence(row.get("evidence"))
    return f"- {row['setting']}: {sentence}" if sentence else None


def chance_row(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Expected accuracy of a uniform guess over each item's options."""
    chance = sum(1 / len(it["options"]) for it in items) / len(items)
    return {
        "setting": "chance",
        "accuracy": chance,
        "balanced_accuracy": chance,
        "frames": 0.0,
        "turns": 0.0,
        "n": len(items),
    }


def item_kinds(items: list[dict[str, Any]]) -> dict[str, str]:
    """Item id -> question kind (colour, shape, order, count) of the held-out items."""
    return {it["id"]: it["kind"] for it in items if it.get("kind")}


def summarise(rows: list[dict[str, Any]], items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per setting, chance first."""
    table = [chance_row(items)]
    for setting in SETTINGS:
        mine = [r for r in rows if r["setting"] == setting]
        if mine:
            table.append(summary_row(mine, setting, item_kinds(items)))
    return table


def markdown(table: list[dict[str, Any]]) -> str:
    """The table as the README shows it. "Balanced" is accuracy averaged over the right letters
    and "Top answer" the most common answer's share (`letter_balance`): a policy that always
    gives one letter scores that letter's share of the set, and only the balanced figure shows it.
    """
    lines = [
        "| Setting | Accuracy | Balanced | Mean frames seen | Mean turns | Retrieve rate "
        "| Invalid replies / item | Top answer | Items |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table:
        invalid = f"{row['invalid']:.2f}" if "invalid" in row else "–"
        turns = f"{row['turns']:.2f}" if row["turns"] else "–"
        retrieves = f"{row['retrieve_rate']:.0%}" if "retrieve_rate" in row else "–"
        letters = row.get("letters") or {}
        balanced = row.get("balanced_accuracy", letters.get("balanced_accuracy"))
        balanced_cell = f"{balanced:.1%}" if balanced is not None else "–"
        top = "–"
        if letters.get("top_answer_share") is not None:
            top = f"{letters['top_answer'] or 'none'} {letters['top_answer_share']:.0%}"
        lines.append(
            f"| {row['setting']} | {row['accuracy']:.1%} | {balanced_cell} | {row['frames']:.1f} "
            f"| {turns} | {retrieves} | {invalid} | {top} | {row['n']} |"
        )
    return "\n".join(lines)


def evaluate_model(
    model: str,
    items: list[dict[str, Any]],
    settings: list[str],
    results: Path,
    workers: int = 2,
    max_new_tokens: int = 96,
) -> tuple[list[dict[str, Any]], int]:
    """Per-item rows of ``model`` under each named setting, through the evaluation runner
    (`vmtr.eval.runner`), whose results files in the folder ``results`` make a rerun resume.

    Items are split into ``workers`` shards, each asked one at a time in its own process (one
    thread each). Returns the rows of these items and settings, and how many runs were new.
    """
    qa = [it["item"] for it in items]
    runs = {s: eval_settings(model, s, max_new_tokens) for s in settings}
    new_runs = 0
    if any(len(collect(results, qa, r.run_key())) < len(qa) for r in runs.values()):
        from tqdm import tqdm

        results.mkdir(parents=True, exist_ok=True)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(model,)
        ) as pool:
            futures = [
                pool.submit(_run_shard, r, qa, results, (k, workers))
                for r in runs.values()
                for k in range(workers)
            ]
            for future in tqdm(as_completed(futures), total=len(futures), file=sys.stderr):
                new_runs += future.result()
    rows = []
    for setting, r in runs.items():
        samples = {s["id"]: s for s in collect(results, qa, r.run_key())}
        rows += [table_row(setting, it, samples[it["id"]]) for it in items if it["id"] in samples]
    return rows, new_runs


def model_tag(model: str) -> str:
    """A results-file tag naming ``model`` by its whole path, so that two checkpoints both
    called ``best`` never share (and resume from) each other's rows. ``tiny`` names whatever
    model is bundled, so its tag adds a fingerprint of the weights: a re-bundled model must not
    resume from its predecessor's rows."""
    if model == "tiny":
        from vmtr.models.tiny import TINY_DIR

        weights = hashlib.sha1((Path(TINY_DIR) / "model.safetensors").read_bytes()).hexdigest()
        return f"tiny-{weights[:10]}"
    return "-".join(p for p in Path(model).parts if p not in ("/", "..", "."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/table/heldout-s5000"))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=5000)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument(
        "--results", type=Path, help="Folder of the evaluation runner's results (resumable)."
    )
    parser.add_argument("--json", action="store_true", help="Print the table as JSON too.")
    parser.add_argument(
        "--json-out", type=Path, help="Also write the table and the reading check to this file."
    )
    parser.add_argument(
        "--no-reading", action="store_true", help="Skip the teacher-forced reading check."
    )
    parser.add_argument(
        "--answer-form",
        choices=get_args(AnswerForm),
        default="letter",
        help="What the model was taught to put inside <answer> (for the reading check).",
    )
    args = parser.parse_args()

    items = load_items(args.data, args.n, args.seed, args.minutes)
    results = args.results or args.data / f"results-{model_tag(args.model)}"
    started = time.perf_counter()
    rows, new_runs = evaluate_model(
        args.model, items, list(SETTINGS), results, args.workers, args.max_new_tokens
    )
    elapsed = time.perf_counter() - started
    table = summarise(rows, items)
    made = json.loads((args.data / "settings.json").read_text())
    print(
        f"Held-out synthetic set: {len(items)} items (seed {made['seed']}, {made['minutes']:g}-minute "
        f"videos), model {args.model}, greedy decoding; {new_runs} runs in {elapsed:.0f} s.\n"
    )
    print(markdown(table))
    print()
    for row in table:
        reads = row.get("reads")
        if reads:
            print(
                f"- {row['setting']}: first reply names exactly the shapes its frames showed in "
                f"{sum(reads)}/{len(reads)} runs where a shape was shown ({sum(reads) / len(reads):.0%})"
            )
    for row in table:
        for line in (evidence_line(row), breakdown_line(row)):
            if line:
                print(line)
    reading = None
    if not args.no_reading:
        reading = reading_check(args.model, items, args.data / "frames", args.answer_form)
        print(reading_line(reading))
    plain = [{k: v for k, v in row.items() if k != "reads"} for row in table]
    if args.json:
        print(json.dumps(plain))
    if args.json_out:
        report = {
            "model": args.model,
            "heldout": made,
            "rows": plain,
            "reading": reading,
            "answer_form": args.answer_form,
        }
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")


def reading_check(
    model: str,
    items: list[dict[str, Any]],
    cache: Path,
    answer_form: AnswerForm = "letter",
) -> dict[str, Any]:
    """Teacher-forced reading (`recipes.tiny.curriculum.reading`) of ``model`` on the same
    items."""
    from recipes.tiny.curriculum.reading import reading_accuracy
    from vmtr.agent.ask import resolve_model
    from vmtr.eval.datasets import load_video_mtr_json

    lm, _, _ = resolve_model(model, {"device": "cpu"})
    wanted = {item["id"] for item in items}
    qa = [q for q in load_video_mtr_json(cache.parent / "annotations.json") if q.id in wanted]
    cache.mkdir(parents=True, exist_ok=True)
    result = reading_accuracy(lm.model, lm.processor, qa, cache, answer_form=answer_form)
    return result | {"items": len(qa)}


def reading_line(r: dict[str, Any]) -> str:
    """`reading_check`'s result as one line under the table."""
    names = {
        "colour_accuracy": "colour",
        "shape_accuracy": "shape",
        "border_digits_accuracy": "border frame digits",
        "seen_first_accuracy": "shape or none",
        "seen_digits_accuracy": "needle frame digits",
        "answer_accuracy": "answer once every needle was seen",
    }
    parts = [f"{label} {r[key]:.0%}" for key, label in names.items() if r.get(key) is not None]
    return (
        f"- teacher-forced reading over the scripted multi-turn episodes of these {r['items']} items "
        f"(top-1 at each word of the warm start's own labels; chance 17 % for colour, 25 % for "
        f"shape): {', '.join(parts)}"
    )


if __name__ == "__main__":
    main()
