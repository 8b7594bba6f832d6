"""Conversation -> training tensors: the weighted next-token loss."""

from __future__ import annotations

import torch

from vmtr.policies.conversation import IGNORE, token_loss


def test_weighted_token_loss_is_the_plain_one_when_weights_are_ones() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.randint(0, 11, (2, 6))
    labels[0, :3] = IGNORE
    ones = (labels != IGNORE).float()
    plain = token_loss(logits, labels)
    assert torch.allclose(token_loss(logits, labels, weights=ones), plain)
    heavy = ones.clone()
    heavy[1, 4] = 10.0
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 11),
        labels[:, 1:].reshape(-1),
        reduction="none",
        ignore_index=IGNORE,
    )
    w = heavy[:, 1:].reshape(-1)
    assert torch.allclose(
        token_loss(logits, labels, weights=heavy), (per_token * w).sum() / w.sum()
    )
