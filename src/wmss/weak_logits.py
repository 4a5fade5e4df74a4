"""Where WD-JT's weak logits come from: the real weak model, or a control that keeps one of its properties.

Eq. 5 mixes ``z_mix = λ·z_strong + (1−λ)·z_weak``. ``wmss.weak_logits`` says what ``z_weak`` is:

``model`` (the default, Algorithm 1)
    the weak model's logits; weak and strong are trained together.
``uniform``
    ``z_weak ≡ 0``, so ``z_mix = λ·z_strong``: SFT of the strong model with its logits scaled by λ,
    i.e. SFT at temperature ``1/λ``. No weak model is loaded.
``entropy_matched``
    the strong model's own logits, held constant, at a temperature chosen per example:
    ``z_weak = β_i·sg(z_strong)`` where ``β_i = 1/T_i`` is the one for which the Eq. 7 entropy of
    ``softmax(β_i·z_strong)`` (the mean over example i's completion-predicting positions) equals the
    real weak model's ``H_w[i]`` from the entropy pass. The weak model's entropy stays; its structure
    (which tokens it prefers) is gone. ``β_i`` is solved anew at every step, on the strong model as
    it is then (``matched_inverse_temperature``). No weak model is loaded.
``shuffled``
    the real weak model's logits, with the completion-predicting positions of the batch permuted
    (a seeded permutation per micro-batch): their marginal statistics stay, their tie to the sample
    and position is broken. The weak model is held fixed (it has nothing to learn from rows that are
    not its own).

The three controls train no weak parameters, so they cost less than ``model``; the run's manifest
records each WD-JT phase's wall time and which source it used.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOADS_WEAK_MODEL = ("model", "shuffled")
"""Sources (of ``wmss.config.WEAK_LOGITS``) that need the weak model's forward."""

MAX_INVERSE_TEMPERATURE = 1e4


def mean_entropy_and_slope(logits: torch.Tensor, beta: float) -> tuple[float, float]:
    """Mean over rows of ``H(softmax(β·z))`` and its derivative in β, ``−β·Var_p(z)`` (float64)."""
    z = logits.double()
    logp = torch.log_softmax(beta * z, dim=-1)
    p = logp.exp()
    mean_z = (p * z).sum(dim=-1)
    entropy = -(p * logp).sum(dim=-1)
    variance = (p * (z - mean_z[:, None]) ** 2).sum(dim=-1)
    return float(entropy.mean()), float((-beta * variance).mean())


def matched_inverse_temperature(logits: torch.Tensor, target: float, tol: float = 1e-7) -> float:
    """``β ≥ 0`` with ``mean_rows H(softmax(β·logits)) = target`` (nats), for ``(n, V)`` logits.

    The mean entropy falls monotonically from ``log V`` at β = 0; it is solved by Newton's method
    on β, kept inside a bracket that bisection narrows whenever a Newton step would leave it. A target
    at or above ``log V`` gives 0 (uniform); one below what ``MAX_INVERSE_TEMPERATURE`` reaches gives
    that bound.
    """
    if not math.isfinite(target):
        raise ValueError(f"the entropy to match must be finite; got {target}.")
    if target >= math.log(logits.shape[-1]):
        return 0.0
    lo, hi = 0.0, 1.0
    while mean_entropy_and_slope(logits, hi)[0] > target:  # grow the bracket until it holds the root
        lo, hi = hi, hi * 2
        if hi > MAX_INVERSE_TEMPERATURE:
            return MAX_INVERSE_TEMPERATURE
    beta = (lo + hi) / 2
    for _ in range(100):
        entropy, slope = mean_entropy_and_slope(logits, beta)
        gap = entropy - target
        if abs(gap) < tol:
            break
        lo, hi = (beta, hi) if gap > 0 else (lo, beta)
        step = beta - gap / slope if slope < 0 else None
        beta = step if step is not None and lo < step < hi else (lo + hi) / 2
    return beta


def entropy_matched_scales(
    rows: torch.Tensor,
    head: nn.Module | None,
    example_of_row: torch.Tensor,
    weak_entropy: torch.Tensor,
) -> torch.Tensor:
    """Per row, the ``β_i`` of its example: ``matched_inverse_temperature`` on the strong logits of the
    example's rows against ``weak_entropy[i]``. ``rows`` are the completion-predicting positions,
    ``(N, H)`` hidden states that ``head`` projects, or ``(N, V)`` logits when ``head`` is None;
    ``example_of_row`` ``(N,)`` their batch indices."""
    scales = torch.empty(rows.shape[0], dtype=torch.float32, device=rows.device)
    with torch.no_grad():
        for i in example_of_row.unique().tolist():
            mine = example_of_row == i
            logits = rows[mine].detach()
            if head is not None:
                bias = getattr(head, "bias", None)
                weight = head.weight.detach()
                logits = torch.nn.functional.linear(
                    logits.to(weight.dtype), weight, None if bias is None else bias.detach()
                )
            scales[mine] = matched_inverse_temperature(logits.float(), float(weak_entropy[i]))
    return scales


def shuffle_generator(seed: int, step: int, micro_batch: int) -> torch.Generator:
    """The permutation source of ``shuffled`` for one micro-batch: the same after a resume."""
    return torch.Generator().manual_seed(hash((seed, step, micro_batch)) % 2**63)
