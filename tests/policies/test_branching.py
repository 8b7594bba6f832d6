"""Branching at the decision: a replayed first reply is fed token for token (one at a time and
on the episode engine), its continuations form their own group with the replay untrained, and
the update runs that group's shared prefix, replay included, once. Branching at the first
decision: a first reply's text up to its <retrieve> tag is fed, the range sampled after it."""

from __future__ import annotations

import json

import pytest
import torch

from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings
from vmtr.eval.datasets import load_video_mtr_json
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.models.qwen import QwenVideoLM
from vmtr.policies.branching import (
    branch,
    branch_first,
    branch_points,
    branch_stats,
    first_decision_points,
    needs_branch,
    until_retrieve_tag,
)
from vmtr.policies.logprobs import batch_inputs, group_token_logprobs, shared_prefix, token_logprobs
from vmtr.policies.rewards import RewardSettings
from vmtr.policies.rollout import EpisodeJob, rollout, run_jobs, score
from vmtr.policies.run_log import plot_metrics
from vmtr.policies.trainer import RLRecipe, RLSettings
from vmtr.tools.select import relevant_pool_indices

PROTOCOL = ProtocolSettings()
GEN = GenerationSettings(temperature=0.6, top_p=1.0, max_new_tokens=64)


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    """Two colour questions of the recipe's length (seed 32), three sampled episodes each from
    the bundled model (rollout seed 0): on the first its first retrieve misses in some of them,
    so there is a branch point to replay."""
    folder = generate(
        tmp_path_factory.mktemp("colour"),
        SyntheticSettings(n_items=2, seed=32, minutes=2.0, kinds=("colour",)),
    )
    items = load_video_mtr_json(folder)
    lm = QwenVideoLM.load(ModelSettings(model="tiny", device="cpu"))
    with torch.no_grad():
        trajectories = rollout(
            lm, items, group_size=3, seed=0, protocol_settings=PROTOCOL, generation=GEN
        )
    by_id = {item.id: item for item in items}
    score(trajectories, by_id, RewardSettings())
    return folder, lm, by_id, trajectories


def test_a_replayed_reply_is_fed_token_for_token_and_left_untrained(colour):
    _, lm, by_id, trajectories = colour
    points = branch_points(trajectories, by_id)
    assert points, "the fixture needs an episode whose first retrieve missed"
    source = trajectories[points[0]]
    replay = (tuple(source.extra["reply_ids"][0]),)
    job = EpisodeJob(by_id[source.item_id], 9, 12345, replay=replay)
    settings = {"protocol_settings": PROTOCOL, "generation": GEN}
    with torch.no_grad():  # one at a time on the backend, then twice together on the engine
        runs = run_jobs(lm, [job], batched=False, **settings)
        runs += run_jobs(lm, [job, job], batched=True, **settings)
    for traj in runs:
        assert traj.replayed == 1 and traj.group == 9
        assert traj.turns[0]["raw"] == source.turns[0]["raw"]
        assert traj.turns[0]["frames"] == source.turns[0]["frames"]
        # identical tokens up to the first reply sampled afresh: replay and the frames it fetched
        second = traj.turn_spans[1][0]
        assert torch.equal(traj.input_ids[:second], source.input_ids[:second])
        # the replayed reply is recorded with the log-probs the policy gives it, but not trained
        first, last = traj.turn_spans[0]
        assert (first, last) == source.turn_spans[0]
        assert torch.allclose(
            traj.old_logprobs[first : last + 1], source.old_logprobs[first : last + 1], atol=1e-4
        )
        assert int(traj.action_mask[: last + 1].sum()) == 0
        assert int(traj.action_mask.sum()) == sum(b - a + 1 for a, b in traj.turn_spans[1:])
        # what was sampled after it carries the sampling log-probs a whole forward gives
        logp, _ = token_logprobs(lm.model, batch_inputs(lm, [traj]), lm.banned_ids, 0.6)
        mask = traj.action_mask.bool()
        assert torch.allclose(logp[mask], traj.old_logprobs[mask], atol=1e-4)
    # the same seed on either path: the same continuation
    assert len({tuple(t["raw"] for t in traj.turns) for traj in runs}) == 1


def test_branches_are_new_groups_from_first_retrieves_that_missed(colour):
    _, lm, by_id, trajectories = colour
    points = branch_points(trajectories, by_id)
    qualifies = [needs_branch(t, by_id[t.item_id]) for t in trajectories]
    # one per group that has any: the first episode of that group that qualifies
    groups = {t.group for t, q in zip(trajectories, qualifies, strict=True) if q}
    assert len(points) == len(groups) >= 1
    for i in points:
        group = [j for j, t in enumerate(trajectories) if t.group == trajectories[i].group]
        assert qualifies[i] and not any(qualifies[j] for j in group if j < i)
    # what qualifies: a first retrieve, a turn after it, and the needle not yet shown
    for traj, q in zip(trajectories, qualifies, strict=True):
        if len(traj.turns) < 2 or traj.turns[0]["action"] != "retrieve":
            assert not q
            continue
        seen = set(traj.turns[0]["frames"]) | set(traj.turns[1]["frames"])
        relevant = relevant_pool_indices(traj.extra["pool"], by_id[traj.item_id].relevant_windows)
        assert relevant and q == (not relevant <= seen)
    with torch.no_grad():
        branches = branch(
            lm, trajectories, by_id, k=3, seed=0, protocol_settings=PROTOCOL, generation=GEN
        )
    assert len(branches) == 3 * len(points)
    first_new = max(t.group for t in trajectories) + 1
    assert {t.group for t in branches} == set(range(first_new, first_new + len(points)))
    for b, i in enumerate(points):
        group = [t for t in branches if t.group == first_new + b]
        assert all(t.turns[0]["raw"] == trajectories[i].turns[0]["raw"] for t in group)
    assert not any(needs_branch(t, by_id[t.item_id]) for t in branches)  # never a branch's branch
    stats = branch_stats(branches, by_id, RewardSettings())
    assert stats["branch_episodes"] == len(branches) and all(t.reward is not None for t in branches)
    assert branch_stats([], by_id, RewardSettings())["branch_accuracy"] is None
    assert (
        branch(lm, trajectories, by_id, k=0, seed=0, protocol_settings=PROTOCOL, generation=GEN)
        == []
    )

    # the update's shared prefix runs through the replayed reply and the frames it fetched
    group = [t for t in branches if t.group == first_new]
    prefix = shared_prefix(group)
    assert prefix == min(t.turn_spans[1][0] for t in group) > group[0].turn_spans[0][1]
    chunks = [batch_inputs(lm, [t], cached_vision=True) for t in group]
    with torch.no_grad():
        together = group_token_logprobs(lm.model, chunks, prefix, lm.banned_ids, 0.6)
        for inputs, (logp, _) in zip(chunks, together, strict=True):
            whole, _ = token_logprobs(lm.model, inputs, lm.banned_ids, 0.6)
            assert torch.allclose(logp, whole, atol=1e-4)


def one_recipe_step(folder, out, **branching) -> tuple[dict, list[dict]]:
    """One GRPO step of 2 questions x 3 samples with the given branching flags: its metrics and
    its `rollouts.jsonl` rows."""
    settings = RLSettings(
        steps=1,
        prompts_per_step=2,
        samples_per_prompt=3,
        actor_lr=1e-5,
        kl_coef=0.0,
        temperature=0.6,
        top_p=1.0,
        max_new_tokens=64,
        freeze_vision=True,
        protocol=PROTOCOL,
        **branching,
    )
    recipe = RLRecipe(folder, out, "tiny", settings)
    recipe.setup()
    recipe.train()
    [metrics] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return metrics, [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]


def test_a_recipe_step_trains_on_its_branches(colour, tmp_path):
    metrics, rows = one_recipe_step(colour[0], tmp_path, branch=2)
    branched = [r for r in rows if r["replayed"]]
    assert branched, "this step's rollouts need a first retrieve that missed"
    assert metrics["branch_episodes"] == len(branched) == 2 * len({r["group"] for r in branched})
    assert len(rows) - len(branched) == 6  # the step's own episodes, scored apart from branches
    assert {r["replayed"] for r in branched} == {1}
    plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "metrics.png")  # with the branch panels
    assert (tmp_path / "metrics.png").stat().st_size > 0
    with pytest.raises(ValueError, match="branch"):
        RLSettings(algo="ppo", branch=2)


def test_branching_refuses_more_than_one_process(colour, tmp_path, monkeypatch):
    """Branch counts differ between processes, and DDP needs the same backward passes on each."""
    import accelerate

    monkeypatch.setattr(accelerate.Accelerator, "num_processes", property(lambda self: 2))
    recipe = RLRecipe(colour[0], tmp_path, "tiny", RLSettings(branch=2))
    with pytest.raises(ValueError, match="one process"):
        recipe.setup()


def test_a_reply_prefix_is_fed_then_sampling_takes_over_and_the_prefix_stays_untrained(colour):
    _, lm, by_id, trajectories = colour
    source = trajectories[branch_points(trajectories, by_id)[0]]
    first_reply = source.extra["reply_ids"][0]
    tokenizer = lm.processor.tokenizer
    # cut the first reply after its <retrieve> tag: the think text kept, the range sampled anew
    prefix = until_retrieve_tag(first_reply, tokenizer)
    cut = len(prefix)
    assert tokenizer.decode(prefix).endswith("<retrieve>")
    assert "<retrieve>" not in tokenizer.decode(prefix[:-1])
    job = EpisodeJob(by_id[source.item_id], 9, 777, prefix=prefix)
    settings = {"protocol_settings": PROTOCOL, "generation": GEN}
    with torch.no_grad():  # one at a time on the backend, then twice together on the engine
        runs = run_jobs(lm, [job], batched=False, **settings)
        runs += run_jobs(lm, [job, job], batched=True, **settings)
    think = source.turns[0]["raw"].split("<retrieve>")[0]
    for traj in runs:
        assert traj.replayed == 0 and traj.prefixed == len(prefix)
        assert traj.turns[0]["raw"].startswith(think + "<retrieve>")
        assert traj.extra["reply_ids"][0][:cut] == list(prefix)
        # the prefix is recorded with the policy's log-probs but left out of the loss; the rest
        # of the reply, sampled, is trained
        first, last = traj.turn_spans[0]
        assert torch.allclose(
            traj.old_logprobs[first : first + cut],
            source.old_logprobs[first : first + cut],
            atol=1e-4,
        )
        assert int(traj.action_mask[: first + cut].sum()) == 0
        assert int(traj.action_mask[first + cut : last + 1].sum()) == last + 1 - first - cut
        logp, _ = token_logprobs(lm.model, batch_inputs(lm, [traj]), lm.banned_ids, 0.6)
        mask = traj.action_mask.bool()
        assert torch.allclose(logp[mask], traj.old_logprobs[mask], atol=1e-4)
    # the same seed on either path: the same completion
    assert len({tuple(t["raw"] for t in traj.turns) for traj in runs}) == 1


def test_a_prefix_as_long_as_the_reply_budget_is_refused(colour):
    _, lm, by_id, trajectories = colour
    job = EpisodeJob(by_id[trajectories[0].item_id], 0, 1, prefix=(1,) * 64)
    with pytest.raises(ValueError, match="prefix"):
        run_jobs(lm, [job], batched=False, protocol_settings=PROTOCOL, generation=GEN)


def test_first_decision_branches_sample_new_ranges_after_the_same_reading(colour, tmp_path):
    folder, lm, by_id, trajectories = colour
    points = first_decision_points(trajectories, by_id)
    assert len(points) == len({trajectories[i].group for i in points}) >= 1
    hot = GEN.model_copy(update={"temperature": 1.0})
    with torch.no_grad():
        firsts = branch_first(
            lm, trajectories, by_id, k=3, seed=0, protocol_settings=PROTOCOL, generation=hot
        )
    assert len(firsts) == 3 * len(points)
    first_new = max(t.group for t in trajectories) + 1
    tokenizer = lm.processor.tokenizer
    for b, i in enumerate(points):
        group = [t for t in firsts if t.group == first_new + b]
        source = trajectories[i].extra["reply_ids"][0]
        prefix = until_retrieve_tag(source, tokenizer)
        assert tokenizer.decode(prefix).endswith("<retrieve>")
        read = trajectories[i].turns[0]["raw"].split("<retrieve>")[0]
        for traj in group:
            assert traj.prefixed == len(prefix) and traj.replayed == 0
            assert traj.turns[0]["raw"].startswith(read + "<retrieve>")
    # never a branch's branch, and their figures kept apart from the sampled episodes'
    assert first_decision_points(firsts, by_id) == []
    stats = branch_stats(firsts, by_id, RewardSettings(), "first_branch")
    assert stats["first_branch_episodes"] == len(firsts)
    assert until_retrieve_tag(tokenizer("<think>x</think>")["input_ids"], tokenizer) is None

    metrics, rows = one_recipe_step(folder, tmp_path, branch_first=2, branch_first_temperature=1.0)
    branched = [r for r in rows if r["prefixed"]]
    assert metrics["first_branch_episodes"] == len(branched) >= 2
    assert len(rows) - len(branched) == 6
    with pytest.raises(ValueError, match="branch-first"):
        RLSettings(algo="ppo", branch_first=2)
