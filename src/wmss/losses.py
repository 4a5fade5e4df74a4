"""Completion-only losses: SFT cross-entropy and the mixed-logit objective of WD-JT (Eq. 5-6). (The
baselines' losses live beside their trainers, in ``wmss.baselines``.)

Logits at position t-1 predict the token at position t, so every loss here compares
``logits[:, :-1]`` with ``labels[:, 1:]``; positions whose label is -100 (prompt, padding) are ignored.

Two forms of each loss: the naive one on full logits (the test oracle, and the path behind
``train.fused_loss: false``), and the fused one on final hidden states and output heads (the
default), which projects only completion-predicting positions, a chunk of tokens at a time.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

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


class TokenLoss(NamedTuple):
    """Variants of the per-token SFT loss (both off: plain cross-entropy, ``−log p_y``).

    ``label_smoothing`` ε: cross-entropy against ``(1−ε)·e_y + ε/V`` (PyTorch's definition), i.e.
    ``(1−ε)·(−log p_y) + ε·mean_v(−log p_v)``. ``dft``: Dynamic Fine-Tuning (Wu et al., 2025; TRL's
    ``loss_type="dft"``), each token's loss weighted by its own probability held constant,
    ``−sg(p_y)·log p_y``; with both, the smoothed loss is so weighted.
    """

    label_smoothing: float = 0.0
    dft: bool = False

    @property
    def plain(self) -> bool:
        return self.label_smoothing == 0.0 and not self.dft


PLAIN = TokenLoss()


def token_loss(logits: torch.Tensor, targets: torch.Tensor, loss: TokenLoss) -> torch.Tensor:
    """Per-row ``TokenLoss`` of ``(N, V)`` logits against ``(N,)`` targets (float32; the naive oracle)."""
    logits = logits.float()
    nll = F.cross_entropy(logits, targets, reduction="none")
    out = (
        F.cross_entropy(logits, targets, reduction="none", label_smoothing=loss.label_smoothing)
        if loss.label_smoothing
        else nll
    )
    return out * torch.exp(-nll).detach() if loss.dft else out


def completion_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    loss: TokenLoss = PLAIN,
) -> torch.Tensor:
    """Plain SFT loss on completion tokens (Eq. 6 with λ = 1), or one of its ``TokenLoss`` variants."""
    flat, targets = shift_for_next_token(logits, labels)
    keep = targets != IGNORE_INDEX
    if loss.plain:
        total = F.cross_entropy(flat[keep].float(), targets[keep], reduction="sum")
    else:
        total = token_loss(flat[keep], targets[keep], loss).sum()
    denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
    return total / denominator


# ---------------------------------------------------------------- fused and chunked (the default)
#
# The functions above take logits: every one of them is a tokens×vocabulary float32 tensor (three for
# WD-JT, plus their gradients). The functions below take the final hidden states and output heads
# instead, project only the positions that predict a completion token, and do so a chunk of tokens
# at a time, so the loss head never holds more than one chunk of vocabulary-wide logits per branch.

CHUNK_BYTES = 64 * 2**20
"""Default size of one chunk of float32 logits (per branch) in the fused loss head and entropy pass."""


def default_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk so that one chunk of float32 logits takes at most ``CHUNK_BYTES``."""
    return max(1, CHUNK_BYTES // (4 * vocab_size))


def completion_positions(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, hidden)`` states of the positions that predict a completion token, and those ``(N,)`` tokens.

    The hidden state at position t-1 predicts the label at t; labels equal to -100 are ignored.
    """
    keep = labels[:, 1:] != IGNORE_INDEX
    return hidden[:, :-1][keep], labels[:, 1:][keep]


class _Branch(NamedTuple):
    hidden: torch.Tensor  # (N, H)
    weight: torch.Tensor  # (V, H)
    bias: torch.Tensor | None  # (V,)
    coef: float  # its factor in z_mix: λ for strong, 1−λ for weak
    needs_grad: tuple[bool, bool, bool]  # hidden, weight, bias


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype the model's own head would compute in (autocast's, when autocast is on)."""
    device = weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


def _linear_cross_entropy_chunks(
    branches: list[_Branch], targets: torch.Tensor, chunk_size: int, loss: TokenLoss = PLAIN
) -> tuple[torch.Tensor, list[list[torch.Tensor | None]]]:
    """Functional core: ``Σ_n CE(softmax(Σ_k coef_k·(h_k W_kᵀ + b_k)), y_n)`` and its gradients.

    Per chunk of rows: each branch's logits in its compute dtype, upcast to float32 and mixed;
    ``loss = logsumexp(z_mix) − z_mix[y]``; the gradient of branch k's logits is
    ``coef_k·(softmax(z_mix) − e_y)``, turned at once into the chunk's rows of the hidden-state
    gradient and accumulated (float32) into the weight and bias gradients. Returns the loss sum and,
    per branch, ``[grad_hidden, grad_weight, grad_bias]`` of that sum (None where not needed).
    A branch with coefficient 0 is never projected; its gradients (if needed) are zeros.

    A ``TokenLoss`` variant changes the loss per row and the logits' gradient with it: label smoothing
    ε gives ``(1−ε)·(lse − z_y) + ε·(lse − mean_v z_v)`` and the gradient ``softmax − (1−ε)·e_y − ε/V``;
    DFT multiplies a row's loss and gradient by its constant weight ``p_y = softmax(z_mix)[y]``.
    """
    device = targets.device
    grads = [
        [
            torch.zeros_like(b.hidden) if b.needs_grad[0] else None,
            torch.zeros(b.weight.shape, dtype=torch.float32, device=device) if b.needs_grad[1] else None,
            torch.zeros(b.bias.shape, dtype=torch.float32, device=device)
            if b.bias is not None and b.needs_grad[2]
            else None,
        ]
        for b in branches
    ]
    # (branch, its gradients, compute dtype, weight and bias in that dtype) of the projected branches
    active = []
    for b, g in zip(branches, grads, strict=True):
        if b.coef != 0.0:
            dt = _compute_dtype(b.weight)
            active.append((b, g, dt, b.weight.to(dt), None if b.bias is None else b.bias.to(dt)))
    if not active:
        raise ValueError("every branch of the mixed logits has coefficient 0.")
    with_grad = any(x is not None for _, g, *_ in active for x in g)
    total = torch.zeros((), dtype=torch.float32, device=device)
    with torch.autocast(device.type, enabled=False):  # dtypes are explicit here
        for start in range(0, targets.numel(), chunk_size):
            y = targets[start : start + chunk_size]
            rows = [b.hidden[start : start + chunk_size].to(dt) for b, _, dt, _, _ in active]
            z = None
            for (b, _, _, weight, bias), h in zip(active, rows, strict=True):
                logits = F.linear(h, weight, bias).float()  # upcast, like the naive path
                if z is None:
                    z = logits if b.coef == 1.0 else logits.mul_(b.coef)
                else:
                    z.add_(logits, alpha=b.coef)
                del logits
            lse = torch.logsumexp(z, dim=-1)
            if loss.plain:
                total += (lse - z.gather(1, y[:, None]).squeeze(1)).sum()
            else:
                nll = lse - z.gather(1, y[:, None]).squeeze(1)
                eps = loss.label_smoothing
                rows_loss = (1.0 - eps) * nll + eps * (lse - z.mean(dim=-1)) if eps else nll
                weight = torch.exp(-nll) if loss.dft else None  # p_y, held constant
                total += (rows_loss * weight if weight is not None else rows_loss).sum()
            if not with_grad:
                continue
            grad_z = z.sub_(lse[:, None]).exp_()  # softmax(z_mix), in place
            if loss.plain:
                grad_z[torch.arange(y.numel(), device=device), y] -= 1.0  # − e_y
            else:
                grad_z[torch.arange(y.numel(), device=device), y] -= 1.0 - eps
                if eps:
                    grad_z.sub_(eps / grad_z.shape[1])
                if weight is not None:
                    grad_z.mul_(weight[:, None])
            for (b, (g_hidden, g_weight, g_bias), dt, weight, _), h in zip(active, rows, strict=True):
                if g_hidden is None and g_weight is None and g_bias is None:
                    continue  # e.g. a frozen weak branch
                g = grad_z.to(dt)
                if g_hidden is not None:
                    g_hidden[start : start + chunk_size] = torch.mm(g, weight).mul_(b.coef)
                if g_weight is not None:
                    if dt == torch.float32:
                        g_weight.addmm_(g.t(), h, alpha=b.coef)
                    else:
                        g_weight.add_(torch.mm(g.t(), h).float(), alpha=b.coef)
                if g_bias is not None:
                    g_bias.add_(grad_z.sum(dim=0), alpha=b.coef)
    return total, grads


class MixedLinearCrossEntropy(torch.autograd.Function):
    """Autograd wrapper of ``_linear_cross_entropy_chunks`` for a strong and an optional weak branch.

    Inputs: ``(targets, mix_lambda, chunk_size, loss, strong_hidden, strong_weight, strong_bias,
    weak_hidden, weak_weight, weak_bias)``; the output is the loss *sum* over the rows (``loss``: a
    ``TokenLoss``).

    The gradients are computed during the forward, chunk by chunk, and only scaled by
    ``grad_output`` in the backward. Why not recompute in the backward: recomputing costs a second
    projection of every chunk (8 instead of 6 token×vocab×hidden matmuls per branch, a third more
    loss-head time), while keeping the gradients costs one weight-sized float32 buffer per trained
    head (the size of the ``.grad`` it becomes anyway) and one ``(N, hidden)`` buffer per trained
    branch; neither grows with the vocabulary. The backward scales them in place and hands them
    over, so it can run once per forward (``retain_graph`` does not allow a second backward). Only
    inputs that need a gradient get one computed: a frozen weak branch costs its forward projection
    alone. Not twice differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any,
        targets: torch.Tensor,
        mix_lambda: float,
        chunk_size: int,
        loss: TokenLoss,
        strong_hidden: torch.Tensor,
        strong_weight: torch.Tensor,
        strong_bias: torch.Tensor | None,
        weak_hidden: torch.Tensor | None,
        weak_weight: torch.Tensor | None,
        weak_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        needs = ctx.needs_input_grad[4:]
        branches = [_Branch(strong_hidden, strong_weight, strong_bias, mix_lambda, needs[:3])]
        if weak_hidden is not None:
            branches.append(_Branch(weak_hidden, weak_weight, weak_bias, 1.0 - mix_lambda, needs[3:]))
        total, grads = _linear_cross_entropy_chunks(branches, targets, chunk_size, loss)
        inputs = (strong_hidden, strong_weight, strong_bias, weak_hidden, weak_weight, weak_bias)
        ctx.dtypes = [None if t is None else t.dtype for t in inputs[: 3 * len(branches)]]
        ctx.grads = [g for branch in grads for g in branch]  # not inputs: plain attributes, freed by backward
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError(
                "backward through the fused loss ran twice: its gradients are computed in the forward and "
                "handed over (scaled in place) by the first backward. Compute the loss again instead."
            )
        out = [
            None if g is None else g.mul_(grad_output).to(dtype)
            for g, dtype in zip(grads, ctx.dtypes, strict=True)
        ]
        return (None, None, None, None, *out, *[None] * (6 - len(out)))


def mixed_linear_cross_entropy(
    strong_hidden: torch.Tensor,
    strong_weight: torch.Tensor,
    weak_hidden: torch.Tensor | None,
    weak_weight: torch.Tensor | None,
    targets: torch.Tensor,
    mix_lambda: float,
    strong_bias: torch.Tensor | None = None,
    weak_bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    loss: TokenLoss = PLAIN,
) -> torch.Tensor:
    """Eq. 5-6 on rows: ``Σ_n CE(softmax(λ·z_strong + (1−λ)·z_weak), y_n)`` with ``z = h Wᵀ + b``.

    ``*_hidden`` are ``(N, H)`` rows already selected (see ``completion_positions``), ``targets`` their
    ``(N,)`` tokens. Returns the sum over rows (float32). Without a weak branch, ``z_weak ≡ 0``:
    the cross-entropy of ``λ·z_strong`` (plain cross-entropy at λ = 1). ``chunk_size`` (rows per
    chunk) defaults to ``default_chunk_size(vocab)``; ``loss`` picks a ``TokenLoss`` variant.
    """
    chunk = chunk_size or default_chunk_size(strong_weight.shape[0])
    inputs = (strong_hidden, strong_weight, strong_bias, weak_hidden, weak_weight, weak_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return MixedLinearCrossEntropy.apply(targets, mix_lambda, chunk, loss, *inputs)
    branches = [_Branch(strong_hidden, strong_weight, strong_bias, mix_lambda, (False,) * 3)]
    if weak_hidden is not None:
        branches.append(_Branch(weak_hidden, weak_weight, weak_bias, 1.0 - mix_lambda, (False,) * 3))
    return _linear_cross_entropy_chunks(branches, targets, chunk, loss)[0]


def fused_mixed_logit_cross_entropy(
    strong_hidden: torch.Tensor,
    strong_head: nn.Module,
    weak_hidden: torch.Tensor,
    weak_head: nn.Module,
    labels: torch.Tensor,
    mix_lambda: float,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``mixed_logit_cross_entropy`` (Eq. 6) from the models' final hidden states and output heads.

    ``*_hidden`` are ``(batch, seq, hidden)`` (what goes into each head, see
    ``wmss.heads.final_hidden_states``), ``*_head`` modules with ``weight`` and optional ``bias``
    (a weight tied to the input embedding gets both gradients). Same value, same gradients, same
    ``num_items_in_batch`` semantics as the naive loss, without materialising any logits tensor.
    """
    strong_rows, targets = completion_positions(strong_hidden, labels)
    weak_rows, _ = completion_positions(weak_hidden, labels)
    total = mixed_linear_cross_entropy(
        strong_rows,
        strong_head.weight,
        weak_rows,
        weak_head.weight,
        targets,
        mix_lambda,
        getattr(strong_head, "bias", None),
        getattr(weak_head, "bias", None),
        chunk_size,
    )
    return total / (num_items_in_batch if num_items_in_batch is not None else max(targets.numel(), 1))


def fused_completion_cross_entropy(
    hidden: torch.Tensor,
    head: nn.Module,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int | None = None,
    loss: TokenLoss = PLAIN,
) -> torch.Tensor:
    """``completion_cross_entropy`` (SFT, or a ``TokenLoss`` variant) from the model's final hidden
    states and output head."""
    rows, targets = completion_positions(hidden, labels)
    total = mixed_linear_cross_entropy(
        rows, head.weight, None, None, targets, 1.0, getattr(head, "bias", None), None, chunk_size, loss
    )
    return total / (num_items_in_batch if num_items_in_batch is not None else max(targets.numel(), 1))


# ---------------------------------------------------------------- baselines: UNDIAL and DPO
#
