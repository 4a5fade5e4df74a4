"""Training phases on transformers' ``Trainer``: completion-only SFT and weak+strong joint training.

Optimiser, learning-rate schedule with warm-up, gradient clipping, gradient accumulation, mixed
precision, logging (``report_to``) and checkpoint/resume all come from ``Trainer``. WD-JT trains a
``WeakStrongPair`` module, so one optimiser covers both parameter sets (Algorithm 1).

With ``report_to: tensorboard``, Trainer's TensorBoard callback writes its event files to the
phase's ``logging_dir`` when one is given (the pipeline gives ``RUN_DIR/tensorboard/<phase>``), else
to Trainer's default under the checkpoint directory; ``$TENSORBOARD_LOGGING_DIR`` overrides both. With
``report_to: wandb`` each phase is its own W&B run, grouped by the run directory (``phase_tracking``).

Both phases use the fused loss head by default (``train.fused_loss``): the models run without
their output heads and the loss projects only completion-predicting positions, a chunk at a time.

Under several processes (``accelerate launch``, ``torchrun``) Trainer trains data-parallel (DDP, or
FSDP / DeepSpeed from an accelerate config): the loss of each process is its token sum divided by the
token count of the whole global batch (``num_items_in_batch``, gathered across processes) times the
number of processes, so after DDP's gradient average a step equals one process's step on the global
batch. ``save_to`` gathers a full state dict from every process (FSDP, ZeRO-3) and the main process
writes a standard checkpoint (``save_trained``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from datasets import Dataset
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments, get_scheduler
from transformers.integrations import TensorBoardCallback, WandbCallback, is_tensorboard_available

from wmss import distributed
from wmss.config import DataConfig, TrainConfig
from wmss.data import IGNORE_INDEX, completion_collator
from wmss.errors import ConfigError, TrainingError
from wmss.heads import capture_head_input, final_hidden_states, output_head, use_fused_head
from wmss.io import out_of_space
from wmss.losses import (
    PLAIN,
    TokenLoss,
    completion_cross_entropy,
    completion_positions,
    fused_completion_cross_entropy,
    fused_mixed_logit_cross_entropy,
    mix_logits,
    mixed_linear_cross_entropy,
    mixed_logit_cross_entropy,
    shift_for_next_token,
)
from wmss.models import save_model
from wmss.packing import packed_forward_kwargs, use_padding_free
from wmss.weak_logits import entropy_matched_scales, shuffle_generator

log = logging.getLogger("wmss")


def training_arguments(
    train: TrainConfig, output_dir: str | Path, epochs: float, seed: int, **overrides: Any
) -> TrainingArguments:
    """Map our ``train`` section onto ``TrainingArguments``, with ``train.args`` (further fields, checked
    by ``TrainConfig.check``) on top; ``overrides`` are the phase's own fields (e.g. DPO's own
    ``learning_rate``, NEFTune's ``neftune_noise_alpha``)."""
    values = dict(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=train.per_device_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler_type,
        warmup_steps=train.warmup_ratio,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        bf16=train.bf16,
        activation_checkpointing=train.activation_checkpointing,
        logging_steps=train.logging_steps,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        report_to=train.report_to,
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        ddp_timeout=train.ddp_timeout,
    )
    if train.group_by_length:  # transformers' LengthGroupedSampler: batches of similar lengths
        values["train_sampling_strategy"] = "group_by_length"
    if not train.args:
        return TrainingArguments(**{**values, **overrides})
    try:
        return TrainingArguments(**{**values, **train.args, **overrides})
    except (ValueError, TypeError) as err:
        raise ConfigError(f"train.args {train.args}: TrainingArguments refused them: {err}") from None


def last_complete_checkpoint(checkpoint_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` that was fully written (``trainer_state.json`` is saved last).

    Partly written checkpoints (a kill during saving) are removed so that nothing resumes from them.
    Under N processes each process also saves its RNG state (``rng_state_<rank>.pth``), possibly after
    the main process wrote ``trainer_state.json``, so all N must be there too; the main process looks
    (and removes) and tells the others.
    """
    return distributed.on_main(
        lambda: _last_complete_checkpoint(Path(checkpoint_dir), distributed.world_size())
    )


def _last_complete_checkpoint(root: Path, processes: int) -> str | None:
    if not root.is_dir():
        return None
    found = sorted(
        (int(m.group(1)), p)
        for p in root.iterdir()
        if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
    )
    needed = ["trainer_state.json"]
    if processes > 1:
        needed += [f"rng_state_{r}.pth" for r in range(processes)]
    best = None
    for _, path in found:
        missing = [name for name in needed if not (path / name).is_file()]
        damage = checkpoint_damage(path)
        if missing or damage:
            if damage and not missing:  # written to the end, then damaged (a full disk, a bad copy)
                log.warning("checkpoint %s is damaged (%s): skipped, removed.", path, damage)
            shutil.rmtree(path, ignore_errors=True)
        else:
            best = path
    return str(best) if best else None


def checkpoint_damage(path: Path) -> str | None:
    """Why a checkpoint directory cannot be resumed from (an empty or unreadable file), or None."""
    from safetensors import safe_open

    for file in sorted(path.rglob("*")):
        if not file.is_file():
            continue
        if file.stat().st_size == 0:
            return f"{file.relative_to(path)} is empty"
        try:
            if file.suffix == ".json":
                json.loads(file.read_text())
            elif file.suffix == ".safetensors":
                with safe_open(str(file), "pt") as handle:  # checks that the data fills the file
                    handle.keys()
            elif file.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(file):  # torch.save's zip: a cut file has no central directory
                    pass
        except Exception as err:  # any failure to read it means it cannot be resumed from
            return f"{file.relative_to(path)} cannot be read ({type(err).__name__}: {err})"
    return None


def train_sft(
    model: PreTrainedModel,
    tokenizer: Any,
    dataset: Dataset,
    train: TrainConfig,
    epochs: float,
    where: PhaseTraining,
    neftune_alpha: float | None = None,
    token_loss: TokenLoss = PLAIN,
) -> dict[str, Any]:
    """Completion-only SFT in place on ``model``, trained as ``where`` says (resumed from its checkpoint
    directory, saved to ``where.save_to`` with ``tokenizer``). ``token_loss``: label smoothing or DFT
    (``wmss.losses.TokenLoss``) instead of plain cross-entropy.

    ``neftune_alpha``: NEFTune, through transformers' own hook (``TrainingArguments.neftune_noise_alpha``):
    while training, uniform noise in ±α/√(L·d) is added to the input embeddings, L being the batch's
    padded length and d the hidden size; the hook is inactive in eval mode and removed after training.
    """
    if neftune_alpha is not None and train.padding_free:
        raise ConfigError("NEFTune scales its noise by the padded batch width: set train.padding_free=false.")
    return fit(
        CompletionTrainer,
        model,
        tokenizer,
        dataset,
        train,
        epochs,
        where,
        args_overrides={"neftune_noise_alpha": neftune_alpha},
        fused_loss=train.fused_loss,
        token_loss=token_loss,
    )


def is_zero3(trainer: Trainer) -> bool:
    """DeepSpeed ZeRO-3 gathers a module's weights only while that module runs, so the fused loss head,
    which reads the output head's weight after the head's (skipped) forward, cannot run under it."""
    return trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3


def branch_state(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The entries of a ``WeakStrongPair`` state dict that belong to its ``name`` branch, unprefixed."""
    return {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}


def save_trained(trainer: Trainer, path: str | Path) -> None:
    """Save the trained model at ``path`` as a standard checkpoint, with the tokenizer; for WD-JT the
    strong model alone. Collective: call it on every process.

    Every process takes part in gathering the full state dict (FSDP shards, ZeRO-3 partitions; under
    DDP each process already holds it); the main process writes ``path`` atomically, the others wait.
    """
    wrapped = trainer.deepspeed if trainer.is_deepspeed_enabled else trainer.model
    state = trainer.accelerator.get_state_dict(wrapped)
    if trainer.accelerator.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if isinstance(model, WeakStrongPair):
            model, state = model.strong, branch_state(state, "strong")
        save_model(model, trainer.processing_class, path, state_dict=state)
    trainer.accelerator.wait_for_everyone()


class ScheduleSegment(NamedTuple):
    """Steps ``offset`` to ``offset + phase steps`` of one learning-rate schedule of ``total`` steps
    (warm-up as ``train.warmup_ratio`` of ``total``): lets consecutive phases share one schedule."""

    offset: int
    total: int


def steps_per_pass(examples: int, train: TrainConfig) -> int:
    """Optimizer steps of one pass over ``examples`` rows, counted as Trainer counts them."""
    batches = math.ceil(examples / (train.per_device_batch_size * distributed.world_size()))
    return max(math.ceil(batches / train.gradient_accumulation_steps), 1)


@dataclass
class PhaseTraining:
    """Where and how one training phase trains (built by ``wmss.rundir.RunDir.training``).

    ``checkpoint_dir``: Trainer checkpoints, resumed from when a complete one is there; ``save_to``: where
    the trained model (for WD-JT the strong one) is saved as a standard checkpoint, with the tokenizer;
    ``logging_dir``: TensorBoard event files (with ``train.report_to: tensorboard``); ``learning_rate``
    replaces ``train.learning_rate``; ``segment``: the phase runs that part of a longer schedule.
    """

    checkpoint_dir: Path
    seed: int
    logging_dir: Path | None = None
    save_to: Path | None = None
    callbacks: list[TrainerCallback] | None = None
    learning_rate: float | None = None
    segment: ScheduleSegment | None = None
    phase: str = "training"
    """The phase's name, for messages (``sft``, ``wdjt-1``, …)."""
    run_name: str | None = None
    """The run directory's name: with W&B reporting each phase is its own W&B run, named
    ``<run_name>/<phase>`` and grouped by ``run_name`` (``phase_tracking``). None: transformers' own."""


class SegmentedScheduleTrainer(Trainer):
    """A ``Trainer`` whose learning-rate schedule may be a segment of a longer one (``segment``), and that
    stops with a ``TrainingError`` naming ``phase`` and the step as soon as a loss or the gradient norm is
    NaN or infinite, before the optimizer step (Trainer itself would log the loss as the mean of the
    previous ones and go on, ending with NaN weights). It only reads the values, so the training is the
    same. Under several processes a process's own non-finite loss is acted on at the gradient norm, which
    every process sees alike (gradients are averaged across processes before it): they all stop at the
    same step instead of leaving the others waiting."""

    segment: ScheduleSegment | None = None
    phase: str = "training"
    _nonfinite_loss: float | None = None

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._nonfinite_loss is None and not torch.isfinite(loss).all():
            self._nonfinite_loss = float(loss.detach().float().sum())
            if self.args.world_size == 1:  # alone, stop now; several processes stop together below
                self._diverged("loss", self._nonfinite_loss)
        return loss

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> Any:
        grad_norm = super()._get_grad_norm(model, grad_norm)
        if self._nonfinite_loss is not None:
            self._diverged("loss", self._nonfinite_loss)
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            self._diverged("gradient norm", float(grad_norm))
        return grad_norm

    def _diverged(self, what: str, value: float) -> None:
        raise TrainingError(
            f"{self.phase}: the training {what} is {value} at optimizer step {self.state.global_step + 1} of "
            f"{self.state.max_steps}, so the phase stopped before that step and saved no model. Training has "
            "diverged, or a model it starts from holds NaN/inf weights: lower the learning rate "
            "(train.learning_rate, wmss.learning_rate, wmss.strong_lr_scale, dpo.learning_rate), check the "
            "starting models, and start again in a new output_dir."
        )

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.segment is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        offset, total = self.segment
        whole = get_scheduler(
            self.args.lr_scheduler_type,
            optimizer=optimizer or self.optimizer,
            num_warmup_steps=self.args.get_warmup_steps(total),
            num_training_steps=total,
            scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
        )
        factor = whole.lr_lambdas[0]
        self.lr_scheduler = LambdaLR(optimizer or self.optimizer, lambda step: factor(offset + step))
        self._created_lr_scheduler = True
        return self.lr_scheduler


class CompletionTrainer(SegmentedScheduleTrainer):
    """``Trainer`` for completion-only SFT, with the fused loss head unless ``fused_loss=False``.

    The fused loss is passed to Trainer as its ``compute_loss_func``, so Trainer's own semantics
    hold unchanged: it pops the labels, counts ``num_items_in_batch`` over the whole accumulated
    batch, and the loss is the sum over completion tokens divided by that count. During the model's
    forward the output head is skipped and its input captured (``wmss.heads``); the call still goes
    through the (possibly wrapped) model. Checkpoints are Trainer's usual ones.
    """

    def __init__(
        self,
        model: nn.Module,
        *args: Any,
        fused_loss: bool = True,
        token_loss: TokenLoss = PLAIN,
        **kwargs: Any,
    ):
        fused = use_fused_head([model], fused_loss, "SFT")
        if fused and getattr(model.config, "output_router_logits", False):
            log.warning("SFT: naive loss head for %s (its loss adds a router loss).", type(model).__name__)
            fused = False
        self._captured: list[torch.Tensor] = []
        self.fused_head, self.token_loss = fused, token_loss
        super().__init__(model, *args, compute_loss_func=self._loss_func(), **kwargs)
        if self.fused_head and is_zero3(self):
            log.warning("SFT: naive loss head under DeepSpeed ZeRO-3 (weights are gathered per module call).")
            self.fused_head = False
            self.compute_loss_func = self._loss_func()

    def _loss_func(self) -> Any:
        """The fused head's loss; else, for a ``TokenLoss`` variant, the naive one on the model's logits;
        else None (the model's own loss)."""
        if self.fused_head:
            return self._fused_loss
        if not self.token_loss.plain:
            return lambda outputs, labels, num_items_in_batch=None: completion_cross_entropy(
                outputs.logits, labels, num_items_in_batch, self.token_loss
            )
        return None

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if "position_ids" in inputs:  # a padding-free batch: no KV cache, or the packing goes unseen
            inputs = {**inputs, "use_cache": False}
        if not self.fused_head:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with capture_head_input(self.accelerator.unwrap_model(model)) as self._captured:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _fused_loss(
        self, outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        (hidden,) = self._captured  # exactly one head call per forward
        self._captured.clear()
        head = output_head(self.accelerator.unwrap_model(self.model))
        return fused_completion_cross_entropy(hidden, head, labels, num_items_in_batch, loss=self.token_loss)


def fit(
    trainer_class: type[Trainer],
    model: nn.Module,
    tokenizer: Any,
    dataset: Dataset,
    train: TrainConfig,
    epochs: float,
    where: PhaseTraining,
    args_overrides: dict[str, Any] | None = None,
    collator: Any = None,
    **trainer_kwargs: Any,
) -> dict[str, Any]:
    """Train ``model`` with ``trainer_class`` (a ``SegmentedScheduleTrainer``) as ``where`` says: the
    ``train`` section mapped onto ``TrainingArguments`` (``args_overrides`` on top), resumed from the
    last complete checkpoint, saved to ``where.save_to``. Returns steps, Trainer's metrics and log.

    Without a ``collator``, batches are padded (``CompletionCollator``) or, with ``train.padding_free``
    and a model that honours packed ``position_ids``, flattened into one row (``wmss.packing``)."""
    if "tensorboard" in train.report_to and not is_tensorboard_available():
        raise ConfigError(
            f"train.report_to={train.report_to} needs TensorBoard, which is not installed: "
            "pip install tensorboard (or set train.report_to=none)."
        )
    overrides = {"learning_rate": where.learning_rate or train.learning_rate, **(args_overrides or {})}
    if train.save_steps is None:  # about four checkpoints per phase
        passes = math.ceil(epochs * steps_per_pass(len(dataset), train))
        overrides["save_steps"] = max(1, math.ceil(passes / 4))
    if collator is None:
        models = [model.strong, model.weak] if isinstance(model, WeakStrongPair) else [model]
        flat = use_padding_free(models, train.padding_free, trainer_class.__name__)
        collator = completion_collator(tokenizer.pad_token_id, flat)
    trainer = trainer_class(
        model=model,
        args=training_arguments(train, where.checkpoint_dir, epochs, where.seed, **overrides),
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=where.callbacks,
        **trainer_kwargs,
    )
    trainer.segment, trainer.phase = where.segment, where.phase
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and where.logging_dir and callback.logging_dir is None:
            callback.logging_dir = str(where.logging_dir)  # None unless $TENSORBOARD_LOGGING_DIR is set
    try:
        with phase_tracking(trainer, where):
            result = trainer.train(resume_from_checkpoint=last_complete_checkpoint(where.checkpoint_dir))
    except RuntimeError as err:  # torch.save says "file write failed" on a full disk: say what it is
        if out_of_space(where.checkpoint_dir):
            raise OSError(errno.ENOSPC, "No space left on device", str(where.checkpoint_dir)) from err
        raise
    if where.save_to is not None:
        save_trained(trainer, where.save_to)
    return {"steps": trainer.state.global_step, **result.metrics, "log_history": trainer.state.log_history}


@contextlib.contextmanager
def phase_tracking(trainer: Trainer, where: PhaseTraining) -> Iterator[None]:
    """With W&B among ``trainer``'s reporters and a run directory's name (``where.run_name``), the phase is
    its own W&B run: named ``<run_name>/<phase>``, in the group ``<run_name>`` (``$WANDB_RUN_GROUP``
    replaces it), job type the phase, in ``$WANDB_PROJECT`` (transformers' default ``huggingface``), and
    finished when the phase ends (marked failed if it stops with an error). Left alone, transformers'
    ``WandbCallback`` would log every phase of the process into one run, where ``train/global_step``
    starts again at each phase. The callback logs into the run opened here (it opens none while one is
    active). Only the main process reports."""
    reports = any(isinstance(c, WandbCallback) for c in trainer.callback_handler.callbacks)
    if not (reports and where.run_name and distributed.is_main()):
        yield
        return
    import wandb

    run = wandb.init(
        project=os.getenv("WANDB_PROJECT", "huggingface"),
        name=f"{where.run_name}/{where.phase}",
        group=os.getenv("WANDB_RUN_GROUP") or where.run_name,
        job_type=where.phase,
        reinit="finish_previous",
    )
    try:
        yield
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()


class WeakStrongPair(nn.Module):
    """The two branches of WD-JT. Its forward returns the mixed-logit loss of Eq. 5-6.

    Any ``AutoModelForCausalLM`` works: the pair only calls each model's forward. With
    ``fused_loss`` (the default) the forwards skip the output heads and the loss is computed from
    the final hidden states and heads (``fused_mixed_logit_cross_entropy``); otherwise from full
    logits. With ``freeze_weak`` the weak model gets no gradient and stays in eval mode (an ablation).

    ``weak_logits`` picks the source of ``z_weak`` (``wmss.weak_logits``): the weak model (``model``) or
    a control (``uniform``, ``entropy_matched``: no weak model, ``weak`` is None; ``shuffled``: the weak
    model held fixed); see ``wmss.weak_logits``. ``entropy_matched`` needs each row's ``weak_entropy``
    (the real weak model's Eq. 7 entropy) in the batch.

    The loss is computed inside ``forward``, so under DDP every trainable parameter gets its gradient
    through the wrapped call (a frozen weak branch has none and DDP leaves it out), and under FSDP the
    output heads, which belong to the pair's own (root) unit, are gathered while it runs.
    ``_no_split_modules`` (the layers of both models) lets FSDP and DeepSpeed wrap each decoder layer.
    """

    accepts_loss_kwargs = True  # the loss is divided by the token count of the accumulated batch
    loss_type = "ForCausalLM"  # labels are shifted inside: Trainer counts tokens on labels[..., 1:]

    def __init__(
        self,
        weak: PreTrainedModel | None,
        strong: PreTrainedModel,
        mix_lambda: float,
        freeze_weak: bool = False,
        fused_loss: bool = True,
        mix_lambda_end: float | None = None,
        strong_lr_scale: float = 1.0,
        weak_logits: str = "model",
        seed: int = 0,
    ):
        super().__init__()
        if (weak is None) != (weak_logits in ("uniform", "entropy_matched")):
            raise ValueError(
                f"weak_logits={weak_logits!r} {'needs' if weak is None else 'takes no'} weak model."
            )
        self.weak, self.strong = weak, strong
        self.weak_logits, self.seed = weak_logits, seed
        freeze_weak = freeze_weak or weak_logits != "model"  # the controls train no weak parameters
        self.mix_lambda, self.freeze_weak = mix_lambda, freeze_weak
        self.mix_lambda_start, self.mix_lambda_end = mix_lambda, mix_lambda_end
        self.strong_lr_scale = strong_lr_scale
        self.config = strong.config
        self._no_split_modules = sorted(
            set(getattr(strong, "_no_split_modules", None) or [])
            | set(getattr(weak, "_no_split_modules", None) or [])
        )
        if freeze_weak and weak is not None:
            weak.requires_grad_(False)
            weak.eval()
        self.fused_loss = use_fused_head([m for m in (strong, weak) if m is not None], fused_loss, "WD-JT")
        if (
            self.fused_loss
            and weak_logits == "entropy_matched"
            and getattr(output_head(strong), "bias", None) is not None
        ):
            log.warning(
                "WD-JT: naive loss head for entropy_matched weak logits (the output head has a bias)."
            )
            self.fused_loss = False
        self._step, self._micro_batch = -1, 0

    @property
    def branches(self) -> tuple[str, ...]:
        """The models the pair holds: ``strong`` and, unless its weak logits need none, ``weak``."""
        return ("strong",) if self.weak is None else ("strong", "weak")

    def begin_micro_batch(self, step: int) -> None:
        """Before each training forward: seeds ``shuffled``'s permutation by step and micro-batch."""
        self._micro_batch = self._micro_batch + 1 if step == self._step else 0
        self._step = step

    def anneal(self, progress: float) -> None:
        """With ``mix_lambda_end`` (a variant beyond the paper), λ moves linearly from its start value at
        progress 0 to ``mix_lambda_end`` at progress 1 (the share of the phase's optimizer steps done)."""
        if self.mix_lambda_end is not None:
            self.mix_lambda = self.mix_lambda_start + (self.mix_lambda_end - self.mix_lambda_start) * progress

    def train(self, mode: bool = True) -> WeakStrongPair:
        super().train(mode)
        if self.freeze_weak and self.weak is not None:
            self.weak.eval()
        return self

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        self.strong.activation_checkpointing_enable(**kwargs)
        if not self.freeze_weak:
            self.weak.activation_checkpointing_enable(**kwargs)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        weak_entropy: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``position_ids`` without ``attention_mask``: a padding-free batch (``wmss.packing``);
        ``weak_entropy``: per row, for the ``entropy_matched`` control."""
        if self.weak_logits != "model":
            return {
                "loss": self._control_loss(
                    input_ids, attention_mask, labels, num_items_in_batch, weak_entropy
                )
            }
        if self.fused_loss:
            strong_hidden = final_hidden_states(self.strong, input_ids, attention_mask, position_ids)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_weak):
                weak_hidden = final_hidden_states(self.weak, input_ids, attention_mask, position_ids)
            loss = fused_mixed_logit_cross_entropy(
                strong_hidden,
                output_head(self.strong),
                weak_hidden,
                output_head(self.weak),
                labels,
                self.mix_lambda,
                num_items_in_batch,
            )
            return {"loss": loss}
        packed = packed_forward_kwargs(position_ids)
        strong_logits = self.strong(input_ids=input_ids, attention_mask=attention_mask, **packed).logits
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_weak):
            weak_logits = self.weak(input_ids=input_ids, attention_mask=attention_mask, **packed).logits
        loss = mixed_logit_cross_entropy(
            strong_logits, weak_logits, labels, self.mix_lambda, num_items_in_batch
        )
        return {"loss": loss}

    def _completion_rows(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The completion-predicting rows of ``model``'s forward, hidden states (fused head) or logits,
        and their target tokens."""
        if self.fused_loss:
            return completion_positions(final_hidden_states(model, input_ids, attention_mask), labels)
        rows, targets = shift_for_next_token(
            model(input_ids=input_ids, attention_mask=attention_mask).logits, labels
        )
        keep = targets != IGNORE_INDEX
        return rows[keep], targets[keep]

    def _control_loss(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        num_items_in_batch: int | torch.Tensor | None,
        weak_entropy: torch.Tensor | None,
    ) -> torch.Tensor:
        """Eq. 6 with a control's ``z_weak`` (``wmss.weak_logits``), on the completion-predicting rows."""
        if self.weak_logits == "entropy_matched" and weak_entropy is None:
            raise ValueError(
                "entropy_matched weak logits need the batch's weak_entropy (Eq. 7 of the weak model)."
            )
        example_of_row = (labels[:, 1:] != IGNORE_INDEX).nonzero()[:, 0]
        head = output_head(self.strong)
        strong_rows, targets = self._completion_rows(self.strong, input_ids, attention_mask, labels)
        weak_rows = None
        if self.weak_logits == "entropy_matched":  # β_i·sg(z_strong): scale the rows, not the logits
            scales = entropy_matched_scales(
                strong_rows, head if self.fused_loss else None, example_of_row, weak_entropy
            )
            weak_rows = strong_rows.detach() * scales[:, None].to(strong_rows.dtype)
        elif self.weak_logits == "shuffled":
            with torch.no_grad():
                rows, _ = self._completion_rows(self.weak, input_ids, attention_mask, labels)
            permutation = torch.randperm(
                rows.shape[0], generator=shuffle_generator(self.seed, self._step, self._micro_batch)
            )
            weak_rows = rows[permutation.to(rows.device)]
        if self.fused_loss:
            weak_head = head if self.weak is None else output_head(self.weak)
            total = mixed_linear_cross_entropy(
                strong_rows,
                head.weight,
                weak_rows,
                None if weak_rows is None else weak_head.weight.detach(),
                targets,
                self.mix_lambda,
                getattr(head, "bias", None),
                None
                if weak_rows is None or self.weak is None
                else _detached(getattr(weak_head, "bias", None)),
            )
        else:
            weak_rows = torch.zeros_like(strong_rows) if weak_rows is None else weak_rows
            total = torch.nn.functional.cross_entropy(
                mix_logits(strong_rows, weak_rows, self.mix_lambda), targets, reduction="sum"
            )
        return total / (num_items_in_batch if num_items_in_batch is not None else max(targets.numel(), 1))


def _detached(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach()


class JointTrainer(SegmentedScheduleTrainer):
    """``Trainer`` for a ``WeakStrongPair``: checkpoints hold ``strong/`` and ``weak/`` as standard
    Hugging Face checkpoints (plus the optimiser, scheduler and RNG states Trainer always saves).

    Under FSDP and DeepSpeed, Trainer also writes and resumes from its own sharded model checkpoint;
    ``strong/`` and ``weak/`` are then written from the gathered state dict when FSDP's
    ``state_dict_type`` is ``FULL_STATE_DICT`` (or ZeRO-3 gathers 16-bit weights on save).
    """

    def __init__(self, model: WeakStrongPair, *args: Any, **kwargs: Any):
        super().__init__(model, *args, **kwargs)
        if model.fused_loss and is_zero3(self):
            log.warning(
                "WD-JT: naive loss head under DeepSpeed ZeRO-3 (weights are gathered per module call)."
            )
            model.fused_loss = False
        self._gradient_steps: list[dict[str, float]] = []  # since the last log line
        self.gradient_history: list[dict[str, float]] = []  # every optimizer step of this session

    def create_optimizer(self, model: nn.Module | None = None) -> Any:
        """Trainer's AdamW; with ``strong_lr_scale`` ≠ 1 (a variant beyond the paper) the strong model's
        parameters get their own groups at that multiple of the learning rate."""
        optimizer = super().create_optimizer(model)
        pair: WeakStrongPair = self.accelerator.unwrap_model(self.model)
        if pair.strong_lr_scale != 1.0 and not getattr(self, "_strong_groups_made", False):
            strong = {id(p) for p in pair.strong.parameters()}
            groups = []
            for group in optimizer.param_groups:
                for mine in (True, False):
                    params = [p for p in group["params"] if (id(p) in strong) == mine]
                    if params:
                        scale = pair.strong_lr_scale if mine else 1.0
                        groups.append({**group, "params": params, "lr": group["lr"] * scale})
            optimizer.param_groups.clear()
            for group in groups:
                optimizer.add_param_group(group)
            self._strong_groups_made = True
        return optimizer

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        pair: WeakStrongPair = self.accelerator.unwrap_model(self.model)
        pair.anneal(self.state.global_step / max(self.state.max_steps - 1, 1))
        pair.begin_micro_batch(self.state.global_step)
        return super().training_step(model, inputs, num_items_in_batch)

    def _clip_grad_norm(self, model: nn.Module) -> Any:
        """Trainer's clipping, after measuring each branch's gradient norm (before clipping)."""
        pair: WeakStrongPair = self.accelerator.unwrap_model(self.model)
        norms = {name: 0.0 for name in ("strong", "weak")}  # a control has no weak model: 0
        norms.update({name: _gradient_norm(getattr(pair, name)) for name in pair.branches})
        total = super()._clip_grad_norm(model)
        if None not in norms.values():
            stats = gradient_statistics(norms["strong"], norms["weak"], float(total), self.args.max_grad_norm)
            if pair.mix_lambda_end is not None:
                stats["mix_lambda"] = pair.mix_lambda
            self._gradient_steps.append(stats)
            self.gradient_history.append({"step": self.state.global_step + 1, **stats})
        return total

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds to each training log line the mean, over the steps since the last one, of each
        branch's gradient norm, the clip factor and the strong model's share of the gradient."""
        if "loss" in logs and self._gradient_steps:
            for key in self._gradient_steps[0]:
                logs[key] = round(sum(s[key] for s in self._gradient_steps) / len(self._gradient_steps), 6)
            self._gradient_steps = []
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = Path(output_dir or self.args.output_dir)
        if not self.args.should_save:
            return
        pair: WeakStrongPair = self.accelerator.unwrap_model(self.model)
        for name in pair.branches:
            # state_dict: gathered by Trainer (FSDP, DeepSpeed); None: the branch's own weights
            state = None if state_dict is None else branch_state(state_dict, name)
            getattr(pair, name).save_pretrained(output_dir / name, state_dict=state)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, output_dir / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if self.is_fsdp_enabled:  # Trainer's own sharded FSDP checkpoint
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        from safetensors.torch import load_file

        pair: WeakStrongPair = self.accelerator.unwrap_model(model or self.model)
        for name in pair.branches:
            branch = getattr(pair, name)
            files = sorted((Path(resume_from_checkpoint) / name).glob("*.safetensors"))
            state = {k: v for f in files for k, v in load_file(str(f)).items()}
            from peft import PeftModel, set_peft_model_state_dict

            if isinstance(branch, PeftModel):  # a LoRA branch: its checkpoint holds the adapter only
                result = set_peft_model_state_dict(branch, state)
                if result.unexpected_keys:
                    raise RuntimeError(
                        f"checkpoint {resume_from_checkpoint}/{name} does not match the adapter: "
                        f"unexpected {result.unexpected_keys[:5]}."
                    )
                continue
            missing, unexpected = branch.load_state_dict(state, strict=False)
            tied = set(getattr(branch, "_tied_weights_keys", None) or {})
            if unexpected or set(missing) - tied:
                raise RuntimeError(
                    f"checkpoint {resume_from_checkpoint}/{name} does not match the model: "
                    f"missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}."
                )
            branch.tie_weights()


GRADIENT_KEYS = ("grad_norm_strong", "grad_norm_weak", "clip_factor", "strong_grad_share")


def gradient_summary(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """Mean over a WD-JT phase's training log lines of each ``GRADIENT_KEYS`` entry (empty if none)."""
    out = {}
    for key in GRADIENT_KEYS:
        values = [r[key] for r in log_history if key in r and r[key] == r[key]]
        if values:
            out[key] = round(sum(values) / len(values), 6)
    return out


def _gradient_norm(module: nn.Module) -> float | None:
    """L2 norm of a module's gradients (None where they are sharded across processes, e.g. FSDP)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    if any(type(g).__name__ == "DTensor" for g in grads):
        return None
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))


def gradient_statistics(strong: float, weak: float, total: float, max_norm: float) -> dict[str, float]:
    """What WD-JT's step does to each branch: both gradient norms before clipping, the clip factor
    ``min(1, max_norm / total)`` that scales both alike, and the strong model's share of the squared
    gradient norm, ``‖g_strong‖² / (‖g_strong‖² + ‖g_weak‖²)`` (on the logits the two get λ and 1−λ of
    ``P_mix − e_y``; this is what reaches their parameters)."""
    squares = strong**2 + weak**2
    return {
        "grad_norm_strong": strong,
        "grad_norm_weak": weak,
        "clip_factor": min(1.0, max_norm / (total + 1e-6)) if max_norm > 0 else 1.0,
        "strong_grad_share": strong**2 / squares if squares > 0 else float("nan"),
    }


def train_joint(
    weak: PreTrainedModel,
    strong: PreTrainedModel,
    tokenizer: Any,
    dataset: Dataset,
    train: TrainConfig,
    epochs: float,
    mix_lambda: float,
    freeze_weak: bool,
    where: PhaseTraining,
    mix_lambda_end: float | None = None,
    strong_lr_scale: float = 1.0,
    weak_logits: str = "model",
) -> dict[str, Any]:
    """WD-JT (Eq. 5-6): train weak and strong together on the mixed-logit loss; both updated in place,
    as ``where`` says; ``where.save_to`` receives the strong model alone, with ``tokenizer``.
    ``mix_lambda_end`` and ``strong_lr_scale``: variants beyond the paper; ``weak_logits``: a control in
    place of the weak model's logits (``WeakStrongPair``; ``weak`` is None for those that load none).

    Under DDP ``find_unused_parameters`` is off: every trainable parameter of the pair gets a gradient
    from the mixed loss in every step, and a frozen weak model has no trainable parameter."""
    pair = WeakStrongPair(
        weak, strong, mix_lambda, freeze_weak, train.fused_loss, mix_lambda_end, strong_lr_scale,
        weak_logits, where.seed,
    )  # fmt: skip
    return fit(
        JointTrainer,
        pair,
        tokenizer,
        dataset,
        train,
        epochs,
        where,
        args_overrides={"ddp_find_unused_parameters": False},
    )


# ---------------------------------------------------------------- the public WD-JT trainer


@dataclass
class WDJTConfig(TrainingArguments):
    """``TrainingArguments`` plus WD-JT's own settings (Eq. 5-6), for ``WDJTTrainer``."""

    mix_lambda: float = 0.5
    """λ of Eq. 5: z_mix = λ·z_strong + (1−λ)·z_weak."""
    freeze_weak: bool = False
    """Ablation: the weak model gets no gradient and stays in eval mode."""
    fused_loss: bool = True
    """Project only completion-predicting positions, a chunk at a time (no tokens×vocabulary logits)."""
    padding_free: bool = False
    """TRL's ``padding_free``: the default collator flattens each batch into one row with ``position_ids``
    (``wmss.packing``; padded batches, with a log line, for a model whose attention ignores them)."""
    max_length: int = 1024
    """Tokens per example when ``WDJTTrainer`` tokenises a raw ``train_dataset`` (``train.max_length``)."""
    data_config: dict[str, Any] | None = None
    """``data.*`` keys for tokenising a raw ``train_dataset``, e.g. ``{"assistant_turns": "all"}`` or
    ``{"chat_template": False}`` (``wmss.config.DataConfig``; unset: its defaults)."""
    remove_unused_columns: bool = False  # the completion collator needs input_ids and labels as they are

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.mix_lambda <= 1.0:
            raise ConfigError(
                f"mix_lambda must lie in [0, 1] (Eq. 5 mixes the two logits); got {self.mix_lambda}."
            )
        if self.max_length < 1:
            raise ConfigError(f"max_length must be >= 1; got {self.max_length}.")
        self.data_cfg()  # a bad data_config key fails here, not when the dataset is tokenised

    def data_cfg(self) -> DataConfig:
        from wmss.config import config_from_dict

        return config_from_dict({"data": dict(self.data_config or {})}, "WDJTConfig.data_config").data

    @classmethod
    def from_training_arguments(cls, args: TrainingArguments) -> WDJTConfig:
        """A ``WDJTConfig`` with the fields of plain ``TrainingArguments`` (WD-JT's own at their defaults)."""
        names = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
        values = {k: v for k, v in args.to_dict().items() if k in names}
        values["hub_token"] = args.hub_token  # to_dict masks it
        values["remove_unused_columns"] = False
        return cls(**values)


def _load_for_wdjt(source: str | nn.Module, name: str) -> nn.Module:
    """A model given as an id or path (``wmss.models.resolve_model``: directory, GGUF, hub id) or as a
    module."""
    if isinstance(source, nn.Module):
        return source
    if not isinstance(source, (str, Path)):
        raise ConfigError(f"{name} must be a model id, a path or a model; got {type(source).__name__}.")
    from wmss.models import load_model, resolve_model

    return load_model(resolve_model(str(source)))


def _source_name(source: str | nn.Module | None) -> str | None:
    """Where a model (or the tokenizer beside it) can be loaded from."""
    if isinstance(source, (str, Path)):
        from wmss.models import resolve_model

        return resolve_model(str(source))
    config = getattr(source, "config", None)
    return getattr(config, "_name_or_path", None) or None


def _wdjt_dataset(dataset: Any, tokenizer: Any, args: WDJTConfig, name: str) -> Any:
    """``dataset`` as tokenised examples: a tokenised ``Dataset`` as it is; raw rows in any form
    ``wmss.run`` takes (a Dataset, DatasetDict, list of rows, file, folder or hub name) tokenised
    as ``wmss.run`` tokenises them (``args.data_config``, ``args.max_length``)."""
    from wmss.data import dataset_rows, read_rows, tokenize_examples

    if dataset is None:
        return None
    columns = getattr(dataset, "column_names", None)
    if isinstance(columns, list) and "input_ids" in columns:
        if "labels" not in columns:
            raise ConfigError(
                f"{name} has input_ids but no labels (-100 outside the completion): pass the raw rows "
                "(prompt/completion, messages or text) to be tokenised here, or wmss.tokenize_dataset's "
                "output."
            )
        return dataset
    cfg = args.data_cfg()
    rows = read_rows(str(dataset), cfg.split, cfg.subset) if isinstance(dataset, (str, Path)) else None
    rows = rows if rows is not None else dataset_rows(dataset, cfg.split, name)
    tokenized, report = tokenize_examples(rows, tokenizer, cfg, args.max_length, source=name)
    log.info("WDJTTrainer: %s", report.summary())
    return tokenized


class WDJTTrainer(JointTrainer):
    """WD-JT on a ``transformers.Trainer``, shaped like TRL's trainers: ``model`` is the strong model,
    ``weak_model`` the weak one; both are trained on the cross-entropy of their mixed logits (one
    optimizer over both), and ``save_model`` writes the strong model alone as a standard checkpoint.

    - ``model`` and ``weak_model``: a hub id, a path (checkpoint directory, ``.gguf``, adapter
      directory with ``peft_config``) or a loaded model.
    - ``args``: a ``WDJTConfig``, plain ``TrainingArguments`` (WD-JT's settings at their defaults), or
      None (``WDJTConfig(output_dir="<model name>-WDJT")``).
    - ``processing_class``: the tokenizer; None: loaded from ``model``.
    - ``train_dataset`` (and ``eval_dataset``): tokenised rows (``input_ids``, ``labels``), or raw rows
      in any form ``wmss.run`` takes — TRL's prompt/completion (text or chat turns), ``messages`` and
      ``text`` forms, as a ``Dataset``, ``DatasetDict``, list, file, ``save_to_disk`` folder or hub
      name — tokenised on the way in (``args.data_config``, ``args.max_length``).
    - ``args.padding_free``: the default collator flattens each batch into one row with
      ``position_ids`` (``wmss.packing``).
    - ``peft_config``: a ``peft.LoraConfig``: the weak and the strong model become two adapters on one
      frozen copy of the base weights (``wmss.lora.peft_pair``); ``save_model`` writes the strong adapter.

    Bad arguments raise here, before training. Everything else is ``Trainer``'s (callbacks, logging,
    ``resume_from_checkpoint``, several processes through accelerate)."""

    def __init__(
        self,
        model: str | PreTrainedModel,
        weak_model: str | PreTrainedModel | None = None,
        args: WDJTConfig | TrainingArguments | None = None,
        train_dataset: Any = None,
        processing_class: Any = None,
        data_collator: Any = None,
        peft_config: Any = None,
        **kwargs: Any,
    ):
        if weak_model is None:
            raise ConfigError(
                "WDJTTrainer needs weak_model: the weak model of Eq. 5 (M_{t-1}, e.g. the base) next to "
                "model, the strong one (e.g. its SFT checkpoint)."
            )
        if args is None:
            name = Path(str(_source_name(model) or "model").rstrip("/")).name
            args = WDJTConfig(output_dir=f"{name}-WDJT")
        elif not isinstance(args, WDJTConfig):
            if not isinstance(args, TrainingArguments):
                raise ConfigError(
                    f"args must be a WDJTConfig or TrainingArguments; got {type(args).__name__}."
                )
            args = WDJTConfig.from_training_arguments(args)
        if processing_class is None:
            source = _source_name(model)
            if source is None:
                raise ConfigError("pass processing_class: the model does not say where its tokenizer is.")
            from wmss.models import load_tokenizer

            processing_class = load_tokenizer(source)
        if peft_config is not None:
            from wmss.lora import peft_pair

            weak_model, model = peft_pair(weak_model, model, peft_config, args.seed)
        else:
            weak_model, model = _load_for_wdjt(weak_model, "weak_model"), _load_for_wdjt(model, "model")
        check_same_vocabulary(weak_model, model)
        train_dataset = _wdjt_dataset(train_dataset, processing_class, args, "train_dataset")
        if isinstance(kwargs.get("eval_dataset"), dict):
            kwargs["eval_dataset"] = {
                k: _wdjt_dataset(v, processing_class, args, f"eval_dataset[{k!r}]")
                for k, v in kwargs["eval_dataset"].items()
            }
        elif kwargs.get("eval_dataset") is not None:
            kwargs["eval_dataset"] = _wdjt_dataset(
                kwargs["eval_dataset"], processing_class, args, "eval_dataset"
            )
        pair = WeakStrongPair(weak_model, model, args.mix_lambda, args.freeze_weak, args.fused_loss)
        if data_collator is None:
            pad = processing_class.pad_token_id
            flat = use_padding_free([model, weak_model], args.padding_free, "WDJTTrainer")
            data_collator = completion_collator(
                pad if pad is not None else processing_class.eos_token_id, flat
            )
        super().__init__(
            pair, args=args, train_dataset=train_dataset, data_collator=data_collator,
            processing_class=processing_class, **kwargs,
        )  # fmt: skip

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The strong model alone, as a standard checkpoint with the tokenizer (``output_dir`` default:
        ``args.output_dir``)."""
        if _internal_call:  # Trainer's own checkpoints keep both branches
            super().save_model(output_dir, _internal_call=True)
            return
        save_trained(self, output_dir or self.args.output_dir)


def check_same_vocabulary(weak: nn.Module, strong: nn.Module) -> None:
    """Eq. 5 adds the two models' logits index by index: their output heads must have one vocabulary."""
    weak_vocab, strong_vocab = output_head(weak).weight.shape[0], output_head(strong).weight.shape[0]
    if weak_vocab != strong_vocab:
        raise ConfigError(
            f"the weak model has {weak_vocab} output logits and the strong model {strong_vocab}: WMSS mixes "
            "their logits token by token, so both must come from the same base model and tokenizer."
        )
