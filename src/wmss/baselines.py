"""Trainers of the baselines the paper compares WMSS with, on transformers' ``Trainer`` like SFT and WD-JT.

- NEFTune needs no trainer of its own: it is SFT with ``neftune_alpha`` (``wmss.trainers.train_sft``).
- UNDIAL (``train_undial``): the student is trained on the cross-entropy against its frozen starting
  model's distribution with the target token's logit lowered (``undial_loss``).
- DPO and SPIN (``train_preference``): the DPO loss on (chosen, rejected) completion pairs, with the
  reference model's log-probabilities computed once, before training, without gradient
  (``reference_log_probs``), so the reference model is not held during training.
- DFT and label smoothing need no trainer either: they are SFT with another per-token loss
  (``wmss.losses.TokenLoss``).
- ExPO (``extrapolate``) trains nothing: it moves M1's weights further from M0's.

Both use the fused loss head by default (``train.fused_loss``), like SFT: no tokens×vocabulary logits.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from wmss.config import TrainConfig
from wmss.data import IGNORE_INDEX, padding_free_collator
from wmss.heads import capture_head_input, final_hidden_states, output_head, use_fused_head
from wmss.losses import completion_positions, default_chunk_size, shift_for_next_token
from wmss.packing import example_index, packed_forward_kwargs, use_padding_free
from wmss.trainers import CompletionTrainer, PhaseTraining, SegmentedScheduleTrainer, fit, is_zero3

log = logging.getLogger("wmss")

# ---------------------------------------------------------------- losses

# Same two forms: naive on full logits (the oracle), and fused from hidden states and output heads,
# projecting only completion-predicting positions a chunk at a time. The fused forms run each chunk
# under activation checkpointing, so one chunk of vocabulary-wide logits is alive at a time in the
# forward and again in the backward (where it is recomputed: one extra projection per chunk).


def undial_targets(teacher_logits: torch.Tensor, targets: torch.Tensor, strength: float) -> torch.Tensor:
    """UNDIAL's adjusted distribution: ``softmax(z_teacher − strength·e_y)`` per row (float32).

    ``teacher_logits`` is ``(N, V)``, ``targets`` the ``(N,)`` tokens whose logit is lowered.
    """
    adjusted = teacher_logits.float().clone()
    adjusted[torch.arange(targets.numel(), device=targets.device), targets] -= strength
    return torch.softmax(adjusted, dim=-1)


def undial_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    strength: float,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """UNDIAL: cross-entropy of the student against ``undial_targets`` of the (frozen) teacher, on
    completion tokens; averaged like SFT's loss (sum over this batch / ``num_items_in_batch``)."""
    student, targets = shift_for_next_token(student_logits, labels)
    teacher, _ = shift_for_next_token(teacher_logits, labels)
    keep = targets != IGNORE_INDEX
    with torch.no_grad():
        soft = undial_targets(teacher[keep], targets[keep], strength)
    total = F.cross_entropy(student[keep].float(), soft, reduction="sum")
    denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
    return total / denominator


def _linear(rows: torch.Tensor, head: nn.Module) -> torch.Tensor:
    return F.linear(rows, head.weight, getattr(head, "bias", None)).float()


def _checkpointed(fn: Any, *args: Any) -> torch.Tensor:
    if torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def fused_undial_loss(
    student_hidden: torch.Tensor,
    student_head: nn.Module,
    teacher_hidden: torch.Tensor,
    teacher_head: nn.Module,
    labels: torch.Tensor,
    strength: float,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``undial_loss`` from the final hidden states and output heads of student and teacher (no logits
    tensor over the whole batch). The teacher gets no gradient."""
    student_rows, targets = completion_positions(student_hidden, labels)
    teacher_rows, _ = completion_positions(teacher_hidden.detach(), labels)
    chunk = chunk_size or default_chunk_size(student_head.weight.shape[0])

    def chunk_loss(s_rows: torch.Tensor, t_rows: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = undial_targets(_linear(t_rows, teacher_head), y, strength)
        return F.cross_entropy(_linear(s_rows, student_head), soft, reduction="sum")

    total = student_rows.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk):
        part = slice(start, start + chunk)
        total = total + _checkpointed(chunk_loss, student_rows[part], teacher_rows[part], targets[part])
    return total / (num_items_in_batch if num_items_in_batch is not None else max(targets.numel(), 1))


def sequence_log_probs(
    logits: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """``(batch,)`` log-probability of each sequence's completion: Σ over its completion tokens of
    ``log softmax(z)[y]`` (float32). With ``position_ids``: one value per sequence of a padding-free row."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    if position_ids is not None:
        return _per_sequence_sum(token[keep], labels, position_ids)
    return (token * keep).sum(dim=-1)


def _per_sequence_sum(token: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Sum of the completion positions' ``token`` values per sequence of a padding-free row."""
    keep = labels[:, 1:] != IGNORE_INDEX
    sequence = example_index(position_ids)[:, 1:][keep]
    out = torch.zeros(int((position_ids == 0).sum()), dtype=torch.float32, device=labels.device)
    return out.index_add(0, sequence, token)


def fused_sequence_log_probs(
    hidden: torch.Tensor,
    head: nn.Module,
    labels: torch.Tensor,
    chunk_size: int | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sequence_log_probs`` from the final hidden states and output head."""
    rows, targets = completion_positions(hidden, labels)
    keep = labels[:, 1:] != IGNORE_INDEX
    sequence = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(keep)[keep]
    chunk = chunk_size or default_chunk_size(head.weight.shape[0])

    def chunk_log_probs(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = _linear(h, head)
        return z.gather(1, y[:, None]).squeeze(1) - torch.logsumexp(z, dim=-1)

    parts = [
        _checkpointed(chunk_log_probs, rows[s : s + chunk], targets[s : s + chunk])
        for s in range(0, targets.numel(), chunk)
    ]
    token = torch.cat(parts) if parts else rows.new_zeros(0, dtype=torch.float32)
    if position_ids is not None:
        return _per_sequence_sum(token, labels, position_ids)
    out = torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device)
    return out.index_add(0, sequence, token)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-pair DPO loss (Rafailov et al., 2023) from sequence log-probabilities:
    ``−log σ(β·[(log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))])``."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin)


# ---------------------------------------------------------------- UNDIAL


class UndialTrainer(CompletionTrainer):
    """Completion-only self-distillation against a frozen ``teacher`` whose target logit is lowered by
    ``strength`` (UNDIAL). Same token averaging as SFT (``num_items_in_batch``); checkpoints hold the
    student only (the teacher is the phase's starting model, reloaded on resume)."""

    def __init__(
        self,
        model: nn.Module,
        *args: Any,
        teacher: PreTrainedModel,
        strength: float,
        fused_loss: bool = True,
        **kwargs: Any,
    ):
        super().__init__(model, *args, fused_loss=fused_loss, **kwargs)
        self.compute_loss_func = self._fused_loss if self.fused_head else self._naive_loss
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.strength = strength
        self._teacher_out: torch.Tensor | None = None

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        with torch.no_grad():
            mask, positions = inputs.get("attention_mask"), inputs.get("position_ids")
            if self.fused_head:
                self._teacher_out = final_hidden_states(self.teacher, inputs["input_ids"], mask, positions)
            else:
                self._teacher_out = self.teacher(
                    input_ids=inputs["input_ids"], attention_mask=mask, **packed_forward_kwargs(positions)
                ).logits
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _fused_loss(
        self, outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        (hidden,) = self._captured
        self._captured.clear()
        teacher, self._teacher_out = self._teacher_out, None
        student_head = output_head(self.accelerator.unwrap_model(self.model))
        return fused_undial_loss(
            hidden,
            student_head,
            teacher,
            output_head(self.teacher),
            labels,
            self.strength,
            num_items_in_batch,
        )

    def _naive_loss(
        self, outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        teacher, self._teacher_out = self._teacher_out, None
        return undial_loss(outputs.logits, teacher, labels, self.strength, num_items_in_batch)


def train_undial(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: Any,
    dataset: Dataset,
    train: TrainConfig,
    epochs: float,
    strength: float,
    where: PhaseTraining,
) -> dict[str, Any]:
    """UNDIAL in place on ``student`` (a copy of ``teacher`` at the start), trained as ``where`` says;
    the teacher stays frozen."""
    return fit(
        UndialTrainer,
        student,
        tokenizer,
        dataset,
        train,
        epochs,
        where,
        teacher=teacher,
        strength=strength,
        fused_loss=train.fused_loss,
    )


# ---------------------------------------------------------------- DPO (and SPIN)


class PreferenceCollator:
    """Pads the chosen and the rejected sequences of a batch of pairs into one ``(2B, width)`` batch,
    chosen first (one forward for both), with the reference log-probabilities alongside.
    ``padding_free``: the 2B sequences flattened into one row instead (``wmss.packing``)."""

    def __init__(self, pad_token_id: int, padding_free: bool = False):
        self.pad_token_id = pad_token_id
        self.flatten = padding_free_collator() if padding_free else None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [(f["chosen_input_ids"], f["chosen_labels"]) for f in features]
        sequences += [(f["rejected_input_ids"], f["rejected_labels"]) for f in features]
        if self.flatten is not None:
            batch = self.flatten([{"input_ids": ids, "labels": lab} for ids, lab in sequences])
        else:
            batch = self._padded(sequences)
        if "reference_chosen" in features[0]:
            batch["reference_chosen"] = torch.tensor([f["reference_chosen"] for f in features])
            batch["reference_rejected"] = torch.tensor([f["reference_rejected"] for f in features])
        return batch

    def _padded(self, sequences: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, (ids, lab) in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.as_tensor(ids)
            labels[row, : len(ids)] = torch.as_tensor(lab)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def model_sequence_log_probs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    fused: bool,
    unwrapped: nn.Module | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(batch,)`` completion log-probabilities of ``model`` (``unwrapped``: the bare model behind a
    wrapper such as DDP, whose output head the fused path reads). ``position_ids`` without
    ``attention_mask``: a padding-free row, one value per sequence (``wmss.packing``)."""
    packed = packed_forward_kwargs(position_ids)
    if not fused:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **packed).logits
        return sequence_log_probs(logits, labels, position_ids)
    unwrapped = unwrapped if unwrapped is not None else model
    with capture_head_input(unwrapped) as captured:
        model(input_ids=input_ids, attention_mask=attention_mask, **{"use_cache": False, **packed})
    (hidden,) = captured
    return fused_sequence_log_probs(hidden, output_head(unwrapped), labels, position_ids=position_ids)


def reference_log_probs(
    model: PreTrainedModel,
    pairs: Dataset,
    pad_token_id: int,
    batch_size: int,
    fused: bool = True,
    padding_free: bool = False,
) -> Dataset:
    """``pairs`` with ``reference_chosen``/``reference_rejected``: the completion log-probabilities under
    ``model`` (eval mode, no gradient), computed once before DPO so the reference model is not kept."""
    was_training = model.training
    model.eval()
    fused = use_fused_head([model], fused, "DPO reference")
    collate = PreferenceCollator(pad_token_id, use_padding_free([model], padding_free, "DPO reference"))
    device = next(model.parameters()).device
    loader = DataLoader(pairs, batch_size=batch_size, collate_fn=collate)
    chosen, rejected = [], []
    with torch.no_grad():
        for batch in loader:
            mask, positions = (
                batch[k].to(device) if k in batch else None for k in ("attention_mask", "position_ids")
            )
            logps = model_sequence_log_probs(
                model,
                batch["input_ids"].to(device),
                mask,
                batch["labels"].to(device),
                fused,
                position_ids=positions,
            ).cpu()
            half = logps.shape[0] // 2
            chosen += logps[:half].tolist()
            rejected += logps[half:].tolist()
    model.train(was_training)
    return pairs.add_column("reference_chosen", chosen).add_column("reference_rejected", rejected)


class PreferenceTrainer(SegmentedScheduleTrainer):
    """``Trainer`` on the DPO loss of each pair, averaged over the pairs of a batch (and divided by the
    accumulation steps by Trainer). Checkpoints are Trainer's usual ones."""

    loss_is_scaled_for_ga = False  # a per-batch mean over pairs: Trainer divides by the accumulation steps

    def __init__(self, model: nn.Module, *args: Any, beta: float, fused_loss: bool = True, **kwargs: Any):
        self.fused_head = use_fused_head([model], fused_loss, "DPO")
        self.beta = beta
        super().__init__(model, *args, **kwargs)
        if self.fused_head and is_zero3(self):
            log.warning("DPO: naive loss head under DeepSpeed ZeRO-3 (weights gathered per module call).")
            self.fused_head = False

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        logps = model_sequence_log_probs(
            model,
            inputs["input_ids"],
            inputs.get("attention_mask"),
            inputs["labels"],
            self.fused_head,
            self.accelerator.unwrap_model(model),
            inputs.get("position_ids"),
        )
        ref_chosen, ref_rejected = inputs["reference_chosen"], inputs["reference_rejected"]
        half = ref_chosen.shape[0]
        loss = dpo_loss(logps[:half], logps[half:], ref_chosen, ref_rejected, self.beta).mean()
        return (loss, {"log_probs": logps}) if return_outputs else loss


def train_preference(
    model: PreTrainedModel,
    tokenizer: Any,
    pairs: Dataset,
    train: TrainConfig,
    epochs: float,
    beta: float,
    where: PhaseTraining,
) -> dict[str, Any]:
    """DPO in place on ``model`` over ``pairs`` (columns ``chosen_input_ids``, ``chosen_labels``,
    ``rejected_input_ids``, ``rejected_labels``, ``reference_chosen``, ``reference_rejected``), trained as
    ``where`` says (its ``learning_rate``: the DPO phase's own)."""
    if train.group_by_length:  # the sampler groups by the "length" column: a pair's padded width
        chosen, rejected = pairs["chosen_input_ids"], pairs["rejected_input_ids"]
        pairs = pairs.add_column(
            "length", [max(len(c), len(r)) for c, r in zip(chosen, rejected, strict=True)]
        )
    return fit(
        PreferenceTrainer,
        model,
        tokenizer,
        pairs,
        train,
        epochs,
        where,
        collator=PreferenceCollator(
            tokenizer.pad_token_id, use_padding_free([model], train.padding_free, "DPO")
        ),
        beta=beta,
        fused_loss=train.fused_loss,
    )


# ---------------------------------------------------------------- ExPO


@torch.no_grad()
def extrapolate(start: nn.Module, end: nn.Module, alpha: float) -> nn.Module:
    """ExPO (Zheng et al., 2024): ``θ_end + α·(θ_end − θ_start)`` in place on ``end``, which is returned.

    Every floating-point parameter and buffer moves (a tied output head moves once, with its
    embedding); the two models must have the same architecture and shapes."""
    start_state, moved = start.state_dict(), set()
    for name, tensor in end.state_dict().items():
        if name not in start_state or start_state[name].shape != tensor.shape:
            raise ValueError(f"ExPO needs two models of one architecture: {name} differs between them.")
        if tensor.is_floating_point() and tensor.data_ptr() not in moved:  # a tied tensor moves once
            moved.add(tensor.data_ptr())
            tensor.add_(tensor - start_state[name].to(tensor.dtype), alpha=alpha)
    return end
