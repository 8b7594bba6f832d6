"""Episode speed: the episode engine against one episode at a time, side by side in one process.

On the bundled tiny model and a fixed generated synthetic set it times
(a) one RL step's rollouts (8 prompts x 4 samples, 3 turns, temperature 1) one episode at a time
    and on the engine;
(b) one whole GRPO step (rollouts + update), old (sequential episodes, one trajectory per update
    forward) and new (engine, the update's default micro-batch), with the time split;
(c) `vmtr eval` questions per minute at batch 8 against batch 1 (greedy);
(d) the update with the vision tower fixed (``--freeze-vision``): images replayed from the
    engine's embeddings against the tower run again on every trajectory's pixels (alternating,
    best of two each, same trajectories);
(e) the GRPO update leaving out groups whose samples all scored the same (no advantage) against
    running every trajectory (alternating, best of two each, same trajectories; the share of
    trajectories it trains on is printed: it depends on the policy and the data);
(f) the update with the vision tower fixed running each GRPO group's shared first prompt once
    against once per sample (alternating, best of two each, same trajectories).
Each pair runs back to back with the same seeds, so the ratios hold on a loaded machine; the
absolute times do not. The last line is
``rollout_speed: rollout_ratio=R step_ratio=S eval_ratio=E frozen_update_ratio=F
flat_drop_ratio=D shared_prompt_ratio=P`` (new speed over old; ``--parts`` runs some of them,
e.g. ``--parts de``).

    python benchmarks/rollout_speed.py [--threads 1] [--prompts 8] [--samples 4] [--eval-n 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings
from vmtr.eval.datasets import load_synthetic
from vmtr.eval.runner import EvalSettings, collect, run
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.policies.rollout import rollout, score
from vmtr.policies.trainer import RLRecipe, RLSettings

PROTOCOL = ProtocolSettings(max_turns=3)


def timed_rollout(lm, items, args, *, batched: bool, stats=None) -> tuple[float, list]:
    started = time.perf_counter()
    trajectories = rollout(
        lm,
        items,
        group_size=args.samples,
        seed=11,
        protocol_settings=PROTOCOL,
        generation=GenerationSettings(
            temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens
        ),
        batched=batched,
        engine_stats=stats,
    )
    return time.perf_counter() - started, trajectories


def timed_step(recipe: RLRecipe, items, args, *, batched: bool) -> dict[str, float]:
    """One GRPO step as `RLRecipe.train_step` runs it, with the rollout path chosen."""
    started = time.perf_counter()
    seconds, trajectories = timed_rollout(recipe.lm, items, args, batched=batched)
    score(trajectories, recipe.by_id, recipe.s.reward)
    default = recipe.micro_batch  # the new path: the trainer's own (8 on a GPU, 1 on CPU)
    recipe.micro_batch = default if batched else 1
    update_started = time.perf_counter()
    recipe.policy.train()
    recipe.update(trajectories)
    recipe.micro_batch = default
    recipe.policy.eval()
    update = time.perf_counter() - update_started
    return {"rollout": seconds, "update": update, "total": time.perf_counter() - started}


def alternating_updates(
    root: Path,
    prompts,
    args,
    settings: RLSettings,
    variant: Callable[[RLRecipe, bool], None],
) -> tuple[dict[bool, float], dict[str, float], int]:
    """One step's trajectories (sampled once), updated from fresh copies of the policy made the
    old way (``variant(recipe, False)``) and the new way (``True``), alternating, best of two
    each. Returns the seconds per way, the new way's losses and the trajectory count."""
    recipe = RLRecipe(root / "data", root / "rl-update", "tiny", settings)
    recipe.setup()
    recipe.policy.eval()
    _, trajectories = timed_rollout(recipe.lm, prompts, args, batched=True)
    score(trajectories, recipe.by_id, settings.reward)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    losses: dict[str, float] = {}
    for new in (False, True, False, True):
        fresh = RLRecipe(root / "data", root / "rl-update", "tiny", settings)
        fresh.setup()
        variant(fresh, new)
        fresh.policy.train()
        started = time.perf_counter()
        got = fresh.update(trajectories)
        seconds[new].append(time.perf_counter() - started)
        losses = got if new else losses
    return {new: min(times) for new, times in seconds.items()}, losses, len(trajectories)


def toggled(setting: str) -> Callable[[RLRecipe, bool], None]:
    """An `alternating_updates` variant that turns the boolean RLSettings field ``setting`` off
    (old way) or on (new way)."""

    def variant(recipe: RLRecipe, new: bool) -> None:
        recipe.s = recipe.s.model_copy(update={setting: new})

    return variant


def frozen_update_ratio(root: Path, prompts, args) -> float:
    """(d): the tower's embeddings replayed against the tower run again; pixels' seconds over
    replayed seconds."""

    def replay(recipe: RLRecipe, cached: bool) -> None:
        recipe.cached_vision = cached

    settings = RLSettings(actor_lr=1e-5, protocol=PROTOCOL, freeze_vision=True, share_prompt=False)
    seconds, _, _ = alternating_updates(root, prompts, args, settings, replay)
    pixels, replayed = seconds[False], seconds[True]
    print(
        f"(d) update, tower fixed: pixels {pixels:6.1f} s   replayed embeddings {replayed:6.1f} s"
    )
    return pixels / replayed


def flat_drop_ratio(root: Path, prompts, args) -> float:
    """(e): every trajectory against the flat groups left out; all-trajectories seconds over
    dropped seconds."""
    settings = RLSettings(actor_lr=1e-5, protocol=PROTOCOL)
    seconds, losses, n = alternating_updates(
        root, prompts, args, settings, toggled("drop_flat_groups")
    )
    every, dropped = seconds[False], seconds[True]
    print(
        f"(e) update: every trajectory {every:6.1f} s   flat groups left out {dropped:6.1f} s "
        f"(trained on {losses['trained_share']:.0%} of {n})"
    )
    return every / dropped


def shared_prompt_ratio(root: Path, prompts, args) -> float:
    """(f): the vision tower fixed, a group's shared first prompt run once in the update against
    once per sample; per-sample seconds over shared seconds."""
    settings = RLSettings(actor_lr=1e-5, protocol=PROTOCOL, freeze_vision=True)
    seconds, losses, n = alternating_updates(root, prompts, args, settings, toggled("share_prompt"))
    whole, shared = seconds[False], seconds[True]
    print(
        f"(f) update, tower fixed: every sample whole {whole:6.1f} s   group prompt once "
        f"{shared:6.1f} s (trained on {losses['trained_share']:.0%} of {n})"
    )
    return whole / shared


def timed_eval(items, lm, out: Path, batch: int, args) -> tuple[float, list[dict]]:
    settings = EvalSettings(
        benchmark="synthetic",
        model=ModelSettings(model="tiny", device="cpu"),
        generation=GenerationSettings(temperature=0, max_new_tokens=args.max_new_tokens),
    )
    started = time.perf_counter()
    outcome = run(items, settings, out, lm, batch_size=batch)
    seconds = time.perf_counter() - started
    if outcome.errors:
        raise SystemExit(f"{outcome.errors} question(s) failed: {outcome.unexpected[:1]}")
    return seconds, collect(out, items, settings.run_key())


def engine_ratios(root: Path, items, prompts, args) -> dict[str, float]:
    """(a)-(c), the episode engine against one episode at a time, as ``args.parts`` picks."""
    recipe = RLRecipe(
        root / "data", root / "rl", "tiny", RLSettings(actor_lr=1e-5, protocol=PROTOCOL)
    )
    recipe.setup()
    recipe.policy.eval()
    lm = recipe.lm
    ratios: dict[str, float] = {}
    timed_rollout(lm, prompts[:1], args, batched=False)  # first-call costs out of the way
    if "a" in args.parts:
        old_s, old_traj = timed_rollout(lm, prompts, args, batched=False)
        stats: dict[str, float] = {}
        new_s, new_traj = timed_rollout(lm, prompts, args, batched=True, stats=stats)
        same = sum(
            torch.equal(a.input_ids, b.input_ids) for a, b in zip(old_traj, new_traj, strict=True)
        )
        episodes = len(old_traj)
        tokens = sum(float(t.action_mask.sum()) for t in old_traj)
        turns = sum(len(t.turns) for t in old_traj) / episodes
        print(f"(a) rollouts: {episodes} episodes, {turns:.2f} turns, {tokens:.0f} sampled tokens")
        print(f"    one at a time {old_s:7.1f} s   engine {new_s:7.1f} s   x{old_s / new_s:.2f}")
        print(f"    same token sequences: {same}/{episodes}")
        print(
            f"    engine worker: prefill {stats['prefill_s']:.1f} s (vision "
            f"{stats['vision_s']:.1f} s, {stats['frames_encoded']:.0f} frames; "
            f"{stats['prefilled_tokens']:.0f} prompt tokens), decode {stats['decode_s']:.1f} s "
            f"({stats['forwards']:.0f} forwards, {stats['rows']:.0f} rows)"
        )
        ratios["rollout_ratio"] = old_s / new_s
    if "b" in args.parts:
        old_step = timed_step(recipe, prompts, args, batched=False)
        new_step = timed_step(recipe, prompts, args, batched=True)
        for name, step in (("old", old_step), ("new", new_step)):
            print(
                f"(b) {name} step: rollouts {step['rollout']:6.1f} s  update {step['update']:6.1f} s"
                f"  total {step['total']:6.1f} s"
            )
        step_ratio = old_step["total"] / new_step["total"]
        ratios["step_ratio"] = step_ratio
    if "c" in args.parts:
        eval_items = items[: args.eval_n]
        timed_eval(eval_items[:1], lm, root / "warmup", 1, args)
        one_s, one = timed_eval(eval_items, lm, root / "one", 1, args)
        many_s, many = timed_eval(eval_items, lm, root / "many", args.eval_batch, args)
        agree = sum(a["prediction"] == b["prediction"] for a, b in zip(one, many, strict=True))
        print(
            f"(c) eval: batch 1 {60 * len(eval_items) / one_s:6.1f} q/min, batch "
            f"{args.eval_batch} {60 * len(eval_items) / many_s:6.1f} q/min; same answers "
            f"{agree}/{len(eval_items)}"
        )
        ratios["eval_ratio"] = one_s / many_s
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--eval-n", type=int, default=16)
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--minutes", type=float, default=1.0, help="length of each video")
    parser.add_argument(
        "--parts", default="abcdef", help="Which of the comparisons (a)-(f) to run (default all)."
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="vmtr-rollout-speed-") as tmp:
        root = Path(tmp)
        n = max(args.prompts, args.eval_n)
        generate(root / "data", SyntheticSettings(n_items=n, seed=4242, minutes=args.minutes))
        items = load_synthetic(root / "data")
        prompts = items[: args.prompts]
        ratios: dict[str, float] = {}
        if {"a", "b", "c"} & set(args.parts):
            ratios.update(engine_ratios(root, items, prompts, args))
        if "d" in args.parts:
            ratios["frozen_update_ratio"] = frozen_update_ratio(root, prompts, args)
        if "e" in args.parts:
            ratios["flat_drop_ratio"] = flat_drop_ratio(root, prompts, args)
        if "f" in args.parts:
            ratios["shared_prompt_ratio"] = shared_prompt_ratio(root, prompts, args)
    print("rollout_speed: " + " ".join(f"{k}={v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
