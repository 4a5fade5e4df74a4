"""Trainers of the baselines the paper compares WMSS with, on transformers' ``Trainer`` like SFT and WD-JT.

- NEFTune needs no trainer of its own: it is SFT with ``neftune_alpha`` (``wmss.trainers.train_sft``).
- UNDIAL (``train_undial``): the student is trained on the cross-entropy against its frozen starting
  model's distribution with the target token's logit lowered (``wmss.losses.undial_loss``).
- DPO and SPIN (``train_preference``): the DPO loss on (chosen, rejected) completion pairs, with the
  reference model's log-probabilities computed once, before training, without gradient
  (``reference_log_probs``), so the reference model is not held during training.

Both use the fused loss head by default (``train.fused_loss``), like SFT: no tokens×vocabulary logits.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, Trainer, TrainerCallback

from wmss.config import TrainConfig
from wmss.data import IGNORE_INDEX
from wmss.heads import capture_head_input, final_hidden_states, output_head, use_fused_head
from wmss.losses import dpo_loss, fused_sequence_log_probs, fused_undial_loss, sequence_log_probs, undial_loss
from wmss.trainers import CompletionTrainer, _fit, _zero3

log = logging.getLogger("wmss")


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
            if self.fused_head:
                self._teacher_out = final_hidden_states(
                    self.teacher, inputs["input_ids"], inputs["attention_mask"]
                )
            else:
                self._teacher_out = self.teacher(
                    input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
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
    checkpoint_dir: str | Path,
    seed: int,
    callbacks: list[TrainerCallback] | None = None,
    logging_dir: str | Path | None = None,
    save_to: str | Path | None = None,
) -> dict[str, Any]:
    """UNDIAL in place on ``student`` (a copy of ``teacher`` at the start); the teacher stays frozen.
    With ``save_to`` the student is saved there with ``tokenizer`` (``wmss.trainers.save_trained``)."""
    return _fit(
        UndialTrainer,
        student,
        tokenizer,
        dataset,
        train,
        epochs,
        checkpoint_dir,
        seed,
        callbacks,
        logging_dir,
        save_to=save_to,
        teacher=teacher,
        strength=strength,
        fused_loss=train.fused_loss,
    )


# ---------------------------------------------------------------- DPO (and SPIN)


class PreferenceCollator:
    """Pads the chosen and the rejected sequences of a batch of pairs into one ``(2B, width)`` batch,
    chosen first (one forward for both), with the reference log-probabilities alongside."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [(f["chosen_input_ids"], f["chosen_labels"]) for f in features]
        sequences += [(f["rejected_input_ids"], f["rejected_labels"]) for f in features]
        width = max(len(ids) for ids, _ in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, (ids, lab) in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.as_tensor(ids)
            labels[row, : len(ids)] = torch.as_tensor(lab)
            attention_mask[row, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if "reference_chosen" in features[0]:
            batch["reference_chosen"] = torch.tensor([f["reference_chosen"] for f in features])
            batch["reference_rejected"] = torch.tensor([f["reference_rejected"] for f in features])
        return batch


def model_sequence_log_probs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    fused: bool,
    unwrapped: nn.Module | None = None,
) -> torch.Tensor:
    """``(batch,)`` completion log-probabilities of ``model`` (``unwrapped``: the bare model behind a
    wrapper such as DDP, whose output head the fused path reads)."""
    if not fused:
        return sequence_log_probs(model(input_ids=input_ids, attention_mask=attention_mask).logits, labels)
    unwrapped = unwrapped if unwrapped is not None else model
    with capture_head_input(unwrapped) as captured:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    (hidden,) = captured
    return fused_sequence_log_probs(hidden, output_head(unwrapped), labels)


def reference_log_probs(
    model: PreTrainedModel, pairs: Dataset, pad_token_id: int, batch_size: int, fused: bool = True
) -> Dataset:
    """``pairs`` with ``reference_chosen``/``reference_rejected``: the completion log-probabilities under
    ``model`` (eval mode, no gradient), computed once before DPO so the reference model is not kept."""
    was_training = model.training
    model.eval()
    fused = use_fused_head([model], fused, "DPO reference")
    device = next(model.parameters()).device
    loader = DataLoader(pairs, batch_size=batch_size, collate_fn=PreferenceCollator(pad_token_id))
    chosen, rejected = [], []
    with torch.no_grad():
        for batch in loader:
            logps = model_sequence_log_probs(
                model,
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                batch["labels"].to(device),
                fused,
            ).cpu()
            half = logps.shape[0] // 2
            chosen += logps[:half].tolist()
            rejected += logps[half:].tolist()
    model.train(was_training)
    return pairs.add_column("reference_chosen", chosen).add_column("reference_rejected", rejected)


class PreferenceTrainer(Trainer):
    """``Trainer`` on the DPO loss of each pair, averaged over the pairs of a batch (and divided by the
    accumulation steps by Trainer). Checkpoints are Trainer's usual ones."""

    loss_is_scaled_for_ga = False  # a per-batch mean over pairs: Trainer divides by the accumulation steps

    def __init__(self, model: nn.Module, *args: Any, beta: float, fused_loss: bool = True, **kwargs: Any):
        self.fused_head = use_fused_head([model], fused_loss, "DPO")
        self.beta = beta
        super().__init__(model, *args, **kwargs)
        if self.fused_head and _zero3(self):
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
            inputs["attention_mask"],
            inputs["labels"],
            self.fused_head,
            self.accelerator.unwrap_model(model),
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
    learning_rate: float,
    checkpoint_dir: str | Path,
    seed: int,
    callbacks: list[TrainerCallback] | None = None,
    logging_dir: str | Path | None = None,
    save_to: str | Path | None = None,
) -> dict[str, Any]:
    """DPO in place on ``model`` over ``pairs`` (columns ``chosen_input_ids``, ``chosen_labels``,
    ``rejected_input_ids``, ``rejected_labels``, ``reference_chosen``, ``reference_rejected``); with
    ``save_to`` the trained model is saved there with ``tokenizer`` (``wmss.trainers.save_trained``)."""
    return _fit(
        PreferenceTrainer,
        model,
        tokenizer,
        pairs,
        train,
        epochs,
        checkpoint_dir,
        seed,
        callbacks,
        logging_dir,
        args_overrides={"learning_rate": learning_rate},
        collator=PreferenceCollator(tokenizer.pad_token_id),
        save_to=save_to,
        beta=beta,
        fused_loss=train.fused_loss,
    )
