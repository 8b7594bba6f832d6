"""Resumable, sharded benchmark runs.

Every finished question is one row of a SQLite file in the output folder, committed in its own
transaction (WAL journal) the moment it finishes, so a run killed at any point loses at most the
questions in flight and re-running the same command picks up where it stopped. Rows are keyed by
a *run key*: a hash of every setting that changes answers (benchmark, model, mode, frames,
protocol, generation, segment store, subtitles), so a changed setting starts a new run beside the
old one instead of mixing with it. Batch size, shard, limit, device and output folder are not in the key.

Each process writes only its own file (``results.sqlite``, or ``results.shard-I-of-N.sqlite``
for shard I of N), because SQLite's WAL mode is unsafe when several machines share one file over
a network file system; every process reads all files to skip finished questions, and `collect`
merges them in dataset order, so a sharded run reports exactly what one process would.

A missing or broken video (or any failure of one question) becomes an error row with the reason;
the run goes on. Error rows of unusable videos are kept on resume (``retry_errors`` redoes them);
unexpected failures are always retried.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings, ServedSettings
from vmtr.eval.datasets import QAItem
from vmtr.eval.scoring import extract_answer, saw_evidence
from vmtr.models.vlm import VideoLM

Mode = Literal["multi-turn", "single-turn"]
DB_GLOB = "results*.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    run_key TEXT NOT NULL,
    item_id TEXT NOT NULL,
    status TEXT NOT NULL,          -- ok | error
    error_kind TEXT,               -- video | item | unexpected
    sample TEXT NOT NULL,          -- the JSON line of samples.jsonl
    finished REAL NOT NULL,
    PRIMARY KEY (run_key, item_id)
);
"""

DEFAULT_FRAMES = {"multi-turn": 16, "single-turn": 32}
"""Frames shown on turn 1: Video-MTR's 16; the single-turn baseline's 32 uniform frames."""


class EvalSettings(BaseModel):
    """Everything that decides a run's answers; its hash is the run key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    benchmark: str
    mode: Mode = "multi-turn"
    frames: int | None = Field(None, ge=1, description="Turn-1 frames; None = mode default.")
    model: ModelSettings = Field(default_factory=ModelSettings)
    protocol: ProtocolSettings = Field(default_factory=ProtocolSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    store: str | None = Field(None, description="Embedder spec of the segment store, or None.")
    oracle_aim: bool = Field(
        False,
        description="Rewrite every retrieve to the question's relevant frames "
        "(vmtr.eval.oracle): what perfect aiming would buy the model.",
    )
    subtitles: bool = Field(
        False, description="Show each turn the subtitle lines near its frames (where shipped)."
    )
    subtitle_window: float = Field(
        2.0, ge=0, description="Seconds either side of a frame within which a line is near it."
    )
    served: ServedSettings | None = Field(
        None, description="The model behind an OpenAI-compatible endpoint, when not in-process."
    )

    def effective_protocol(self) -> ProtocolSettings:
        """The protocol actually run: single-turn is one turn showing ``frames`` uniform frames."""
        frames = self.frames or DEFAULT_FRAMES[self.mode]
        changes: dict[str, Any] = {"first_turn_frames": frames}
        if frames > self.protocol.pool_size:
            changes["pool_size"] = frames
        if self.mode == "single-turn":
            changes["max_turns"] = 1
        return self.protocol.model_copy(update=changes)

    def identity(self) -> dict[str, Any]:
        """The settings that change answers, as plain JSON (no device, batch size or paths)."""
        model = self.model.model_dump(mode="json", exclude={"device"})
        identity = {
            "benchmark": self.benchmark,
            "mode": self.mode,
            "model": model,
            "protocol": self.effective_protocol().model_dump(mode="json"),
            "generation": self.generation.model_dump(mode="json"),
            "store": self.store,
        }
        if self.oracle_aim:  # only when on, so the runs made before it keep their keys
            identity["oracle_aim"] = True
        if self.subtitles:  # likewise
            identity["subtitles"] = {"window_s": self.subtitle_window}
        if self.served is not None:  # base URL and model name; never the key, which is no setting
            identity["served"] = self.served.identity()
        return identity

    def run_key(self) -> str:
        """Short stable hash of `identity`."""
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The results files


def db_name(shard: tuple[int, int]) -> str:
    """This process's results file: one per shard so that no two processes write one file."""
    index, count = shard
    return "results.sqlite" if count == 1 else f"results.shard-{index}-of-{count}.sqlite"


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating) a results file in WAL mode; each row is then one durable transaction."""
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
    conn.executescript(SCHEMA)
    return conn


@contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    try:
        yield conn
    finally:
        conn.close()


def read_rows(output: Path, run_key: str | None = None) -> list[dict[str, Any]]:
    """Every row in the folder's results files (of one run when ``run_key`` is given)."""
    rows: list[dict[str, Any]] = []
    for path in sorted(Path(output).glob(DB_GLOB)):
        with _reading(path) as conn:
            query = "SELECT run_key, item_id, status, error_kind, sample, finished FROM samples"
            args: tuple[Any, ...] = ()
            if run_key is not None:
                query += " WHERE run_key = ?"
                args = (run_key,)
            try:
                fetched = conn.execute(query, args).fetchall()
            except sqlite3.OperationalError:  # a file created but never given its tables
                continue
        for key, item_id, status, kind, sample, finished in fetched:
            rows.append(
                {
                    "run_key": key,
                    "item_id": item_id,
                    "status": status,
                    "error_kind": kind,
                    "sample": json.loads(sample),
                    "finished": finished,
                }
            )
    return rows


def read_runs(output: Path) -> dict[str, dict[str, Any]]:
    """Run key -> the identity settings recorded for it, over all results files."""
    runs: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(output).glob(DB_GLOB)):
        with _reading(path) as conn:
            try:
                fetched = conn.execute("SELECT run_key, settings FROM runs").fetchall()
            except sqlite3.OperationalError:
                continue
        for key, settings in fetched:
            runs.setdefault(key, json.loads(settings))
    return runs


def finished_ids(output: Path, run_key: str, *, retry_errors: bool = False) -> set[str]:
    """Questions of this run that need no new attempt (across every shard's file)."""
    done = set()
    for row in read_rows(output, run_key):
        if row["status"] == "ok":
            done.add(row["item_id"])
        elif row["error_kind"] in ("video", "item") and not retry_errors:
            done.add(row["item_id"])
    return done


def collect(output: Path, items: Sequence[QAItem], run_key: str) -> list[dict[str, Any]]:
    """The merged samples of one run, one per item in dataset order (latest row wins)."""
    latest: dict[str, dict[str, Any]] = {}
    for row in read_rows(output, run_key):
        kept = latest.get(row["item_id"])
        if kept is None or row["finished"] > kept["finished"]:
            latest[row["item_id"]] = row
    return [latest[item.id]["sample"] for item in items if item.id in latest]


# ---------------------------------------------------------------------------------------------
# One question


def _sum(turns: Sequence[dict[str, Any]], key: str) -> int:
    return int(sum(t.get(key) or 0 for t in turns))


def shown_times(turns: Sequence[dict[str, Any]]) -> list[float] | None:
    """The timestamps of every frame the turns showed; None when a turn left them out (the
    long-context mode drops the list of a turn that shows many frames)."""
    times: list[float] = []
    for turn in turns:
        if turn.get("frames") and len(turn.get("timestamps") or []) != len(turn["frames"]):
            return None
        times.extend(turn.get("timestamps") or [])
    return times


def sample_row(
    item: QAItem, position: int, state: dict[str, Any] | None, seconds: float
) -> dict[str, Any]:
    """The JSON line for one answered question: prediction, correctness and the whole trace."""
    state = state or {}
    turns = list(state.get("turns") or [])
    letters = item.letters
    prediction, parsed_by = state.get("answer"), "protocol" if state.get("answer") else None
    if prediction is None and turns and letters:
        prediction, parsed_by = extract_answer(turns[-1].get("raw"), letters, item.options)
    if prediction is not None and letters:
        prediction = str(prediction).strip().upper()
    correct = None if item.answer is None else prediction == item.answer
    frames = sorted({i for t in turns for i in t.get("frames", [])})
    return {
        **_item_fields(item, position),
        "status": "ok",
        "prediction": prediction,
        "parsed_by": parsed_by,
        "correct": correct,
        "stop_reason": state.get("stop_reason"),
        "n_turns": len(turns),
        "n_frames": len(frames),
        "frames_seen": frames,
        "saw_evidence": saw_evidence(item.relevant_windows, shown_times(turns)),
        "seconds": round(seconds, 4),
        "prompt_tokens": _sum(turns, "prompt_tokens"),
        "new_prompt_tokens": _sum(turns, "new_prompt_tokens"),
        "completion_tokens": _sum(turns, "completion_tokens"),
        "video_duration": state.get("duration"),
        "turns": turns,
    }


def error_row(item: QAItem, position: int, kind: str, reason: str) -> dict[str, Any]:
    """The JSON line for a question that could not be run; never given an answer."""
    return {
        **_item_fields(item, position),
        "status": "error",
        "error_kind": kind,
        "error": reason,
        "prediction": None,
        "correct": None,
    }


def _item_fields(item: QAItem, position: int) -> dict[str, Any]:
    return {
        "id": item.id,
        "position": position,
        "video": str(item.video),
        "question": item.question,
        "options": item.options,
        "answer": item.answer,
        "categories": item.categories,
        **({"group": item.group} if item.group is not None else {}),
    }


GraphFor = Callable[[QAItem], Any]
"""The compiled agent graph a question runs on."""


def run_item(graph_for: GraphFor, item: QAItem, position: int, max_turns: int) -> dict[str, Any]:
    """Run the agent graph on one question; any failure becomes an error row with its reason."""
    from vmtr.tools.video import VideoError

    if not item.video.is_file():
        return error_row(item, position, "video", f"video not found: {item.video}")
    inputs = {"video": str(item.video), "question": item.question, "options": item.options}
    if item.subtitles is not None:  # read only by a graph built to show subtitles
        inputs["subtitles"] = str(item.subtitles)
    config = {
        "recursion_limit": 4 * max_turns + 10,
        "configurable": {"thread_id": uuid.uuid4().hex},
    }
    started = time.perf_counter()
    try:
        state = graph_for(item).invoke(inputs, config)
    except VideoError as error:
        return error_row(item, position, "video", str(error))
    except ValueError as error:
        return error_row(item, position, "item", str(error))
    except Exception as error:  # noqa: BLE001 - one bad question must not end the run
        return error_row(item, position, "unexpected", f"{type(error).__name__}: {error}")
    return sample_row(item, position, state, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# A run


@dataclass
class RunOutcome:
    """What one process did: the run key, its file, and counts of this invocation."""

    run_key: str
    database: Path
    planned: int  # this shard's questions, after the limit
    skipped: int  # already finished before this invocation
    done: int = 0
    errors: int = 0
    unexpected: list[str] = field(default_factory=list)


def shard_items(items: Sequence[QAItem], shard: tuple[int, int]) -> list[tuple[int, QAItem]]:
    """(position, item) pairs of shard ``index`` of ``count``: every count-th item."""
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count} does not exist (need 0 <= i < n)")
    return [(pos, item) for pos, item in enumerate(items) if pos % count == index]


def build_eval_graph(lm: VideoLM, settings: EvalSettings, scorer: Any = None) -> Any:
    """The agent graph for a run's settings (single-turn is the same graph with one turn)."""
    from vmtr.agent.graph import build_graph
    from vmtr.tools.video import FrameCache

    return build_graph(
        lm,
        protocol_settings=settings.effective_protocol(),
        generation=settings.generation,
        frame_cache=FrameCache(max_frames=1024),
        scorer=scorer,
        guided_retrieve=scorer is not None,
        subtitle_window=settings.subtitle_window if settings.subtitles else None,
    )


def question_graphs(lm: VideoLM, settings: EvalSettings, scorer: Any = None) -> GraphFor:
    """One graph for the whole run; with oracle aim, a graph per question whose model's
    retrieves ask for that question's relevant frames (none: the model's own ranges)."""
    if not settings.oracle_aim:
        graph = build_eval_graph(lm, settings, scorer)
        return lambda item: graph

    from vmtr.eval.oracle import OracleAim

    protocol = settings.effective_protocol()

    def aimed(item: QAItem) -> Any:
        oracle = OracleAim.for_question(lm, item.video, item.relevant_windows, protocol)
        return build_eval_graph(oracle, settings, scorer)

    return aimed


def run(
    items: Sequence[QAItem],
    settings: EvalSettings,
    output: str | Path,
    lm: VideoLM,
    *,
    shard: tuple[int, int] = (0, 1),
    batch_size: int = 1,
    retry_errors: bool = False,
    scorer: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> RunOutcome:
    """Answer this shard's unfinished questions, committing each row as it finishes.

    ``batch_size > 1`` runs that many questions at once; with a `QwenVideoLM` they are decoded
    together by an `EpisodeEngine` (one forward per token for all of them; a finished question's
    place goes to the next at once). ``progress(done, total)`` follows this invocation.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    key = settings.run_key()
    path = output / db_name(shard)
    conn = connect(path)
    with conn:
        conn.execute(
            "INSERT OR IGNORE INTO runs (run_key, settings, created) VALUES (?, ?, ?)",
            (key, json.dumps(settings.identity(), sort_keys=True), time.time()),
        )
    mine = shard_items(items, shard)
    done = finished_ids(output, key, retry_errors=retry_errors)
    todo = [(pos, item) for pos, item in mine if item.id not in done]
    outcome = RunOutcome(key, path, planned=len(mine), skipped=len(mine) - len(todo))
    max_turns = settings.effective_protocol().max_turns

    def commit(row: dict[str, Any]) -> None:
        with conn:  # one transaction per question
            conn.execute(
                "INSERT OR REPLACE INTO samples (run_key, item_id, status, error_kind, sample, "
                "finished) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key,
                    row["id"],
                    row["status"],
                    row.get("error_kind"),
                    json.dumps(row, ensure_ascii=False),
                    time.time(),
                ),
            )
        outcome.done += 1
        if row["status"] == "error":
            outcome.errors += 1
            if row.get("error_kind") == "unexpected":
                outcome.unexpected.append(f"{row['id']}: {row['error']}")
        if progress is not None:
            progress(outcome.done, len(todo))

    try:
        if progress is not None:
            progress(0, len(todo))
        if batch_size <= 1 or len(todo) <= 1:
            graph_for = question_graphs(lm, settings, scorer)
            for pos, item in todo:
                commit(run_item(graph_for, item, pos, max_turns))
        else:
            _run_concurrently(lm, settings, scorer, todo, batch_size, max_turns, commit)
    finally:
        conn.close()
    return outcome


def _run_concurrently(
    lm: VideoLM,
    settings: EvalSettings,
    scorer: Any,
    todo: Sequence[tuple[int, QAItem]],
    batch_size: int,
    max_turns: int,
    commit: Callable[[dict[str, Any]], None],
) -> None:
    """At most ``batch_size`` questions in flight; rows committed (by this thread) as they end."""
    batcher = None
    qwen = sys.modules.get("vmtr.models.qwen")  # a QwenVideoLM means it is imported already
    if qwen is not None and isinstance(lm, qwen.QwenVideoLM):
        from vmtr.models.engine import EpisodeEngine

        batcher = EpisodeEngine(lm, max_episodes=batch_size)
    graph_for = question_graphs(batcher or lm, settings, scorer)
    queue = iter(todo)
    running: set[Future] = set()
    try:
        with ThreadPoolExecutor(batch_size, thread_name_prefix="vmtr-eval") as pool:
            for pos, item in queue:
                running.add(pool.submit(run_item, graph_for, item, pos, max_turns))
                if len(running) >= batch_size:
                    break
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    commit(future.result())
                    nxt = next(queue, None)
                    if nxt is not None:
                        running.add(pool.submit(run_item, graph_for, nxt[1], nxt[0], max_turns))
    finally:
        if batcher is not None:
            batcher.close()


def merge(output: str | Path, items: Sequence[QAItem], settings: EvalSettings) -> dict[str, Any]:
    """The merge step: this run's rows from every shard's file, in dataset order, summarised and
    written as the report files; other runs kept in the folder join the cross-run table/plot."""
    from vmtr.eval.report import summarize, write_report

    output = Path(output)
    key = settings.run_key()
    samples = collect(output, items, key)
    results = summarize(
        samples, settings.benchmark, total=len(items), run_key=key, settings=settings.identity()
    )
    others = []
    by_run: dict[str, dict[str, dict[str, Any]]] = {}
    for row in read_rows(output):
        kept = by_run.setdefault(row["run_key"], {}).get(row["item_id"])
        if kept is None or row["finished"] > kept["finished"]:
            by_run[row["run_key"]][row["item_id"]] = row
    for other, identity in read_runs(output).items():
        if other == key:
            others.append(results)
        elif other in by_run:
            rows = sorted(by_run[other].values(), key=lambda r: r["sample"].get("position", 0))
            benchmark = str(identity.get("benchmark", "?"))
            others.append(
                summarize([r["sample"] for r in rows], benchmark, run_key=other, settings=identity)
            )
    write_report(output, results, samples, others)
    return results
