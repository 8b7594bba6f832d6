"""The action-only update mask: a reply's `<retrieve>`/`<answer>` part, never its think text;
and the decision mask: the action and the think text's last sentence."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vmtr.config import GenerationSettings, ProtocolSettings
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.models.tiny import build_tokenizer
from vmtr.policies.action_tokens import action_start, action_token_mask, last_sentence_start
from vmtr.policies.logprobs import token_logprobs
from vmtr.policies.trainer import RLRecipe, RLSettings


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.mark.parametrize(
    "reply",
    [
        "<think>Border: frames 20 to 24. Seen: no shapes.</think><retrieve>16, 23</retrieve>",
        "<think>Seen: frame 51 cyan square.</think><answer>B</answer>",
        "<think>x</think> <answer>cyan circle</answer>",
    ],
)
def test_action_starts_after_the_think_block(tokenizer, reply):
    ids = tokenizer(reply + "<|im_end|>", add_special_tokens=False)["input_ids"]
    k = action_start(ids, tokenizer)
    think = tokenizer.decode(ids[:k], skip_special_tokens=False)
    action = tokenizer.decode(ids[k:], skip_special_tokens=False)
    assert think.endswith("</think>") or "</think>" in think
    assert "<think>" not in action and "Seen" not in action
    assert ("<retrieve>" in action) or ("<answer>" in action)


def test_a_reply_without_think_is_all_action_and_a_cut_off_think_has_none(tokenizer):
    ids = tokenizer("<answer>A</answer>", add_special_tokens=False)["input_ids"]
    assert action_start(ids, tokenizer) == 0
    cut = tokenizer("<think>Border: frames 20 to", add_special_tokens=False)["input_ids"]
    assert action_start(cut, tokenizer) == len(cut)


@pytest.mark.parametrize(
    ("think", "last"),
    [
        ("Border: frames 20 to 24. Seen: no shapes. Need more frames.", "Need more frames."),
        ("Border: frames 20 to 24. Seen: no shapes. Guessing.", "Guessing."),
        ("Seen: frame 51 cyan square.", "Seen: frame 51 cyan square."),
        ("It is red! Or is it?  Look again at 0.5 s\n", "Look again at 0.5 s\n"),
        ("", ""),
    ],
)
def test_last_sentence_is_what_the_think_text_ends_on(think, last):
    assert think[last_sentence_start(think) :] == last


@pytest.mark.parametrize(
    ("reply", "decision"),
    [
        (
            "<think>Border: frames 20 to 24. Seen: no shapes. Need more frames.</think>"
            "<retrieve>16, 23</retrieve>",
            "Need more frames.</think><retrieve>16, 23</retrieve>",
        ),
        (
            "<think>Border: frames 20 to 24. Seen: no shapes. Guessing.</think><answer>A</answer>",
            "Guessing.</think><answer>A</answer>",
        ),
    ],
)
def test_decision_starts_at_the_think_texts_last_sentence(tokenizer, reply, decision):
    ids = tokenizer(reply + "<|im_end|>", add_special_tokens=False)["input_ids"]
    k = action_start(ids, tokenizer, "decision")
    trained = tokenizer.decode(ids[k:], skip_special_tokens=False)
    assert trained.strip().startswith(decision)
    assert "Seen" not in trained and "Border" not in trained
    assert action_start(ids, tokenizer, "decision") < action_start(ids, tokenizer)
    cut = tokenizer("<think>Border: frames 20 to", add_special_tokens=False)["input_ids"]
    assert action_start(cut, tokenizer, "decision") == len(cut)


def test_mask_covers_only_each_replys_action(tokenizer):
    prompt = tokenizer("user: which colour?", add_special_tokens=False)["input_ids"]
    one = tokenizer("<think>Seen: red.</think><retrieve>0, 7</retrieve>", add_special_tokens=False)
    two = tokenizer("<think>Seen: red.</think><answer>A</answer>", add_special_tokens=False)
    ids = prompt + one["input_ids"] + prompt + two["input_ids"]
    first = (len(prompt), len(prompt) + len(one["input_ids"]) - 1)
    start2 = first[1] + 1 + len(prompt)
    second = (start2, len(ids) - 1)
    mask = action_token_mask(torch.tensor(ids), [first, second], tokenizer)
    kept = [i for i, m in enumerate(mask.tolist()) if m]
    text = tokenizer.decode([ids[i] for i in kept], skip_special_tokens=False)
    assert "Seen" not in text and "which" not in text
    assert "<retrieve>0, 7</retrieve>" in text and "<answer>A</answer>" in text


def test_action_only_update_leaves_think_tokens_out(tmp_path, contrasted_rollouts):
    """Same trajectories, same start: training on actions only differs from training on whole
    replies, and changing the think tokens' sampling log-probs changes neither its loss nor its
    step."""
    data = generate(tmp_path / "data", SyntheticSettings(n_items=2, seed=31, minutes=0.5))
    base = RLSettings(
        actor_lr=1e-3,
        kl_coef=0.0,
        micro_batch=1,
        train_tokens="action",
        protocol=ProtocolSettings(max_turns=2, first_turn_frames=8, frames_per_retrieve=4),
    )
    recipe = RLRecipe(data, tmp_path / "a", "tiny", base)
    recipe.setup()
    trajectories = contrasted_rollouts(
        recipe, GenerationSettings(temperature=0.7, max_new_tokens=96)
    )
    action = recipe.update(trajectories)
    whole = RLRecipe(
        data, tmp_path / "b", "tiny", base.model_copy(update={"train_tokens": "reply"})
    )
    whole.setup()
    reply = whole.update(trajectories)
    tokenizer = recipe.lm.processor.tokenizer
    kept = sum(
        float(action_token_mask(t.input_ids, t.turn_spans, tokenizer).sum()) for t in trajectories
    )
    assert 0 < kept < sum(float(t.action_mask.sum()) for t in trajectories)
    assert action["entropy"] != pytest.approx(reply["entropy"])
    # sampling log-probs changed on think tokens only: the action-only loss cannot tell
    shifted = []
    for traj in trajectories:
        think = traj.action_mask - action_token_mask(traj.input_ids, traj.turn_spans, tokenizer)
        shifted.append(dataclasses.replace(traj, old_logprobs=traj.old_logprobs - 0.5 * think))
    again = RLRecipe(data, tmp_path / "c", "tiny", base)
    again.setup()
    assert again.update(shifted)["policy_loss"] == pytest.approx(action["policy_loss"], rel=1e-5)
    for (name, a), (_, b) in zip(
        recipe.policy.named_parameters(), again.policy.named_parameters(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name


def test_kl_on_untrained_tokens_leaves_the_action_out(tmp_path, contrasted_rollouts):
    """A reference that differs from the policy only on the action tokens: anchoring every reply
    token sees a KL, anchoring only what the policy gradient leaves untrained sees none."""
    data = generate(tmp_path / "data", SyntheticSettings(n_items=2, seed=31, minutes=0.5))
    protocol = ProtocolSettings(max_turns=2, first_turn_frames=8, frames_per_retrieve=4)
    with pytest.raises(ValueError, match="untrained"):
        RLSettings(kl_coef=0.1, kl_tokens="untrained", protocol=protocol)
    kl = {}
    trajectories = None
    for anchored in ("reply", "untrained"):
        settings = RLSettings(
            actor_lr=1e-3,
            kl_coef=0.1,
            micro_batch=1,
            train_tokens="action",
            kl_tokens=anchored,
            protocol=protocol,
        )
        recipe = RLRecipe(data, tmp_path / anchored, "tiny", settings)
        recipe.setup()
        if trajectories is None:
            trajectories = contrasted_rollouts(
                recipe, GenerationSettings(temperature=0.7, max_new_tokens=96)
            )
        tokenizer = recipe.lm.processor.tokenizer
        action = {
            tuple(t.input_ids.tolist()): action_token_mask(t.input_ids, t.turn_spans, tokenizer)
            for t in trajectories
        }

        def reference(inputs, banned, recipe=recipe, action=action):
            with torch.no_grad():
                logp, _ = token_logprobs(recipe.policy, inputs, banned, recipe.s.temperature)
            ids = tuple(inputs["input_ids"][0].tolist())
            return logp + 1.0 * action[ids].to(logp.device)

        recipe.reference_logprobs = reference
        kl[anchored] = recipe.update(trajectories)["kl"]
    assert kl["reply"] > 0.01
    assert kl["untrained"] == pytest.approx(0.0, abs=1e-6)
