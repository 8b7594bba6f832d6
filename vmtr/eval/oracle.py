"""Oracle aim: how far a perfect choice of segments could take a given model.

A multi-turn policy does two jobs: it chooses which frames to look at (where to retrieve, when to
stop) and it reads what it is shown. RL on the gated bi-level reward can only improve the first
job within a run's few thousand episodes; the second is the model's. `OracleAim` wraps any
`VideoLM` and rewrites the range of every retrieve the model writes to the span of the question's
relevant frames, leaving the model's own reasoning, its decision to retrieve or answer, and its
reading untouched. The accuracy it reaches is therefore an upper bound on what better aiming alone
can buy that model, which is the question to ask before spending compute on RL.

It is for evaluation only: the rewritten reply no longer matches the sampled token ids, so its
trajectories must never be trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vmtr.config import GenerationSettings, ProtocolSettings
from vmtr.models.vlm import FrameFetcher, Generation, VideoLM
from vmtr.protocol import RETRIEVE_RE


def relevant_span(
    relevant: Iterable[int], width: int = 8, max_index: int = 63
) -> tuple[int, int] | None:
    """A pool-index range holding every relevant frame (None when there is none).

    The tightest span is widened, about its centre and inside ``0..max_index``, to ``width``
    frames, the number a retrieve shows: a one-frame range is also a perfect aim, but a model
    that has only ever been shown retrieves of several frames reads a single one badly (the
    bundled tiny model answered 17.5 % of the README's items so, against 41 % on its own aim),
    and the bound would then measure that shift instead of aiming. A span already wider than
    ``width`` is kept; its frames are then spread over it as any retrieve's are.
    """
    indices = sorted(set(relevant))
    if not indices:
        return None
    first, last = indices[0], indices[-1]
    missing = width - (last - first + 1)
    if missing > 0:
        first = max(0, first - missing // 2)
        last = min(max_index, first + width - 1)
        first = max(0, last - width + 1)
    return first, last


def aim_reply(text: str, span: tuple[int, int]) -> str:
    """``text`` with the body of its retrieve tag replaced by ``span``; other replies unchanged.

    A malformed range ("2, 4, 4") is replaced too: the model chose to retrieve, the oracle only
    says where. Answers and replies of no valid shape are left as they are, so the protocol still
    judges them.
    """
    match = RETRIEVE_RE.match(text)
    if match is None:
        return text
    start, end = match.span(2)
    return f"{text[:start]}{span[0]}, {span[1]}{text[end:]}"


class OracleAim:
    """A `VideoLM` whose retrieves always ask for the relevant frames (see the module doc)."""

    def __init__(
        self, lm: VideoLM, relevant: Iterable[int], width: int = 8, max_index: int = 63
    ) -> None:
        self.lm = lm
        self.name = f"{lm.name}+oracle-aim"
        self.span = relevant_span(relevant, width, max_index)
        self.rewritten = 0  # replies whose range was replaced, for reports

    @classmethod
    def for_question(
        cls,
        lm: VideoLM,
        video: str | Path,
        windows: Sequence[Sequence[float]],
        protocol: ProtocolSettings,
    ) -> OracleAim:
        """Aimed at the pool frames inside ``windows`` (seconds) of ``video``, with the pool
        and retrieve width that ``protocol`` gives the agent."""
        from vmtr.tools.select import relevant_pool_indices
        from vmtr.tools.video import pool_timestamps, probe

        pool = pool_timestamps(
            probe(video), max_frames=protocol.pool_size, max_fps=protocol.pool_max_fps
        )
        relevant = relevant_pool_indices(pool, windows)
        return cls(lm, relevant, protocol.frames_per_retrieve, len(pool) - 1)

    def __getattr__(self, name: str) -> Any:
        # pixel_budget and any other backend attribute the agent asks for
        return getattr(self.lm, name)

    def generate(
        self,
        messages: Sequence[dict[str, Any]],
        frames: FrameFetcher,
        *,
        settings: GenerationSettings,
        session: str | None = None,
    ) -> Generation:
        reply = self.lm.generate(messages, frames, settings=settings, session=session)
        if self.span is None:
            return reply
        text = aim_reply(reply.text, self.span)
        if text == reply.text:
            return reply
        self.rewritten += 1
        return dataclasses.replace(reply, text=text)

    def end_session(self, session: str) -> None:
        self.lm.end_session(session)
