"""The supervised warm start: honest scripted trajectories, exact encoding, loss goes down."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
import typer
from transformers import AutoModelForImageTextToText, AutoProcessor
from typer.testing import CliRunner

from vmtr import protocol
from vmtr.cli_train import train_app
from vmtr.eval.datasets import load_video_mtr_json
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.models.tiny import build_tiny
from vmtr.policies import sft
from vmtr.policies.tags import tag_interior
from vmtr.tools.select import first_turn_frames, select_segment

ALL_SETTINGS = [sft.MULTI_TURN, sft.SINGLE_16, sft.SINGLE_32]


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
    return [sft.CachedItem(item, cache, budget) for item in items]


@pytest.fixture(scope="module")
def tiny(items, tmp_path_factory: pytest.TempPathFactory):
    folder = build_tiny(
        tmp_path_factory.mktemp("tiny"), seed=0, extra_texts=sft.corpus_texts(items)
    )
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    return processor, model


def _trajectories(cached, n_seeds: int = 8):
    for c in cached:
        for settings in ALL_SETTINGS:
            for seed in range(n_seeds):
                yield c, sft.plan_trajectory(c.item, c.pool, settings, random.Random(seed))


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


def test_needle_wording_changes_only_how_a_needle_is_named(cached) -> None:
    needles = [
        {"pool_index": 12, "colour": "red", "shape": "circle"},
        {"pool_index": 40, "colour": "blue", "shape": "square"},
    ]
    shown = {12, 13, 40}
    assert sft.describe_needles(needles, shown) == (
        "Seen: frame 12 red circle, frame 40 blue square."
    )
    assert sft.describe_needles(needles, shown, "colour-first") == (
        "Seen: red circle at frame 12, blue square at frame 40."
    )
    assert sft.describe_needles(needles, shown, "shape-first") == (
        "Seen: frame 12 circle in red, frame 40 square in blue."
    )
    c = cached[0]
    for wording in ("colour-first", "frame-first", "shape-first"):
        traj = sft.plan_trajectory(
            c.item, c.pool, sft.MULTI_TURN, random.Random(3), wording=wording
        )
        again = sft.plan_trajectory(c.item, c.pool, sft.MULTI_TURN, random.Random(3))
        assert traj.actions == again.actions and traj.frames == again.frames
    # The reading check of a greedy reply accepts either wording.
    turns = [
        {
            "frames": sorted(shown),
            "raw": "<think>Seen: frame 12 red circle, frame 40 blue "
            "square.</think><answer>A</answer>",
        }
    ]
    item = dataclasses.replace(c.item, extra=c.item.extra | {"needles": needles})
    assert sft.reads_first_turn(item, turns) is True


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
        if traj.settings is not sft.MULTI_TURN:
            continue
        enc = sft.encode_conversation(processor, traj.messages, c.images(traj.frames), traj.guesses)
        ids, labels, mm = enc["input_ids"], enc["labels"], enc["mm_token_type_ids"]
        assert mm.shape == ids.shape and int((mm == 1).sum()) > 0
        assert enc["image_grid_thw"].shape[0] == len(traj.frames)
        on = labels != sft.IGNORE
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
    traj = sft.plan_trajectory(c.item, c.pool, sft.MULTI_TURN, random.Random(1))
    enc = sft.encode_conversation(processor, traj.messages, c.images(traj.frames))
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
    for seed, settings in enumerate([sft.SINGLE_16, sft.MULTI_TURN]):
        traj = sft.plan_trajectory(cached[1].item, cached[1].pool, settings, random.Random(seed))
        examples.append(
            sft.encode_conversation(processor, traj.messages, cached[1].images(traj.frames))
        )
    pad = processor.tokenizer.pad_token_id
    batch = sft.collate(examples, pad)
    lengths = [e["input_ids"].shape[0] for e in examples]
    assert batch["input_ids"].shape == (2, max(lengths))
    for row, n in enumerate(lengths):
        assert int(batch["attention_mask"][row].sum()) == n
        assert bool((batch["input_ids"][row, n:] == pad).all())
        assert bool((batch["labels"][row, n:] == sft.IGNORE).all())
        assert bool((batch["mm_token_type_ids"][row, n:] == 0).all())
    assert batch["image_grid_thw"].shape[0] == sum(e["image_grid_thw"].shape[0] for e in examples)


def test_a_few_sft_steps_lower_the_loss(cached, tiny) -> None:
    processor, model = tiny
    torch.manual_seed(0)
    c = cached[2]
    batch = sft.collate(
        [
            sft.encode_conversation(processor, t.messages, c.images(t.frames), t.guesses)
            for t in (
                sft.plan_trajectory(c.item, c.pool, sft.SINGLE_16, random.Random(s))
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
        loss = sft.token_loss(model(**batch).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    assert sft.lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert sft.lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert sft.lr_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert sft.lr_factor(55, 100, 10, 0.1) == pytest.approx(0.55)
    assert sft.lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def _config(data_dir: Path, out: Path, steps: int) -> sft.SFTConfig:
    return sft.SFTConfig(
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
    first = sft.SFTRecipe(_config(data_dir, tmp_path, steps=2), log=lambda _: None)
    first.setup()
    first.train()
    assert first.last_checkpoint() == tmp_path / "checkpoints" / "step-000002"
    weights = {k: v.clone() for k, v in first.model.state_dict().items()}

    second = sft.SFTRecipe(_config(data_dir, tmp_path, steps=3), log=lambda _: None)
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
    recipe = sft.SFTRecipe(config, log=lambda _: None)
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
            inside = sft.between_tags(ids, open_id, close_id)
            last = int(inside.nonzero()[-1])  # the last reply's answer: the guessed letter
            assert tok.decode(ids[last : last + 1]) == traj.actions[-1].answer
            if mode == "random":
                assert labels[last] == ids[last]
            else:
                assert labels[last] == sft.IGNORE
    assert guesses


def test_pretexts_train_alongside_and_are_logged(data_dir: Path, tmp_path: Path) -> None:
    config = _config(data_dir, tmp_path, steps=2).model_copy(
        update={"pretext_weight": 1.0, "pretext_batch": 4}
    )
    recipe = sft.SFTRecipe(config, log=lambda _: None)
    recipe.setup()
    first = {k: float(v.detach()) for k, v in recipe.pretext_losses(0).items()}
    again = {k: float(v.detach()) for k, v in recipe.pretext_losses(0).items()}
    assert first == again, "a step's pretext rows depend on the seed and the step alone"
    recipe.train()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(r["induction_loss"] > 0 and r["lookup_loss"] > 0 for r in log)


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(train_app, name="train")
    return app


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _cli(), ["train", "sft", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "annotations.json" in result.output
    assert "Traceback" not in result.output

    result = CliRunner().invoke(
        _cli(), ["train", "sft", "--data", str(tmp_path), "--out", str(tmp_path), "--resume"]
    )
    assert result.exit_code == 1


def test_block_ranges_are_aligned_and_cover_the_pool() -> None:
    rng = random.Random(0)
    ranges = {sft.random_range(rng, 60, (8, 16), block=8) for _ in range(400)}
    assert ranges == {(s, min(59, s + 7)) for s in range(0, 60, 8)}
    free = {sft.random_range(rng, 60, (8, 16)) for _ in range(400)}
    assert all(8 <= e - s + 1 <= 16 and 0 <= s <= e <= 59 for s, e in free)


def test_label_ranges_copy_first_turn_labels_and_never_aim(cached) -> None:
    rng = random.Random(0)
    labels = [0, 4, 8, 13, 17]
    ranges = {sft.label_range(rng, labels) for _ in range(300)}
    assert ranges == {(0, 4), (4, 8), (8, 13), (13, 17), (0, 8), (4, 13), (8, 17)}
    with pytest.raises(sft.SFTError):
        sft.label_range(rng, [3])
    # In scripted episodes every retrieve spans two overview labels, wherever the needles are.
    hits = 0
    for c in cached:
        overview = set(first_turn_frames(len(c.pool), sft.MULTI_TURN.first_turn_frames))
        needles = {x["pool_index"] for x in c.item.extra["needles"]}
        for seed in range(20):
            traj = sft.plan_trajectory(
                c.item, c.pool, sft.MULTI_TURN, random.Random(seed), retrieve_labels=True
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
                traj = sft.plan_trajectory(
                    c.item,
                    c.pool,
                    sft.MULTI_TURN,
                    random.Random(seed),
                    retrieve_labels=True,
                    retrieve_again=share,
                )
                retrieves = sum(isinstance(a, protocol.Retrieve) for a in traj.actions)
                turns.append(retrieves)
                if retrieves and traj.guesses[-1]:  # answered without the evidence
                    assert len(traj.actions) == (2 if share == 0 else len(traj.actions))
                if share == 1.0:
                    same = sft.plan_trajectory(
                        c.item, c.pool, sft.MULTI_TURN, random.Random(seed), retrieve_labels=True
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
        asked = sft.needed_needles(item)
        assert len(asked) == 1
        body = sft.answer_body(item, "needle")
        assert body == f" {asked[0]['colour']} {asked[0]['shape']}"
        assert protocol.option_by_text(body, item.options) == item.answer
        pool = sft.CachedItem(item, tmp_path, budget).pool
        for seed in range(10):
            traj = sft.plan_trajectory(
                item, pool, sft.MULTI_TURN, random.Random(seed), answer_form="needle"
            )
            seen = set(traj.frames)
            if asked[0]["pool_index"] in seen and not traj.guesses[-1]:
                # it answered once the asked needle was shown, other needles or not
                assert traj.actions[-1] == protocol.Answer(item.answer, traj.actions[-1].think)


def test_aimed_ranges_bracket_the_named_border_with_first_turn_labels() -> None:
    labels = [0, 4, 8, 13, 17, 21, 25, 29]
    assert sft.aimed_range(labels, [17, 21], 0) == (17, 25)  # first border .. label after
    assert sft.aimed_range(labels, [21, 17, 18, 19], 1) == (13, 17)  # label before .. first
    assert sft.aimed_range(labels, [], 0) is None
    assert sft.aimed_range(labels, [0, 4], 1) == (0, 0)  # nothing before the first label
    assert sft.aimed_range(labels, [25, 29], 0) == (25, 29)  # nothing after the last


def test_aimed_episodes_follow_the_border_not_the_needles(cached) -> None:
    aimed = 0
    for c in cached:
        overview = first_turn_frames(len(c.pool), sft.MULTI_TURN.first_turn_frames)
        cue = c.item.extra["cue_pool_indices"]
        moved = dataclasses.replace(
            c.item,
            extra={
                **c.item.extra,
                "needles": [{**x, "pool_index": cue[1]} for x in c.item.extra["needles"]],
            },
        )
        for seed in range(4):
            traj = sft.plan_trajectory(
                c.item, c.pool, sft.MULTI_TURN, random.Random(seed), aim=True
            )
            seen: set[int] = set()
            users = [m for m in traj.messages if m["role"] == "user"]
            retrieves = 0
            for user, action in zip(users, traj.actions, strict=False):
                seen |= set(protocol.frames_in(user))
                if isinstance(action, protocol.Retrieve):
                    border = [i for i in seen if cue[0] <= i <= cue[1]]
                    assert (action.start, action.end) == sft.aimed_range(
                        overview, border, retrieves
                    )
                    retrieves += 1
                    aimed += 1
            # flagged aimed exactly when a retrieve was (so only aimed digits get the weight)
            assert traj.aimed == (retrieves > 0)
            # the first retrieve reads the border only: needles elsewhere leave it unchanged
            other = sft.plan_trajectory(
                moved, c.pool, sft.MULTI_TURN, random.Random(seed), aim=True
            )
            first, again = traj.actions[0], other.actions[0]
            if isinstance(first, protocol.Retrieve) and isinstance(again, protocol.Retrieve):
                assert (first.start, first.end) == (again.start, again.end)
    assert aimed > 0


def test_periodic_eval_keeps_the_best_model(data_dir: Path, tmp_path: Path) -> None:
    config = _config(data_dir, tmp_path, steps=2).model_copy(update={"eval_every": 1})
    recipe = sft.SFTRecipe(config, log=lambda _: None)
    recipe.setup()
    scores = iter([0.5, 0.25])
    recipe.evaluate = lambda: {"accuracy": next(scores)}  # type: ignore[method-assign]
    recipe.train()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["eval"]["accuracy"] for r in log if "eval" in r] == [0.5, 0.25]
    best = json.loads((tmp_path / "best" / "vmtr_best.json").read_text())
    assert best["step"] == 1  # the dip at step 2 did not replace it
    assert (tmp_path / "best" / "config.json").exists()


def test_reading_drills_are_short_honest_and_answer_only_with_the_evidence(cached, tiny) -> None:
    processor, _ = tiny
    rng = random.Random(0)
    with_answer = 0
    for c in cached:
        for _ in range(6):
            traj = sft.plan_caption(c.item, c.pool, 8, rng)
            shown = traj.frames
            assert shown == list(range(shown[0], shown[0] + 8))
            reply = traj.messages[-1]["content"][0]["text"]
            assert reply.startswith(f"<think>{sft.describe_seen(c.item, set(shown))}</think>")
            needed = {x["pool_index"] for x in c.item.extra["needles"]}
            assert ("<answer>" in reply) == (needed <= set(shown))
            with_answer += "<answer>" in reply
            encoded = sft.encode_conversation(
                processor, traj.messages, c.images(shown), traj.guesses
            )
            labelled = encoded["input_ids"][encoded["labels"] != sft.IGNORE]
            assert processor.tokenizer.decode(labelled).startswith("<think>")
    assert with_answer > len(cached) * 6 // 2  # most drills show every needle


def test_content_loss_labels_only_what_was_read(cached, tiny) -> None:
    processor, _ = tiny
    tok = processor.tokenizer
    only = sft.content_token_ids(tok)
    rng = random.Random(3)
    c = cached[0]
    traj = sft.plan_caption(c.item, c.pool, 8, rng)
    full = sft.encode_conversation(processor, traj.messages, c.images(traj.frames))
    narrow = sft.encode_conversation(processor, traj.messages, c.images(traj.frames), None, only)
    kept = narrow["labels"] != sft.IGNORE
    assert kept.any()
    assert bool(((full["labels"] != sft.IGNORE) | ~kept).all())  # a subset of the reply's labels
    words = tok.decode(narrow["input_ids"][kept])
    needle = c.item.extra["needles"][0]
    if needle["pool_index"] in traj.frames:
        assert needle["colour"] in words and needle["shape"] in words
    assert "Seen" not in words and "think" not in words


def test_answer_drills_are_text_only_and_label_only_the_letter(cached, tiny) -> None:
    processor, _ = tiny
    tok = processor.tokenizer
    item = cached[0].item
    traj = sft.plan_answer_drill(item)
    assert traj.frames == []
    reply = traj.messages[-1]["content"]
    reply = reply if isinstance(reply, str) else reply[0]["text"]
    action = protocol.parse_reply(reply, max_index=63, options=item.options)
    assert isinstance(action, protocol.Answer) and action.answer == item.answer
    for needle in item.extra["needles"]:
        assert f"frame {needle['pool_index']} {needle['colour']} {needle['shape']}" in reply
    enc = sft.encode_conversation(processor, traj.messages, [])
    labels = sft.answer_only(
        enc["input_ids"], enc["labels"], *tok.convert_tokens_to_ids(["<answer>", "</answer>"])
    )
    kept = labels != sft.IGNORE
    assert tok.decode(enc["input_ids"][kept]).strip() == item.answer


def test_text_answers_name_the_option_and_parse_to_its_letter(tiny, cached) -> None:
    processor, _ = tiny
    tok = processor.tokenizer
    for c in cached[:4]:
        item = c.item
        body = sft.answer_body(item, "text")
        wanted = protocol.option_text(item.options[item.letters.index(item.answer)])
        assert body == f" {wanted}"
        traj = sft.plan_trajectory(
            item, c.pool, sft.MULTI_TURN, random.Random(0), answer_form="text"
        )
        reply = traj.messages[-1]["content"]
        reply = reply if isinstance(reply, str) else reply[0]["text"]
        assert f"<answer>{body}</answer>" in reply
        assert traj.actions[-1] == protocol.Answer(item.answer, traj.actions[-1].think)
        # the words of the answer are the very tokens the reading uses
        inside = tok(f"<answer>{body}</answer>", add_special_tokens=False)["input_ids"][1:-1]
        assert tok.decode(inside) == body
        assert len(inside) == len(wanted.split()) or wanted.isdigit()


def test_bridge_answers_state_the_option_then_its_letter(tiny, cached) -> None:
    processor, _ = tiny
    assert len(processor.tokenizer(sft.BRIDGE_WORD, add_special_tokens=False)["input_ids"]) == 1
    guessed = answered = 0
    for seed, c in enumerate(cached * 2):
        item = c.item
        wanted = protocol.option_text(item.options[item.letters.index(item.answer)])
        assert sft.bridge_clause(item) == f" so {wanted} is {item.answer}."
        settings = sft.SINGLE_16 if seed % 2 else sft.MULTI_TURN
        traj = sft.plan_trajectory(
            item, c.pool, settings, random.Random(seed), answer_form="bridge"
        )
        reply = traj.messages[-1]["content"]
        reply = reply if isinstance(reply, str) else reply[0]["text"]
        assert reply.endswith(f"</think><answer>{item.answer}</answer>")
        assert traj.actions[-1] == protocol.Answer(item.answer, traj.actions[-1].think)
        if traj.guesses[-1]:  # the frames did not show it, so the reply claims nothing
            guessed += 1
            assert " Guessing.</think>" in reply and " is " not in reply
        else:
            answered += 1
            assert f"{sft.bridge_clause(item)}</think>" in reply
    assert guessed and answered


def test_needle_answers_repeat_the_reading_and_parse_to_the_right_option(cached) -> None:
    kinds, guessed = set(), set()
    for seed, c in enumerate(cached * 8):
        item = c.item
        kind = item.categories["kind"]
        kinds.add(kind)
        body = sft.answer_body(item, "needle")
        first = min(sft.needles_of(item), key=lambda n: n["pool_index"])
        if kind == "count":
            assert body == f" {len(sft.needles_of(item))}"
        else:  # colour, shape and order all answer with the (first) needle's own words
            assert body == f" {first['colour']} {first['shape']}"
        assert protocol.option_by_text(body, item.options) == item.answer
        settings = sft.SINGLE_16 if seed % 2 else sft.MULTI_TURN
        traj = sft.plan_trajectory(
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
    return ids, sft.answer_only(ids, ids.clone(), *tags, **kwargs) != sft.IGNORE


def test_answer_drills_in_bridge_form_teach_the_clause_and_the_letter(tiny) -> None:
    tok = tiny[0].tokenizer
    text = "<think>Seen: frame 3 red circle. so red is B.</think><answer>B</answer><|im_end|>"
    bridge = tok(sft.BRIDGE_WORD, add_special_tokens=False)["input_ids"][0]
    ids, kept = _answer_drill_labels(tok, text, bridge_id=bridge)
    assert tok.decode(ids[kept]).replace(" ", "") == "sored is B.</think><answer>B".replace(" ", "")
    ids, letter_only = _answer_drill_labels(tok, text)
    assert tok.decode(ids[letter_only]).strip() == "B"


def test_answer_drills_in_text_form_teach_where_the_answer_stops(tiny) -> None:
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
    labels[:2] = sft.IGNORE
    content = sft.content_token_ids(tok)
    in_retrieve = tag_interior(tok, ids, "<retrieve>", "</retrieve>")
    weights = sft.content_weights(ids, labels, content, 5.0, in_retrieve)
    words = tok.convert_ids_to_tokens(ids.tolist())
    boosted = {w.strip("Ġ ") for w, x in zip(words, weights.tolist(), strict=True) if x == 5.0}
    assert {"3", "red", "circle"} <= boosted
    assert not {"8", "1", "5"} & boosted  # the retrieve range's digits stay at weight 1
    assert weights[:2].tolist() == [0.0, 0.0]
    assert set(weights[2:].tolist()) <= {1.0, 5.0}
    # aimed ranges were read off the border, so their digits count as content
    aimed = sft.content_weights(ids, labels, content, 5.0, in_retrieve, aimed=True)
    words_at = {w.strip("Ġ ") for w, x in zip(words, aimed.tolist(), strict=True) if x == 5.0}
    assert {"8", "1", "5"} <= words_at


def test_weighted_token_loss_is_the_plain_one_when_weights_are_ones() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.randint(0, 11, (2, 6))
    labels[0, :3] = sft.IGNORE
    ones = (labels != sft.IGNORE).float()
    plain = sft.token_loss(logits, labels)
    assert torch.allclose(sft.token_loss(logits, labels, weights=ones), plain)
    heavy = ones.clone()
    heavy[1, 4] = 10.0
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 11),
        labels[:, 1:].reshape(-1),
        reduction="none",
        ignore_index=sft.IGNORE,
    )
    w = heavy[:, 1:].reshape(-1)
    assert torch.allclose(
        sft.token_loss(logits, labels, weights=heavy), (per_token * w).sum() / w.sum()
    )
