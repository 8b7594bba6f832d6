"""Which training questions an RL step asks: drawn at random, optionally passing over those the
policy has solved (a selective rollout).

A GRPO group whose samples all scored the same has no advantage, so its episodes cost a rollout
and move nothing. When they all also answered right, that outcome persists: over the colour RL
runs' rollouts (`recipes/tiny/group_outcomes.py`), 81-88 % of the groups that followed such a
group on the same question were solved the same way again, while after a group that scored
alike but answered wrong, 57-67 % of the next groups varied (those questions still teach).
`PromptPicker` therefore passes over a question whose last group was solved -- every sample
right, every reward equal -- with probability ``skip_solved`` and draws the next one instead
(GRESO's selective rollout in a simple, fixed-probability form). Nothing is passed over for good:
a question the policy has come to fail is asked again sooner or later, and then counts as open.

With ``skip_solved == 0`` the draw is exactly the plain uniform one, so runs without it keep
their prompt stream. The history is rebuilt from ``rollouts.jsonl`` on resume (`replay`), which
the trainer has already trimmed to the checkpoint's step, so a resumed run picks what an
uninterrupted one would have.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from vmtr.eval.datasets import QAItem

Outcome = tuple[str, int, float, bool]
"""(question id, group, total reward, answered right) of one episode."""

TIE = 1e-9
"""Rewards closer than this count as the same score."""


def solved_groups(outcomes: Iterable[Outcome]) -> dict[str, bool]:
    """Per question: whether its group's episodes all answered right with the same reward."""
    groups: dict[tuple[str, int], list[tuple[float, bool]]] = defaultdict(list)
    for item_id, group, total, correct in outcomes:
        groups[(item_id, group)].append((total, correct))
    solved = {}
    for (item_id, _), episodes in groups.items():
        totals = [total for total, _ in episodes]
        solved[item_id] = max(totals) - min(totals) < TIE and all(c for _, c in episodes)
    return solved


class PromptPicker:
    """Draws each step's questions for one process of ``world``."""

    def __init__(
        self, items: Sequence[QAItem], per_step: int, seed: int, skip_solved: float = 0.0
    ) -> None:
        if not 0.0 <= skip_solved < 1.0:
            raise ValueError(f"skip_solved must be in [0, 1), got {skip_solved}")
        self.items, self.per_step, self.seed = list(items), per_step, seed
        self.skip_solved = skip_solved
        self.solved: dict[str, bool] = {}
        self.passed_over = 0
        """How many candidates the last `pick` passed over."""

    def pick(self, step: int, rank: int = 0, world: int = 1) -> list[QAItem]:
        """This process's questions for ``step`` (0-based): ``per_step // world`` of them."""
        rng = random.Random(self.seed * 7_919 + step)
        share = max(1, self.per_step // world)
        self.passed_over = 0
        if self.skip_solved == 0.0:
            picks = rng.sample(self.items, min(len(self.items), share * world))
            return picks[rank::world][:share]
        order = rng.sample(self.items, len(self.items))[rank::world]
        coin = random.Random(f"{self.seed}:{step}:{rank}")
        chosen: list[QAItem] = []
        passed: list[QAItem] = []
        for item in order:
            if len(chosen) == share:
                break
            if self.solved.get(item.id, False) and coin.random() < self.skip_solved:
                passed.append(item)
            else:
                chosen.append(item)
        self.passed_over = len(passed)
        # every question passed over: the step still asks its full share
        return chosen + passed[: share - len(chosen)]

    def record(self, outcomes: Iterable[Outcome]) -> None:
        """Remember which of a step's questions were solved."""
        self.solved.update(solved_groups(outcomes))

    def replay(self, rollouts: Path) -> None:
        """Rebuild the history from a run's ``rollouts.jsonl`` (one line per episode), step by
        step, so a later step's outcome overrides an earlier one's."""
        if not rollouts.exists():
            return
        by_step: dict[int, list[Outcome]] = defaultdict(list)
        for line in rollouts.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            total = float(sum(row["reward"] or [0.0]))
            by_step[row["step"]].append((row["item"], row["group"], total, bool(row["correct"])))
        for step in sorted(by_step):
            self.record(by_step[step])
