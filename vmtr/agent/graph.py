"""The Video-MTR agent as a LangGraph state machine.

    prepare -> reason -> (select_segment -> reason)* -> finish

`prepare` probes the video, samples the frame pool and (when the graph shows subtitles) reads the
video's subtitle file; `reason` runs one model turn and parses
it with the strict protocol; `select_segment` turns a valid retrieve into the next user message;
an invalid reply goes straight back to `reason` with an explanation and no new frames. The turn
budget lives in the state (``turn`` against ``max_turns``), never in LangGraph's recursion limit.
The compiled graph takes any checkpointer, streams per-node updates, and works as a node of a
host graph whose state shares the keys ``video``, ``question``, ``options`` and ``answer``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from langgraph.graph import END, START, StateGraph

from vmtr import protocol
from vmtr.agent.state import AgentInput, AgentState, TurnRecord
from vmtr.config import GenerationSettings, ProtocolSettings
from vmtr.models.loading import as_video_lm
from vmtr.models.vlm import VideoLM
from vmtr.tools import video as video_tools
from vmtr.tools.select import first_turn_frames, select_segment
from vmtr.tools.subtitles import Cue, cues_near, read_subtitles

PoolScorer = Callable[[str, Sequence[float], str], Sequence[float]]
"""(video, pool timestamps, question) -> one relevance score per pool frame (segment store)."""


def build_graph(
    model: Any,
    *,
    protocol_settings: ProtocolSettings | None = None,
    generation: GenerationSettings | None = None,
    frame_cache: video_tools.FrameCache | None = None,
    scorer: PoolScorer | None = None,
    guided_retrieve: bool = False,
    first_turn_top: int = 0,
    subtitle_window: float | None = None,
    checkpointer: Any = None,
    name: str = "vmtr",
):
    """Compile the agent graph around ``model``: a `VideoLM`, or a LangChain chat model
    (``ChatOpenAI(base_url=...)``, wrapped by `ChatModelVideoLM`).

    ``frame_cache`` holds decoded frames (pixels never enter the state). ``scorer`` ranks pool
    frames by relevance to the question; with it, ``guided_retrieve`` picks a retrieve's frames by
    score and ``first_turn_top`` mixes that many top frames into turn 1. With
    ``subtitle_window`` (seconds), each turn that shows frames also shows the lines of the input's
    ``subtitles`` file near them (`vmtr.tools.subtitles.cues_near`); None shows no subtitles.
    ``checkpointer`` is any LangGraph checkpointer (in-memory, SQLite, ...); leave it None inside
    a host graph.
    """
    model = as_video_lm(model)
    settings = protocol_settings or ProtocolSettings()
    gen = generation or GenerationSettings()
    cache = frame_cache if frame_cache is not None else video_tools.FrameCache()
    fetch = frame_fetcher(cache, model)

    def prepare(state: AgentState) -> dict[str, Any]:
        question = question_of(state)
        video = str(state["video"])
        info = video_tools.probe(video)
        pool = video_tools.pool_timestamps(
            info, max_frames=settings.pool_size, max_fps=settings.pool_max_fps
        )
        scores = scorer(video, pool, question) if scorer is not None else None
        shown = first_turn_frames(
            len(pool),
            settings.first_turn_frames,
            scores=scores if first_turn_top else None,
            n_top=first_turn_top,
        )
        # Decode the first turn's frames now so a broken video fails before any model call.
        fetch(video, pool)(shown)
        cues = subtitle_cues(state) if subtitle_window is not None else None
        options = protocol.format_options(state.get("options") or []) or None
        messages = first_turn_messages(
            settings,
            pool,
            shown,
            question,
            options,
            subtitles=subtitle_lines(cues, shown, pool, subtitle_window),
        )
        update = fresh_episode(state, question, options, info.duration, pool, messages)
        update["subtitle_cues"] = cues
        if scores is not None:
            update["pool_scores"] = [float(s) for s in scores]
        return update

    def reason(state: AgentState) -> dict[str, Any]:
        turn, pool, messages = state["turn"], state["pool"], state["messages"]
        last = turn >= settings.max_turns
        shown = protocol.frames_in(messages[-1])
        started = time.perf_counter()
        reply = model.generate(
            messages,
            fetch(state["video"], pool),
            settings=gen,
            session=state["run_id"],
        )
        action = protocol.parse_reply(
            reply.text, max_index=len(pool) - 1, options=state.get("options"), last_turn=last
        )
        record = turn_record(turn, shown, pool, reply, action, started)
        return after_reply(state, action, reply.text, record, settings)

    def select(state: AgentState) -> dict[str, Any]:
        start, end = state["pending"]
        pool = state["pool"]
        scores = state.get("pool_scores") if guided_retrieve else None
        chosen = select_segment(start, end, settings.frames_per_retrieve, scores=scores)
        turn = state["turn"] + 1
        message = protocol.user_message(
            turn=turn,
            frames=chosen,
            timestamps=[pool[i] for i in chosen],
            question=state["question"],
            options=state.get("options"),
            pool_size=len(pool),
            settings=settings,
            subtitles=subtitle_lines(state.get("subtitle_cues"), chosen, pool, subtitle_window),
        )
        return {"messages": [*state["messages"], message], "turn": turn, "pending": None}

    return compile_agent(
        _GraphState, model, prepare, reason, select, checkpointer=checkpointer, name=name
    )


def compile_agent(
    state_schema: type,
    model: VideoLM,
    prepare: Callable[[Any], dict[str, Any]],
    reason: Callable[[Any], dict[str, Any]],
    select: Callable[[Any], dict[str, Any]],
    *,
    checkpointer: Any = None,
    name: str = "vmtr",
):
    """Wire prepare -> reason -> (select_segment -> reason)* -> finish, routing on the state's
    ``done`` and ``pending``; every agent graph (standard, long-context) shares this shape."""

    def finish(state: AgentState) -> dict[str, Any]:
        model.end_session(state["run_id"])
        return {"done": True}

    def route(state: AgentState) -> str:
        if state.get("done"):
            return "finish"
        if state.get("pending"):
            return "select_segment"
        return "reason"

    builder = StateGraph(state_schema, input_schema=AgentInput)
    builder.add_node("prepare", prepare)
    builder.add_node("reason", reason)
    builder.add_node("select_segment", select)
    builder.add_node("finish", finish)
    builder.add_edge(START, "prepare")
    builder.add_edge("prepare", "reason")
    builder.add_conditional_edges("reason", route, ["finish", "select_segment", "reason"])
    builder.add_edge("select_segment", "reason")
    builder.add_edge("finish", END)
    return builder.compile(checkpointer=checkpointer, name=name)


def first_turn_messages(
    settings: ProtocolSettings,
    pool: Sequence[float],
    shown: Sequence[int],
    question: str,
    options: Sequence[str] | None,
    subtitles: Sequence[Any] | None = None,
) -> list[protocol.Message]:
    """The conversation an episode opens with: the system message and turn 1's user message,
    showing the pool frames ``shown`` (what the first reply answers; probes that replay a first
    decision build it here so it stays the agent's)."""
    return [
        protocol.system_message(settings),
        protocol.user_message(
            turn=1,
            frames=shown,
            timestamps=[pool[i] for i in shown],
            question=question,
            options=options,
            pool_size=len(pool),
            settings=settings,
            subtitles=subtitles,
        ),
    ]


def frame_fetcher(
    cache: video_tools.FrameCache, model: VideoLM
) -> Callable[[str, Sequence[float]], Callable[[Sequence[int]], list]]:
    """``fetch(video, pool)(indices)``: pool frames from ``cache`` at ``model``'s pixel budget."""
    budget = getattr(model, "pixel_budget", None) or {}

    def fetch(video: str, pool: Sequence[float]) -> Callable[[Sequence[int]], list]:
        def fetch_frames(indices: Sequence[int]) -> list:
            return cache.get_many(video, [pool[i] for i in indices], **budget)

        return fetch_frames

    return fetch


def subtitle_cues(state: AgentState) -> list[list[Any]]:
    """The input's subtitle file as ``[start s, end s, text]`` lines (none without a file); a
    broken file raises ValueError naming it."""
    path = state.get("subtitles")
    if not path:
        return []
    return [[cue.start, cue.end, cue.text] for cue in read_subtitles(path)]


def subtitle_lines(
    cues: Sequence[Sequence[Any]] | None,
    shown: Sequence[int],
    pool: Sequence[float],
    window: float | None,
) -> list[protocol.SubtitleLine] | None:
    """The subtitle lines a turn showing pool frames ``shown`` carries; None when the run shows
    no subtitles."""
    if cues is None or window is None:
        return None
    times = [pool[i] for i in shown]
    near = cues_near([Cue(float(s), float(e), str(t)) for s, e, t in cues], times, window)
    return [(shown[position], cue.start, cue.end, cue.text) for position, cue in near]


def question_of(state: AgentState) -> str:
    """The episode's question, stripped; an empty one is the caller's error."""
    question = (state.get("question") or "").strip()
    if not question:
        raise ValueError("the question is empty")
    return question


def fresh_episode(
    state: AgentState,
    question: str,
    options: list[str] | None,
    duration: float,
    pool: list[float],
    messages: list[dict[str, Any]],
) -> dict[str, Any]:
    """The state a `prepare` node starts an episode with (turn 1, nothing answered yet)."""
    return {
        "run_id": state.get("run_id") or uuid.uuid4().hex,
        "question": question,
        "options": options,
        "duration": duration,
        "pool": pool,
        "messages": messages,
        "turn": 1,
        "pending": None,
        "answer": None,
        "done": False,
    }


def turn_record(
    turn: int,
    shown: Sequence[int],
    pool: Sequence[float],
    reply: Any,
    action: protocol.Action,
    started: float,
    *,
    list_limit: int | None = None,
) -> TurnRecord:
    """The trace of one turn. ``list_limit`` drops the timestamp list when a turn shows more
    frames than that (long-context mode), keeping records small."""
    timestamps = [round(pool[i], 3) for i in shown]
    if list_limit is not None and len(shown) > list_limit:
        timestamps = []
    return {
        "turn": turn,
        "frames": list(shown),
        "timestamps": timestamps,
        "raw": reply.text,
        "action": action.kind,
        "answer": action.answer if isinstance(action, protocol.Answer) else None,
        "retrieve": [action.start, action.end] if isinstance(action, protocol.Retrieve) else None,
        "error": action.error if isinstance(action, protocol.Invalid) else None,
        "error_message": action.message if isinstance(action, protocol.Invalid) else None,
        "seconds": round(time.perf_counter() - started, 4),
        "prompt_tokens": reply.prompt_tokens,
        "new_prompt_tokens": reply.new_prompt_tokens,
        "completion_tokens": completion_tokens(reply),
    }


def completion_tokens(reply: Any) -> int:
    """Tokens a reply generated: the backend's own count (a server's usage) or the ids it kept."""
    counted = getattr(reply, "completion_tokens", None)
    return len(reply.token_ids) if counted is None else int(counted)


def after_reply(
    state: AgentState,
    action: protocol.Action,
    text: str,
    record: TurnRecord,
    settings: ProtocolSettings,
) -> dict[str, Any]:
    """The state update after a reply: end on an answer or a spent budget, queue a retrieve, or
    explain an invalid reply in a new user turn that shows no frames."""
    turn = state["turn"]
    messages = [*state["messages"], protocol.assistant_message(text)]
    update: dict[str, Any] = {"messages": messages, "turns": [record]}
    if isinstance(action, protocol.Answer):
        update.update(answer=action.answer, done=True, stop_reason="answered")
    elif isinstance(action, protocol.Retrieve):
        update["pending"] = [action.start, action.end]
    elif turn >= settings.max_turns:
        update.update(done=True, stop_reason="budget_exhausted")
    else:
        update["turn"] = turn + 1
        update["messages"] = [
            *messages,
            protocol.user_message(
                turn=turn + 1,
                frames=[],
                timestamps=[],
                question=state["question"],
                options=state.get("options"),
                pool_size=len(state["pool"]),
                settings=settings,
                error=action.message,
            ),
        ]
    return update


class _GraphState(AgentState, total=False):
    """The state plus the optional per-pool-frame relevance scores of the segment store."""

    pool_scores: list[float] | None
