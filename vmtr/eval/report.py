"""Reports of a run, laid out the way lmms-eval users look for them.

Inside the output folder: ``results.json`` (headline accuracy in the benchmark's convention, the
counts, every per-category breakdown, mean turns, frames, latency and tokens), ``samples.jsonl``
(one line per question with its full trace, errors included), ``summary.md`` (Markdown tables)
and two plots: ``accuracy_by_category.png`` and, across every run kept in the folder,
``accuracy_vs_frames.png``. The top-level files describe the run just made; a copy of each
run's ``results.json`` and ``samples.jsonl`` stays under ``runs/<run key>/`` so that runs with
other settings in the same folder remain comparable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vmtr.eval.scoring import (
    GROUPED,
    accuracy,
    breakdown,
    evidence_split,
    is_scored,
    letter_balance,
    question_units,
)

RESULTS, SAMPLES, SUMMARY = "results.json", "samples.jsonl", "summary.md"
CATEGORY_PLOT, FRAMES_PLOT = "accuracy_by_category.png", "accuracy_vs_frames.png"


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def summarize(
    samples: Sequence[Mapping[str, Any]],
    benchmark: str,
    *,
    total: int | None = None,
    run_key: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The contents of ``results.json`` for one run's merged samples.

    ``accuracy`` is a fraction in [0, 1] over scored questions (errors and questions without a
    public answer are left out, never guessed); ``errors`` counts error rows separately. For a
    benchmark that asks a question as several rows (VideoMathQA's multi-binary), ``n`` and the
    breakdowns count questions, ``pairs`` the rows, and ``errors`` and ``total`` rows.
    """
    ok = [s for s in samples if s.get("status") == "ok"]
    errors = [s for s in samples if s.get("status") == "error"]
    headline = accuracy(samples, benchmark)
    error_kinds: dict[str, int] = {}
    for row in errors:
        kind = str(row.get("error_kind") or "unknown")
        error_kinds[kind] = error_kinds.get(kind, 0) + 1
    summary = {
        "benchmark": benchmark,
        "run_key": run_key,
        "accuracy": headline["accuracy"],
        "convention": headline["convention"],
        "accuracy_micro": headline["accuracy_micro"],
        "accuracy_macro": headline["accuracy_macro"],
        "correct": headline["correct"],
        "n": headline["n"],
        "errors": len(errors),
        "errors_by_kind": error_kinds,
        "unanswered": sum(1 for s in ok if s.get("prediction") is None),
        "unscored": sum(1 for s in ok if s.get("correct") is None),
        "total": total if total is not None else len(samples),
        "complete": total is None or len(samples) >= total,
        "by_category": breakdown(question_units(samples, benchmark)),
        "evidence": evidence_split(samples),
        "letters": letter_balance(samples),
        "mean_turns": _mean([s.get("n_turns", 0) for s in ok]),
        "mean_frames": _mean([s.get("n_frames", 0) for s in ok]),
        "mean_seconds": _mean([s.get("seconds", 0.0) for s in ok]),
        "mean_prompt_tokens": _mean([s.get("prompt_tokens", 0) for s in ok]),
        "mean_new_prompt_tokens": _mean([s.get("new_prompt_tokens", 0) for s in ok]),
        "mean_completion_tokens": _mean([s.get("completion_tokens", 0) for s in ok]),
        "stop_reasons": _counts(s.get("stop_reason") for s in ok),
        "parsed_by": _counts(s.get("parsed_by") for s in ok),
        "config": dict(settings or {}),
    }
    if benchmark in GROUPED:
        rows = [s for s in samples if is_scored(s)]
        right = sum(int(bool(s["correct"])) for s in rows)
        rate = right / len(rows) if rows else None
        summary["pairs"] = {"accuracy": rate, "correct": right, "n": len(rows)}
    return summary


def _counts(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        name = "none" if value is None else str(value)
        out[name] = out.get(name, 0) + 1
    return dict(sorted(out.items()))


def _write_atomic(path: Path, text: str) -> None:
    """Readers (and a concurrently finishing shard) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def runs_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table, one line per run: the papers' columns plus cost."""
    lines = [
        "| run | benchmark | mode | frames | accuracy (%) | n | errors | turns | frames seen "
        "| s/question |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        config = r.get("config") or {}
        protocol = config.get("protocol") or {}
        lines.append(
            f"| {r.get('run_key') or '-'} | {r['benchmark']} | {config.get('mode', '-')} "
            f"| {protocol.get('first_turn_frames', '-')} | {_pct(r['accuracy'])} | {r['n']} "
            f"| {r['errors']} | {_num(r['mean_turns'])} | {_num(r['mean_frames'], 1)} "
            f"| {_num(r['mean_seconds'])} |"
        )
    return "\n".join(lines)


def evidence_sentence(evidence: Mapping[str, Any] | None) -> str | None:
    """`scoring.evidence_split`'s figures as one sentence (summary.md, the CLI, the benchmark
    scripts); None when no question recorded whether it saw the evidence."""
    if not evidence or not evidence.get("n"):
        return None

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    return (
        f"The frames shown covered every relevant window in {pct(evidence['seen_rate'])} of "
        f"{evidence['n']} questions; accuracy {pct(evidence['accuracy_seen'])} on those, "
        f"{pct(evidence['accuracy_missed'])} on the rest."
    )


def pairs_sentence(pairs: Mapping[str, Any] | None) -> str | None:
    """A multi-binary run's pair-level accuracy in words (None for other benchmarks)."""
    if not pairs or not pairs.get("n"):
        return None
    return (
        f"Pairs (the right option against one distractor) answered right: "
        f"{100 * pairs['accuracy']:.1f}% of {pairs['n']}; a question counts only when all its "
        f"pairs do."
    )


def letters_sentence(letters: Mapping[str, Any] | None) -> str | None:
    """`scoring.letter_balance` in words: what accuracy is worth once the answer key's letter
    shares are taken out."""
    if not letters or letters.get("balanced_accuracy") is None:
        return None
    top = letters["top_answer"] if letters["top_answer"] is not None else "no answer"
    return (
        f"Balanced accuracy (the mean over the right letters; any constant answer scores 1/k) "
        f"{letters['balanced_accuracy']:.1%}; the most common answer, {top}, was given "
        f"{letters['top_answer_share']:.0%} of the time."
    )


def markdown(results: Mapping[str, Any], others: Sequence[Mapping[str, Any]] = ()) -> str:
    """``summary.md``: this run's headline and category tables, then every run in the folder."""
    model = (results.get("config") or {}).get("model", {}).get("model", "?")
    grouped = "pairs" in results  # multi-binary: questions scored, the rest counted in pairs
    scored, rows = ("questions scored", "pairs") if grouped else ("scored", "questions")
    parts = [
        f"# {results['benchmark']}: {_pct(results['accuracy'])}% ({results['convention']})",
        "",
        f"Model `{model}`, run `{results.get('run_key')}`: {results['n']} {scored}, "
        f"{results['errors']} errors, {results['unanswered']} unanswered, "
        f"{results['total']} {rows}"
        + ("" if results["complete"] else " (incomplete: some questions have no row yet)")
        + ".",
        "",
        runs_table([results]),
    ]
    for sentence in (
        pairs_sentence(results.get("pairs")),
        evidence_sentence(results.get("evidence")),
        letters_sentence(results.get("letters")),
    ):
        if sentence:
            parts += ["", sentence]
    for key, values in results["by_category"].items():
        parts += ["", f"## By {key}", "", "| " + key + " | accuracy (%) | correct | n |"]
        parts.append("|---|---|---|---|")
        for value, cell in values.items():
            parts.append(
                f"| {value} | {_pct(cell['accuracy'])} | {cell['correct']} | {cell['n']} |"
            )
    if len(others) > 1:
        parts += ["", "## All runs in this folder", "", runs_table(others)]
    return "\n".join(parts) + "\n"


def plot_categories(results: Mapping[str, Any], path: Path) -> bool:
    """Horizontal bars of accuracy per category value, one panel per category key."""
    groups = {k: v for k, v in results["by_category"].items() if v}
    if not groups:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [max(1.6, 0.35 * len(v) + 1.0) for v in groups.values()]
    fig, axes = plt.subplots(len(groups), 1, figsize=(7, sum(heights)), squeeze=False)
    for ax, (key, values) in zip(axes[:, 0], groups.items(), strict=True):
        names = list(values)
        accs = [100 * (values[n]["accuracy"] or 0.0) for n in names]
        ax.barh(names, accs, color="#4c72b0")
        for y, (name, acc) in enumerate(zip(names, accs, strict=True)):
            ax.text(acc + 1, y, f"{acc:.1f} (n={values[name]['n']})", va="center", fontsize=8)
        ax.set_xlim(0, 115)
        ax.invert_yaxis()
        ax.set_title(f"accuracy by {key}", fontsize=10)
        ax.set_xlabel("accuracy (%)")
    fig.suptitle(f"{results['benchmark']}: {_pct(results['accuracy'])}% overall", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_frames(runs: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Accuracy against mean frames seen, one point per run kept in the folder."""
    points = [r for r in runs if r["accuracy"] is not None and r["mean_frames"] is not None]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    markers = {"multi-turn": "o", "single-turn": "s"}
    for r in points:
        mode = (r.get("config") or {}).get("mode", "?")
        ax.scatter(r["mean_frames"], 100 * r["accuracy"], marker=markers.get(mode, "^"), s=40)
        ax.annotate(
            f"{r['benchmark']} {mode}",
            (r["mean_frames"], 100 * r["accuracy"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    ax.set_xlabel("frames seen per question (mean)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title("accuracy against frames seen, all runs in this folder", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(
    output: str | Path,
    results: Mapping[str, Any],
    samples: Sequence[Mapping[str, Any]],
    others: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Path]:
    """Write every report file of a run into ``output``; returns what was written."""
    output = Path(output)
    written: dict[str, Path] = {}
    text = json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    lines = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
    _write_atomic(output / RESULTS, text)
    _write_atomic(output / SAMPLES, lines)
    written.update(results=output / RESULTS, samples=output / SAMPLES)
    if results.get("run_key"):  # the top-level files are the latest run's; keep each run's own
        run_dir = output / "runs" / str(results["run_key"])
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(run_dir / RESULTS, text)
        _write_atomic(run_dir / SAMPLES, lines)
    _write_atomic(output / SUMMARY, markdown(results, others))
    written["summary"] = output / SUMMARY
    if plot_categories(results, output / CATEGORY_PLOT):
        written["category_plot"] = output / CATEGORY_PLOT
    if plot_frames(others or [results], output / FRAMES_PLOT):
        written["frames_plot"] = output / FRAMES_PLOT
    return written
