"""Scripted episodes encoded as the inference backend encodes them; a few steps lower the loss."""

from __future__ import annotations

import random

import torch

from recipes.tiny.curriculum import episodes
from vmtr import protocol
from vmtr.policies import conversation


def test_encoding_labels_only_the_assistant_and_keeps_mm_token_types(trajectories, tiny) -> None:
    processor, _ = tiny
    tok = processor.tokenizer
    found_guess = False
    for c, traj in trajectories(n_seeds=2):
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
