"""Recorded episodes back into training conversations.

`vmtr eval` writes one line per question to ``samples.jsonl``: the video, question, options, the
right answer and, per turn, the frames shown and the model's raw reply. To train on such an
episode (rejection-sampling fine-tuning on a model's own right answers, or distilling a served
model into a small one) the conversation must be rebuilt exactly as the agent showed it. Rather
than re-implementing the protocol, `replay` runs the agent graph itself with a scripted model that
says the recorded replies, and checks that every turn showed the recorded frames (a different
protocol setting would not).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from vmtr.agent.graph import build_graph
from vmtr.config import ProtocolSettings
from vmtr.eval.datasets import QAItem
from vmtr.models.scripted import ScriptedVideoLM
from vmtr.protocol import frames_in
from vmtr.tools.video import FrameCache


class EpisodeError(ValueError):
    """An episodes file or one of its episodes cannot be trained on; the message says why."""


@dataclass
class Episode:
    """One recorded question and the model's replies, turn by turn."""

    item: QAItem
    replies: list[str]
    frames: list[list[int]]  # pool indices shown on each turn
    correct: bool | None


@dataclass
class Conversation:
    """A replayed episode: the chat messages (frames as pool-index placeholders) and the pool."""

    episode: Episode
    messages: list[dict[str, Any]]
    pool: list[float]


def read_episodes(paths: Sequence[str | Path], *, only_correct: bool = False) -> list[Episode]:
    """The finished episodes of ``samples.jsonl`` files (error rows and empty traces skipped)."""
    episodes = []
    for path in paths:
        for number, row in _rows(Path(path)):
            if row.get("status", "ok") != "ok" or not row.get("turns"):
                continue
            if only_correct and row.get("correct") is not True:
                continue
            try:
                item = QAItem(
                    id=str(row["id"]),
                    video=Path(row["video"]),
                    question=str(row["question"]),
                    options=list(row.get("options") or []),
                    answer=row.get("answer"),
                    categories=dict(row.get("categories") or {}),
                )
                turns = row["turns"]
                replies = [str(t["raw"]) for t in turns]
                frames = [list(t.get("frames") or []) for t in turns]
            except (KeyError, TypeError) as err:
                raise EpisodeError(f"{path}:{number}: not an episode row ({err})") from err
            episodes.append(Episode(item, replies, frames, row.get("correct")))
    return episodes


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise EpisodeError(f"{path}: cannot read ({err.strerror or err})") from err
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise EpisodeError(f"{path}:{number}: not JSON ({err.msg})") from err
        if not isinstance(row, dict):
            raise EpisodeError(f"{path}:{number}: not a JSON object")
        yield number, row


def replay(
    episode: Episode, settings: ProtocolSettings, frame_cache: FrameCache | None = None
) -> Conversation:
    """Rebuild the conversation the agent had, by running its graph on the recorded replies."""
    if not episode.item.video.is_file():
        raise EpisodeError(f"{episode.item.id}: video not found: {episode.item.video}")
    model = ScriptedVideoLM(episode.replies, fetch_frames=False)
    graph = build_graph(model, protocol_settings=settings, frame_cache=frame_cache)
    inputs = {
        "video": str(episode.item.video),
        "question": episode.item.question,
        "options": episode.item.options,
    }
    try:
        state = graph.invoke(inputs, {"recursion_limit": 4 * settings.max_turns + 10})
    except IndexError as err:
        raise EpisodeError(
            f"{episode.item.id}: the recorded replies end before the episode does under these "
            "protocol settings"
        ) from err
    shown = [list(t["frames"]) for t in state["turns"]]
    if shown != episode.frames:
        raise EpisodeError(
            f"{episode.item.id}: replayed turns showed frames {shown}, the record {episode.frames}"
            "; pass the protocol settings the episodes were recorded with"
        )
    return Conversation(episode, list(state["messages"]), list(state["pool"]))


def conversation_frames(
    conversation: Conversation, cache: FrameCache, pixel_budget: dict[str, int]
) -> list[Image.Image]:
    """The images of the conversation's frame placeholders, in order, at the model's budget."""
    pool = conversation.pool
    indices = [i for message in conversation.messages for i in frames_in(message)]
    video = conversation.episode.item.video
    return cache.get_many(video, [pool[i] for i in indices], **pixel_budget)
