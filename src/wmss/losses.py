"""Completion-only losses on next-token logits.

Logits at position t-1 predict the token at position t, so every loss here compares
``logits[:, :-1]`` with ``labels[:, 1:]``; positions whose label is -100 (prompt, padding) are ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wmss.data import IGNORE_INDEX


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair each position's logits with the token it predicts: (N, V) logits and (N,) targets."""
    return logits[:, :-1, :].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1)


def mix_logits(strong_logits: torch.Tensor, weak_logits: torch.Tensor, mix_lambda: float) -> torch.Tensor:
    """Eq. 5: ``z_mix = λ·z_strong + (1−λ)·z_weak`` (in float32)."""
    return mix_lambda * strong_logits.float() + (1.0 - mix_lambda) * weak_logits.float()


def mixed_logit_cross_entropy(
    strong_logits: torch.Tensor,
    weak_logits: torch.Tensor,
    labels: torch.Tensor,
    mix_lambda: float,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 6: cross-entropy of ``softmax(z_mix)`` against the completion tokens.

    Averaged over completion tokens like SFT's loss: the sum over this batch divided by
    ``num_items_in_batch`` when given (the token count of the whole accumulated batch), else by the
    number of completion tokens here. The gradient w.r.t. the strong logits is ``λ·(P_mix − e_y)``
    and w.r.t. the weak logits ``(1−λ)·(P_mix − e_y)`` (per token, before averaging).
    """
    strong, targets = shift_for_next_token(strong_logits, labels)
    weak, _ = shift_for_next_token(weak_logits, labels)
    keep = targets != IGNORE_INDEX
    total = F.cross_entropy(mix_logits(strong[keep], weak[keep], mix_lambda), targets[keep], reduction="sum")
    denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
    return total / denominator


def completion_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Plain SFT loss on completion tokens (Eq. 6 with λ = 1)."""
    flat, targets = shift_for_next_token(logits, labels)
    keep = targets != IGNORE_INDEX
    total = F.cross_entropy(flat[keep].float(), targets[keep], reduction="sum")
    denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
    return total / denominator
