"""Scripted protocol episodes: honest replies, random or aimed retrieves, the answer forms."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from recipes.tiny.curriculum import episodes, frames
from vmtr import protocol
from vmtr.eval.datasets import load_video_mtr_json
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.tools.select import first_turn_frames, select_segment


def test_trajectories_follow_the_protocol_and_round_trip(trajectories) -> None:
    for c, traj in trajectories():
        n = len(c.pool)
        settings = traj.settings
        needed = {x["pool_index"] for x in c.item.extra["needles"]}
        users = [m for m in traj.messages if m["role"] == "user"]
        replies = [m for m in traj.messages if m["role"] == "assistant"]
        assert traj.messages[0] == protocol.system_message(settings)
        assert len(users) == len(replies) == len(traj.actions) <= settings.max_turns
        # Frames: the agent's first-turn rule, then select_segment of each retrieve.
        expected = first_turn_frames(n, settings.first_turn_frames)
        seen: set[int] = set()
        for turn, (user, reply, action, guess) in enumerate(
            zip(users, replies, traj.actions, traj.guesses, strict=True), start=1
        ):
            assert protocol.frames_in(user) == expected
            seen |= set(expected)
            last = turn == settings.max_turns
            text = reply["content"][0]["text"]
            parsed = protocol.parse_reply(
                text, max_index=n - 1, options=c.item.options, last_turn=last
            )
            assert parsed == action
            if isinstance(action, protocol.Answer):
                assert action.answer == c.item.answer
                # Answer only with the evidence shown, or on the last turn, flagged as a guess.
                assert needed <= seen or last
                assert guess == (not needed <= seen)
                assert ("Guessing" in text) == guess
            else:
                assert isinstance(action, protocol.Retrieve) and not last
                assert not needed <= seen
                expected = select_segment(action.start, action.end, settings.frames_per_retrieve)
        assert isinstance(traj.actions[-1], protocol.Answer)


def test_think_text_only_names_needles_that_were_shown(trajectories) -> None:
    for c, traj in trajectories(n_seeds=3):
        shown: set[int] = set()
        users = [m for m in traj.messages if m["role"] == "user"]
        replies = [m for m in traj.messages if m["role"] == "assistant"]
        for user, reply in zip(users, replies, strict=True):
            shown |= set(protocol.frames_in(user))
            text = reply["content"][0]["text"]
            for needle in c.item.extra["needles"]:
                named = f"frame {needle['pool_index']} {needle['colour']} {needle['shape']}"
                assert (named in text) == (needle["pool_index"] in shown)


def test_needles_are_named_frame_first_and_the_first_reply_check_reads_that(cached) -> None:
    needles = [
        {"pool_index": 12, "colour": "red", "shape": "circle"},
        {"pool_index": 40, "colour": "blue", "shape": "square"},
    ]
    shown = {12, 13, 40}
    assert episodes.describe_needles(needles, shown) == (
        "Seen: frame 12 red circle, frame 40 blue square."
    )
    assert episodes.describe_needles(needles, {13}) == "Seen: no shapes."
    c = cached[0]
    item = dataclasses.replace(c.item, extra=c.item.extra | {"needles": needles})
    reply = "<think>Seen: frame 12 red circle, frame 40 blue square.</think><answer>A</answer>"
    assert episodes.reads_first_turn(item, [{"frames": sorted(shown), "raw": reply}]) is True
    wrong = reply.replace("blue", "green")
    assert episodes.reads_first_turn(item, [{"frames": sorted(shown), "raw": wrong}]) is False
    assert episodes.reads_first_turn(item, [{"frames": [13], "raw": reply}]) is None


def test_think_text_names_only_border_frames_that_were_shown(trajectories) -> None:
    for c, traj in trajectories(n_seeds=3):
        first, last = c.item.extra["cue_pool_indices"]
        shown: set[int] = set()
        users = [m for m in traj.messages if m["role"] == "user"]
        replies = [m for m in traj.messages if m["role"] == "assistant"]
        for user, reply in zip(users, replies, strict=True):
            shown |= set(protocol.frames_in(user))
            framed = sorted(i for i in shown if first <= i <= last)
            text = reply["content"][0]["text"]
            if not framed:
                assert text.startswith("<think>No border.")
            elif len(framed) == 1:
                assert text.startswith(f"<think>Border: frame {framed[0]}.")
            else:
                assert text.startswith(f"<think>Border: frames {framed[0]} to {framed[-1]}.")


def test_retrieve_ranges_are_random_not_the_oracle(trajectories) -> None:
    ranges, hits = [], 0
    for c, traj in trajectories(n_seeds=10):
        needed = {x["pool_index"] for x in c.item.extra["needles"]}
        for action in traj.actions:
            if isinstance(action, protocol.Retrieve):
                ranges.append((action.start, action.end))
                hits += needed <= set(range(action.start, action.end + 1))
    # An oracle would cover the needles every time; random ranges rarely do.
    assert len(set(ranges)) > 10
    assert hits < len(ranges) / 2


def test_block_ranges_are_aligned_and_cover_the_pool() -> None:
    rng = random.Random(0)
    ranges = {episodes.random_range(rng, 60, (8, 16), block=8) for _ in range(400)}
    assert ranges == {(s, min(59, s + 7)) for s in range(0, 60, 8)}
    free = {episodes.random_range(rng, 60, (8, 16)) for _ in range(400)}
    assert all(8 <= e - s + 1 <= 16 and 0 <= s <= e <= 59 for s, e in free)


def test_label_ranges_copy_first_turn_labels_and_never_aim(cached) -> None:
    rng = random.Random(0)
    labels = [0, 4, 8, 13, 17]
    ranges = {episodes.label_range(rng, labels) for _ in range(300)}
    assert ranges == {(0, 4), (4, 8), (8, 13), (13, 17), (0, 8), (4, 13), (8, 17)}
    with pytest.raises(episodes.CurriculumError):
        episodes.label_range(rng, [3])
    # with a block: N frames from one label, the last clipped to the pool
    windows = {episodes.label_range(rng, labels, 8, 20) for _ in range(300)}
    assert windows == {(0, 7), (4, 11), (8, 15), (13, 19), (17, 19)}
    # In scripted episodes every retrieve spans two overview labels, wherever the needles are.
    hits = 0
    for c in cached:
        overview = set(first_turn_frames(len(c.pool), episodes.MULTI_TURN.first_turn_frames))
        needles = {x["pool_index"] for x in c.item.extra["needles"]}
        for seed in range(20):
            traj = episodes.plan_trajectory(
                c.item, c.pool, episodes.MULTI_TURN, random.Random(seed), retrieve_labels=True
            )
            for action in traj.actions:
                if isinstance(action, protocol.Retrieve):
                    assert {action.start, action.end} <= overview
                    hits += any(action.start <= i <= action.end for i in needles)
            windows = episodes.plan_trajectory(
                c.item,
                c.pool,
                episodes.MULTI_TURN,
                random.Random(seed),
                retrieve_block=8,
                retrieve_labels=True,
            )
            for action in windows.actions:
                if isinstance(action, protocol.Retrieve):
                    assert action.start in overview
                    assert action.end == min(len(c.pool) - 1, action.start + 7)
    assert hits > 0


def test_retrieve_again_sets_how_often_a_missed_retrieve_is_followed_by_another(cached) -> None:
    """Below 1, episodes whose first retrieve missed the needle answer next turn, guessing;
    at 1 they keep retrieving while turns remain (and draw nothing more)."""
    counts: dict[float, list[int]] = {0.0: [], 0.5: [], 1.0: []}
    for share, turns in counts.items():
        for c in cached:
            for seed in range(30):
                traj = episodes.plan_trajectory(
                    c.item,
                    c.pool,
                    episodes.MULTI_TURN,
                    random.Random(seed),
                    retrieve_labels=True,
                    retrieve_again=share,
                )
                retrieves = sum(isinstance(a, protocol.Retrieve) for a in traj.actions)
                turns.append(retrieves)
                if retrieves and traj.guesses[-1]:  # answered without the evidence
                    assert len(traj.actions) == (2 if share == 0 else len(traj.actions))
                if share == 1.0:
                    same = episodes.plan_trajectory(
                        c.item,
                        c.pool,
                        episodes.MULTI_TURN,
                        random.Random(seed),
                        retrieve_labels=True,
                    )
                    assert same.actions == traj.actions
    assert max(counts[0.0]) == 1 and max(counts[1.0]) == 2
    twice = {share: sum(t == 2 for t in turns) for share, turns in counts.items()}
    assert twice[0.0] == 0 < twice[0.5] < twice[1.0]


def test_several_needle_colour_items_need_and_answer_only_the_asked_one(tmp_path: Path) -> None:
    settings = SyntheticSettings(
        n_items=12, seed=3, minutes=1.0, kinds=("colour",), colour_needles=3
    )
    generate(tmp_path, settings)
    items = [
        i for i in load_video_mtr_json(tmp_path / "annotations.json") if len(i.extra["needles"]) > 1
    ]
    assert items
    budget = {"max_pixels": 112 * 112, "min_pixels": 56 * 56, "factor": 28}
    for item in items:
        asked = episodes.needed_needles(item)
        assert len(asked) == 1
        body = episodes.answer_body(item, "needle")
        assert body == f" {asked[0]['colour']} {asked[0]['shape']}"
        assert protocol.option_by_text(body, item.options) == item.answer
        pool = frames.CachedItem(item, tmp_path, budget).pool
        for seed in range(10):
            traj = episodes.plan_trajectory(
                item, pool, episodes.MULTI_TURN, random.Random(seed), answer_form="needle"
            )
            seen = set(traj.frames)
            if asked[0]["pool_index"] in seen and not traj.guesses[-1]:
                # it answered once the asked needle was shown, other needles or not
                assert traj.actions[-1] == protocol.Answer(item.answer, traj.actions[-1].think)


def test_aimed_ranges_bracket_the_named_border_with_first_turn_labels() -> None:
    labels = [0, 4, 8, 13, 17, 21, 25, 29]
    assert episodes.aimed_range(labels, [17, 21], 0) == (17, 25)  # first border .. label after
    assert episodes.aimed_range(labels, [21, 17, 18, 19], 1) == (13, 17)  # label before .. first
    assert episodes.aimed_range(labels, [], 0) is None
    assert episodes.aimed_range(labels, [0, 4], 1) == (0, 0)  # nothing before the first label
    assert episodes.aimed_range(labels, [25, 29], 0) == (25, 29)  # nothing after the last


def test_aimed_episodes_follow_the_border_not_the_needles(cached) -> None:
    aimed = 0
    for c in cached:
        overview = first_turn_frames(len(c.pool), episodes.MULTI_TURN.first_turn_frames)
        cue = c.item.extra["cue_pool_indices"]
        moved = dataclasses.replace(
            c.item,
            extra={
                **c.item.extra,
                "needles": [{**x, "pool_index": cue[1]} for x in c.item.extra["needles"]],
            },
        )
        for seed in range(4):
            traj = episodes.plan_trajectory(
                c.item, c.pool, episodes.MULTI_TURN, random.Random(seed), aim=True
            )
            seen: set[int] = set()
            users = [m for m in traj.messages if m["role"] == "user"]
            retrieves = 0
            for user, action in zip(users, traj.actions, strict=False):
                seen |= set(protocol.frames_in(user))
                if isinstance(action, protocol.Retrieve):
                    border = [i for i in seen if cue[0] <= i <= cue[1]]
                    assert (action.start, action.end) == episodes.aimed_range(
                        overview, border, retrieves
                    )
                    retrieves += 1
                    aimed += 1
            # flagged aimed exactly when a retrieve was (so only aimed digits get the weight)
            assert traj.aimed == (retrieves > 0)
            # the first retrieve reads the border only: needles elsewhere leave it unchanged
            other = episodes.plan_trajectory(
                moved, c.pool, episodes.MULTI_TURN, random.Random(seed), aim=True
            )
            first, again = traj.actions[0], other.actions[0]
            if isinstance(first, protocol.Retrieve) and isinstance(again, protocol.Retrieve):
                assert (first.start, first.end) == (again.start, again.end)
    assert aimed > 0


def test_needle_answers_repeat_the_reading_and_parse_to_the_right_option(cached) -> None:
    kinds, guessed = set(), set()
    for seed, c in enumerate(cached * 8):
        item = c.item
        kind = item.categories["kind"]
        kinds.add(kind)
        body = episodes.answer_body(item, "needle")
        first = min(episodes.needles_of(item), key=lambda n: n["pool_index"])
        if kind == "count":
            assert body == f" {len(episodes.needles_of(item))}"
        else:  # colour, shape and order all answer with the (first) needle's own words
            assert body == f" {first['colour']} {first['shape']}"
        assert protocol.option_by_text(body, item.options) == item.answer
        settings = episodes.SINGLE_16 if seed % 2 else episodes.MULTI_TURN
        traj = episodes.plan_trajectory(
            item, c.pool, settings, random.Random(seed), answer_form="needle"
        )
        reply = traj.messages[-1]["content"]
        reply = reply if isinstance(reply, str) else reply[0]["text"]
        if traj.guesses[-1]:  # nothing seen to name: a random letter, not the answer's
            letter = traj.actions[-1].answer
            guessed.add(letter)
            assert reply.endswith(f" Guessing.</think><answer>{letter}</answer>")
        else:
            assert traj.actions[-1] == protocol.Answer(item.answer, traj.actions[-1].think)
            assert reply.endswith(f"</think><answer>{body}</answer>")
            if kind != "count":  # the answer repeats words the <think> just wrote
                assert f"{first['colour']} {first['shape']}" in reply.split("</think>")[0]
    assert kinds == {"colour", "shape", "order", "count"}
    assert len(guessed) > 1
