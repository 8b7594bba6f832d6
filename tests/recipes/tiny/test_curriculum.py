"""The tiny model's curriculum: honest scripted trajectories, exact encoding, loss goes down."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from typer.testing import CliRunner

from recipes.tiny.curriculum import __main__ as curriculum_cli
from recipes.tiny.curriculum import config, drills, episodes, frames, trainer, weights
from vmtr import protocol
from vmtr.eval.datasets import load_video_mtr_json
from vmtr.eval.runner import read_rows, read_runs
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.models.tiny import build_tiny
from vmtr.policies import conversation
from vmtr.policies.tags import tag_interior
from vmtr.tools.select import first_turn_frames, select_segment

ALL_SETTINGS = [episodes.MULTI_TURN, episodes.SINGLE_16, episodes.SINGLE_32]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synth")
    generate(folder, SyntheticSettings(n_items=4, seed=3, minutes=1.0))
    return folder


@pytest.fixture(scope="module")
def items(data_dir: Path):
    return load_video_mtr_json(data_dir / "annotations.json")


@pytest.fixture(scope="module")
def cached(items, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("frames")
    budget = {"max_pixels": 112 * 112, "min_pixels": 56 * 56, "factor": 28}
    return [frames.CachedItem(item, cache, budget) for item in items]


@pytest.fixture(scope="module")
def tiny(items, tmp_path_factory: pytest.TempPathFactory):
    folder = build_tiny(
        tmp_path_factory.mktemp("tiny"), seed=0, extra_texts=trainer.corpus_texts(items)
    )
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    return processor, model


def _trajectories(cached, n_seeds: int = 8):
    for c in cached:
        for settings in ALL_SETTINGS:
            for seed in range(n_seeds):
                yield c, episodes.plan_trajectory(c.item, c.pool, settings, random.Random(seed))


def test_trajectories_follow_the_protocol_and_round_trip(cached) -> None:
    for c, traj in _trajectories(cached):
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


def test_think_text_only_names_needles_that_were_shown(cached) -> None:
    for c, traj in _trajectories(cached, n_seeds=3):
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


def test_think_text_names_only_border_frames_that_were_shown(cached) -> None:
    for c, traj in _trajectories(cached, n_seeds=3):
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


def test_retrieve_ranges_are_random_not_the_oracle(cached) -> None:
    ranges, hits = [], 0
    for c, traj in _trajectories(cached, n_seeds=10):
        needed = {x["pool_index"] for x in c.item.extra["needles"]}
        for action in traj.actions:
            if isinstance(action, protocol.Retrieve):
                ranges.append((action.start, action.end))
                hits += needed <= set(range(action.start, action.end + 1))
    # An oracle would cover the needles every time; random ranges rarely do.
    assert len(set(ranges)) > 10
    assert hits < len(ranges) / 2


def test_encoding_labels_only_the_assistant_and_keeps_mm_token_types(cached, tiny) -> None:
    processor, _ = tiny
    tok = processor.tokenizer
    found_guess = False
    for c, traj in _trajectories(cached, n_seeds=2):
        if traj.settings is not episodes.MULTI_TURN:
            continue
        enc = conversation.encode_conversation(
            processor, traj.messages, c.images(traj.frames), traj.guesses
        )
        ids, labels, mm = enc["input_ids"], enc["labels"], enc["mm_token_type_ids"]
        assert mm.shape == ids.shape and int((mm == 1).sum()) > 0
        assert enc["image_grid_thw"].shape[0] == len(traj.frames)
        on = labels != conversation.IGNORE
        assert torch.equal(labels[on], ids[on])
        assert int(mm[on].sum()) == 0
        replies = [m["content"][0]["text"] for m in traj.messages if m["role"] == "assistant"]
        wanted = ""
        for text, guess in zip(replies, traj.guesses, strict=True):
            if guess:
                found_guess = True
                head, rest = text.split("<answer>")
                text = head + "<answer>" + rest[rest.index("</answer>") :]
            wanted += text + "<|im_end|>"
        assert tok.decode(ids[on]) == wanted
    assert found_guess


def test_encoded_prompt_equals_what_the_backend_builds(cached, tiny) -> None:
    processor, _ = tiny
    c = cached[0]
    traj = episodes.plan_trajectory(c.item, c.pool, episodes.MULTI_TURN, random.Random(1))
    enc = conversation.encode_conversation(processor, traj.messages, c.images(traj.frames))
    # Every prompt the backend would send (prefix up to a user turn + generation prompt).
    for k, message in enumerate(traj.messages):
        if message["role"] != "user":
            continue
        prefix = traj.messages[: k + 1]
        text = processor.apply_chat_template(prefix, add_generation_prompt=True, tokenize=False)
        frames = [i for m in prefix for i in protocol.frames_in(m)]
        backend = processor(text=[text], images=c.images(frames), return_tensors="pt")
        n = backend["input_ids"].shape[1]
        assert torch.equal(enc["input_ids"][:n], backend["input_ids"][0])
        assert torch.equal(enc["mm_token_type_ids"][:n], backend["mm_token_type_ids"][0])


def test_collate_pads_right_and_keeps_every_image(cached, tiny) -> None:
    processor, _ = tiny
    examples = []
    for seed, settings in enumerate([episodes.SINGLE_16, episodes.MULTI_TURN]):
        traj = episodes.plan_trajectory(
            cached[1].item, cached[1].pool, settings, random.Random(seed)
        )
        examples.append(
            conversation.encode_conversation(
                processor, traj.messages, cached[1].images(traj.frames)
            )
        )
    pad = processor.tokenizer.pad_token_id
    batch = conversation.collate(examples, pad)
    lengths = [e["input_ids"].shape[0] for e in examples]
    assert batch["input_ids"].shape == (2, max(lengths))
    for row, n in enumerate(lengths):
        assert int(batch["attention_mask"][row].sum()) == n
        assert bool((batch["input_ids"][row, n:] == pad).all())
        assert bool((batch["labels"][row, n:] == conversation.IGNORE).all())
        assert bool((batch["mm_token_type_ids"][row, n:] == 0).all())
    assert batch["image_grid_thw"].shape[0] == sum(e["image_grid_thw"].shape[0] for e in examples)


def test_a_few_sft_steps_lower_the_loss(cached, tiny) -> None:
    processor, model = tiny
    torch.manual_seed(0)
    c = cached[2]
    batch = conversation.collate(
        [
            conversation.encode_conversation(processor, t.messages, c.images(t.frames), t.guesses)
            for t in (
                episodes.plan_trajectory(c.item, c.pool, episodes.SINGLE_16, random.Random(s))
                for s in range(2)
            )
        ],
        processor.tokenizer.pad_token_id,
    )
    labels = batch.pop("labels")
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    model.train()
    for _ in range(6):
        loss = conversation.token_loss(model(**batch).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    assert trainer.lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert trainer.lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert trainer.lr_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert trainer.lr_factor(55, 100, 10, 0.1) == pytest.approx(0.55)
    assert trainer.lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def _config(data_dir: Path, out: Path, steps: int) -> config.CurriculumConfig:
    return config.CurriculumConfig(
        data=[data_dir],
        out=out,
        steps=steps,
        batch_size=1,
        warmup=1,
        save_every=1,
        eval_items=1,
        single_turn_share=1.0,
        tiny_sizes={},
        lr=1e-3,
    )


def test_checkpoint_save_and_resume(data_dir: Path, tmp_path: Path) -> None:
    first = trainer.Curriculum(_config(data_dir, tmp_path, steps=2), log=lambda _: None)
    first.setup()
    first.train()
    assert first.last_checkpoint() == tmp_path / "checkpoints" / "step-000002"
    weights = {k: v.clone() for k, v in first.model.state_dict().items()}

    second = trainer.Curriculum(_config(data_dir, tmp_path, steps=3), log=lambda _: None)
    second.setup(resume=True)
    assert second.step == 2
    for key, value in second.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert second.optimizer.state_dict()["state"], "optimizer state was not restored"
    second.train()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert kept == ["step-000002", "step-000003"]
    assert (second.save() / "config.json").exists()


@pytest.mark.parametrize("mode", ["random", "masked"])
def test_needle_guesses_carry_loss_on_their_random_letter(
    data_dir: Path, tmp_path: Path, mode: str
) -> None:
    """Needle-form guesses are random letters and trained; ``masked`` keeps the other forms'
    rule (the answer's letter, no loss), as the bundled model's first needle stage ran."""
    config = _config(data_dir, tmp_path, steps=1).model_copy(
        update={"answer_form": "needle", "needle_guess": mode}
    )
    recipe = trainer.Curriculum(config, log=lambda _: None)
    recipe.setup()
    tok = recipe.processor.tokenizer
    open_id, close_id = tok.convert_tokens_to_ids(["<answer>", "</answer>"])
    guesses = 0
    for step in range(12):
        examples, trajectories = recipe.batch_at(step)
        for example, traj in zip(examples, trajectories, strict=True):
            if not (traj.guesses and traj.guesses[-1]):
                continue
            guesses += 1
            ids, labels = example["input_ids"], example["labels"]
            inside = drills.between_tags(ids, open_id, close_id)
            last = int(inside.nonzero()[-1])  # the last reply's answer: the guessed letter
            assert tok.decode(ids[last : last + 1]) == traj.actions[-1].answer
            if mode == "random":
                assert labels[last] == ids[last]
            else:
                assert labels[last] == conversation.IGNORE
    assert guesses


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


def test_periodic_eval_keeps_the_best_model(data_dir: Path, tmp_path: Path) -> None:
    config = _config(data_dir, tmp_path, steps=2).model_copy(update={"eval_every": 1})
    recipe = trainer.Curriculum(config, log=lambda _: None)
    recipe.setup()
    scores = iter([0.5, 0.25])
    recipe.evaluate = lambda: {"accuracy": next(scores)}  # type: ignore[method-assign]
    recipe.train()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["eval"]["accuracy"] for r in log if "eval" in r] == [0.5, 0.25]
    best = json.loads((tmp_path / "best" / "vmtr_best.json").read_text())
    assert best["step"] == 1  # the dip at step 2 did not replace it
    assert (tmp_path / "best" / "config.json").exists()


def test_the_held_out_check_runs_through_the_evaluation_runner(
    data_dir: Path, tmp_path: Path
) -> None:
    recipe = trainer.Curriculum(_config(data_dir, tmp_path, steps=1), log=lambda _: None)
    recipe.setup()
    recipe.train()
    result = recipe.evaluate()
    assert result["items"] == 1 and 0.0 <= result["accuracy"] <= 1.0
    assert result["mean_turns"] >= 1 and result["mean_frames"] >= 16
    # one run of the evaluation runner, keyed by the weights' step, its rows in heldout/
    runs = read_runs(tmp_path / "heldout")
    assert [r["model"]["model"] for r in runs.values()] == [f"{tmp_path.name}@step1"]
    assert len(read_rows(tmp_path / "heldout")) == 1
    assert recipe.evaluate() == result  # the same weights are read back, not asked again
    assert len(read_rows(tmp_path / "heldout")) == 1


def _cli(args: list[str]):
    return CliRunner().invoke(curriculum_cli.app, args)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    result = _cli(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "error:" in result.output and "annotations.json" in result.output
    assert "Traceback" not in result.output

    result = _cli(["--data", str(tmp_path), "--out", str(tmp_path), "--resume"])
    assert result.exit_code == 1 and "error:" in result.output

    result = _cli(["--data", str(tmp_path), "--out", str(tmp_path), "--answer-form", "bridge"])
    assert result.exit_code == 1 and "answer_form" in result.output
    assert "Traceback" not in result.output


def test_reading_drills_are_short_honest_and_answer_only_with_the_evidence(cached, tiny) -> None:
    processor, _ = tiny
    rng = random.Random(0)
    with_answer = 0
    for c in cached:
        for _ in range(6):
            traj = drills.plan_caption(c.item, c.pool, 8, rng)
            shown = traj.frames
            assert shown == list(range(shown[0], shown[0] + 8))
            reply = traj.messages[-1]["content"][0]["text"]
            assert reply.startswith(f"<think>{episodes.describe_seen(c.item, set(shown))}</think>")
            needed = {x["pool_index"] for x in c.item.extra["needles"]}
            assert ("<answer>" in reply) == (needed <= set(shown))
            with_answer += "<answer>" in reply
            encoded = conversation.encode_conversation(
                processor, traj.messages, c.images(shown), traj.guesses
            )
            labelled = encoded["input_ids"][encoded["labels"] != conversation.IGNORE]
            assert processor.tokenizer.decode(labelled).startswith("<think>")
    assert with_answer > len(cached) * 6 // 2  # most drills show every needle


def test_content_loss_labels_only_what_was_read(cached, tiny) -> None:
    processor, _ = tiny
    tok = processor.tokenizer
    only = weights.content_token_ids(tok)
    rng = random.Random(3)
    c = cached[0]
    traj = drills.plan_caption(c.item, c.pool, 8, rng)
    full = conversation.encode_conversation(processor, traj.messages, c.images(traj.frames))
    narrow = conversation.encode_conversation(
        processor, traj.messages, c.images(traj.frames), None, only
    )
    kept = narrow["labels"] != conversation.IGNORE
    assert kept.any()
    assert bool(
        ((full["labels"] != conversation.IGNORE) | ~kept).all()
    )  # a subset of the reply's labels
    words = tok.decode(narrow["input_ids"][kept])
    needle = c.item.extra["needles"][0]
    if needle["pool_index"] in traj.frames:
        assert needle["colour"] in words and needle["shape"] in words
    assert "Seen" not in words and "think" not in words


def test_answer_drills_are_text_only_and_label_only_the_letter(cached, tiny) -> None:
    processor, _ = tiny
    tok = processor.tokenizer
    item = cached[0].item
    traj = drills.plan_answer_drill(item)
    assert traj.frames == []
    reply = traj.messages[-1]["content"]
    reply = reply if isinstance(reply, str) else reply[0]["text"]
    action = protocol.parse_reply(reply, max_index=63, options=item.options)
    assert isinstance(action, protocol.Answer) and action.answer == item.answer
    for needle in item.extra["needles"]:
        assert f"frame {needle['pool_index']} {needle['colour']} {needle['shape']}" in reply
    enc = conversation.encode_conversation(processor, traj.messages, [])
    labels = drills.answer_only(
        enc["input_ids"], enc["labels"], *tok.convert_tokens_to_ids(["<answer>", "</answer>"])
    )
    kept = labels != conversation.IGNORE
    assert tok.decode(enc["input_ids"][kept]).strip() == item.answer


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


def _answer_drill_labels(tok, text: str, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The ids of ``text`` and which of them an answer drill puts loss on."""
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    tags = tok.convert_tokens_to_ids(["<answer>", "</answer>"])
    return ids, drills.answer_only(ids, ids.clone(), *tags, **kwargs) != conversation.IGNORE


def test_answer_drills_in_needle_form_teach_where_the_answer_stops(tiny) -> None:
    tok = tiny[0].tokenizer
    text = "<think>Seen: frame 3 red circle.</think><answer> red</answer><|im_end|>"
    ids, kept = _answer_drill_labels(tok, text, with_close=True)
    assert tok.convert_ids_to_tokens(ids[kept].tolist())[-1] == "</answer>"
    assert tok.decode(ids[kept]).replace(" ", "") == "red</answer>"


def test_content_weights_boost_what_was_read_but_not_random_ranges(tiny) -> None:
    processor, _ = tiny
    tok = processor.tokenizer
    text = "<think>Seen: frame 3 red circle.</think><retrieve>8, 15</retrieve>"
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    labels = ids.clone()
    labels[:2] = conversation.IGNORE
    content = weights.content_token_ids(tok)
    in_retrieve = tag_interior(tok, ids, "<retrieve>", "</retrieve>")
    boost = weights.content_weights(ids, labels, content, 5.0, in_retrieve)
    words = tok.convert_ids_to_tokens(ids.tolist())
    boosted = {w.strip("Ġ ") for w, x in zip(words, boost.tolist(), strict=True) if x == 5.0}
    assert {"3", "red", "circle"} <= boosted
    assert not {"8", "1", "5"} & boosted  # the retrieve range's digits stay at weight 1
    assert boost[:2].tolist() == [0.0, 0.0]
    assert set(boost[2:].tolist()) <= {1.0, 5.0}
    # aimed ranges were read off the border, so their digits count as content
    aimed = weights.content_weights(ids, labels, content, 5.0, in_retrieve, aimed=True)
    words_at = {w.strip("Ġ ") for w, x in zip(words, aimed.tolist(), strict=True) if x == 5.0}
    assert {"8", "1", "5"} <= words_at
