"""Algorithm 1 of the paper, and the baselines it is compared with, with a resumable run directory.

``method`` picks what runs after the base model M0 (see ``run_pipeline``): ``wmss`` (Algorithm 1),
``sft`` and ``neftune`` (SFT from M0 for the whole budget), or ``undial``, ``dpo`` and ``spin`` (M1 from
Phase 1 as for WMSS, then the baseline's own pass). Every method shares the data loading, the run
directory, resume, the budget record and evaluation.

The run directory (its layout, manifest, phase names and budget) belongs to ``wmss.rundir``.
Re-running the same command skips finished phases and resumes an unfinished training phase from
its last complete checkpoint. The per-phase commands ``wmss sft`` and ``wmss joint`` run the same
phase functions in a run directory of their own (``run_sft``, ``run_joint``). With ``peft.enabled`` every
training phase trains LoRA adapters on one frozen base (``wmss.lora``).

Under several processes (``accelerate launch``, ``torchrun``; see ``wmss.distributed``) every process runs
this same code: training phases are data-parallel, the entropy pass is sharded and merged, WD-DS is
computed by every process from the same entropy files and checked to be identical, and only the main
process writes files (manifest, entropies, selections, models, logs); the others wait for it after
each phase and read the manifest back. DPO/SPIN pairs are generated, and the final model evaluated,
by the main process alone.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset
from transformers import TrainerCallback

from wmss import distributed
from wmss.config import SFT_METHODS, EvalConfig, RunConfig
from wmss.data import load_training_data
from wmss.diagnostics import diagnostic_sample, entropy_separation, measure_auto_lambda, separation_warning
from wmss.entropy import dataset_entropies, read_entropy_file, write_entropy_file
from wmss.errors import WmssError
from wmss.hub import final_fingerprint, upload_final
from wmss.io import atomic_directory, atomic_write_json, atomic_write_jsonl, file_digest, read_jsonl
from wmss.losses import TokenLoss
from wmss.models import (
    check_compatible,
    check_token_ids,
    load_model,
    load_tokenizer,
    model_identity,
    nonfinite_weight,
    resolve_model,
    save_model,
)
from wmss.rundir import (
    EVAL,
    FINAL,
    M0,
    PAIRS,
    SFT,
    RunDir,
    data_identity,
    entropy_phase,
    selection_phase,
    summary_lines,
    wdjt_phase,
)
from wmss.selection import Selection, active_set, read_selection_draws, select_for_config, selection_rows
from wmss.trainers import gradient_summary, train_joint, train_sft
from wmss.weak_logits import LOADS_WEAK_MODEL

log = logging.getLogger("wmss")


def _for_training(cfg: RunConfig, path: str) -> Any:
    """The model at ``path`` to train: as it is, or with LoRA (``peft.enabled``) its base frozen under an
    adapter (``wmss.lora``)."""
    if cfg.peft.enabled:
        from wmss.lora import trainable_model

        return trainable_model(path, cfg.peft, cfg.seed, *_base_options(cfg))
    return _load(cfg, path)


def _load(cfg: RunConfig, path: str) -> Any:
    """The model at ``path``, loaded as ``model_args`` says (dtype, attention)."""
    return load_model(path, **cfg.model_args.load_kwargs())


def _base_options(cfg: RunConfig) -> tuple[str, str]:
    """A LoRA run's frozen base: its dtype (``model_args.torch_dtype``; at the default float32, bfloat16
    under ``train.bf16``) and attention."""
    dtype = cfg.model_args.torch_dtype
    if dtype == "float32" and cfg.train.bf16:
        dtype = "bfloat16"
    return dtype, cfg.model_args.attn_implementation


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


# ---------------------------------------------------------------- phases


def phase_sft(
    run: RunDir,
    base: str,
    tokenizer: Any,
    dataset: Dataset,
    out: Path,
    epochs: float,
    name: str = SFT,
    neftune_alpha: float | None = None,
    learning_rate: float | None = None,
) -> dict[str, Any]:
    """Phase 1: M1 = SFT(M0, D), completion-only cross-entropy (with NEFTune's noisy embeddings when
    ``neftune_alpha`` is set). Also the training phase of methods ``sft`` and ``neftune``, and WD-JT at
    λ = 1 (``learning_rate``: ``wmss.learning_rate``)."""
    cfg = run.cfg
    where = run.training(name, save_to=out, learning_rate=learning_rate)
    model = _for_training(cfg, base)
    token_loss = TokenLoss(cfg.sft.label_smoothing, dft=cfg.method == "dft")
    result = train_sft(
        model,
        tokenizer,
        dataset,
        cfg.train,
        epochs,
        where,
        neftune_alpha=neftune_alpha,
        token_loss=token_loss,
    )
    del model
    _free_memory()
    extra = {} if neftune_alpha is None else {"neftune_alpha": neftune_alpha}
    if not token_loss.plain:
        extra["token_loss"] = token_loss._asdict()
    if where.segment is not None:
        extra["schedule_segment"] = where.segment._asdict()
    return {
        "model": run.rel(out),
        "start": base,
        "epochs": epochs,
        "examples": len(dataset),
        "learning_rate": learning_rate or cfg.train.learning_rate,
        **extra,
        **run.training_record(result, name),
    }


def given_m1(run: RunDir, base: str, tokenizer: Any) -> str:
    """``sft.checkpoint`` as M1 (Phase 1 skipped), after checking it shares the base's vocabulary."""
    m1 = resolve_model(run.cfg.sft.checkpoint)
    check_compatible(base, m1, tokenizer, load_tokenizer(m1))
    run.phase(SFT, lambda: {"model": m1, "reused": True, "steps": 0})
    return m1


def entropies(run: RunDir, name: str, model_path: str, dataset: Dataset, tokenizer: Any) -> np.ndarray:
    """Eq. 7 for every example under one checkpoint, cached in ``entropy/<name>.jsonl``."""
    path = run.root / "entropy" / f"{name}.jsonl"

    def work() -> dict[str, Any]:
        model = _load(run.cfg, model_path).to(distributed.device())
        values = dataset_entropies(  # every process computes its share; all get every value
            model,
            dataset,
            tokenizer.pad_token_id,
            run.cfg.wmss.entropy_batch_size,
            desc=f"entropy {name}",
            fused=run.cfg.train.fused_loss,
            progress=run.root / "entropy" / f".{name}.partial.jsonl",
            padding_free=run.cfg.train.padding_free,
        )
        del model
        _free_memory()
        if distributed.is_main():
            write_entropy_file(path, dataset["idx"], values)
        return {
            "file": run.rel(path),
            "mean_entropy": float(np.nanmean(values)) if np.isfinite(values).any() else None,
        }

    run.phase(entropy_phase(name), work)
    idx, values = read_entropy_file(path)
    if idx != dataset["idx"]:
        raise WmssError(
            f"{path} was computed on other examples than this run's data; delete it to recompute."
        )
    return values


def phase_selection(
    run: RunDir, t: int, dataset: Dataset, h_weak: np.ndarray, h_strong: np.ndarray
) -> Selection:
    """WD-DS of iteration t (Eq. 9), written to ``selection-<t>.jsonl``.

    Also records the weak–strong separation (the distribution of ΔH = H_strong − H_weak) and warns
    when |mean ΔH| < ``wmss.min_entropy_gap``; the selection itself does not depend on it.
    """
    name = selection_phase(t)
    selection = select_for_config(h_weak, h_strong, run.cfg, seed=run.cfg.seed + t)
    # Every process draws the active set itself, from the same entropy files and seed: prove it is the same.
    distributed.check_same(
        f"the WD-DS selection of iteration {t}", distributed.digest(selection.weights, selection.draws)
    )
    path = run.root / f"{name}.jsonl"

    def work() -> dict[str, Any]:
        if distributed.is_main():
            atomic_write_jsonl(path, selection_rows(dataset["idx"], h_weak, h_strong, selection))
        for note in selection.notes:
            log.warning("%s: %s", name, note)
        delta = h_strong - h_weak
        separation = entropy_separation(h_weak, h_strong, run.cfg.wmss.min_entropy_gap)
        warning = separation_warning(separation, f"iteration {t}'s weak and strong models")
        if warning:
            log.warning("%s: %s", name, warning)
        return {
            "file": run.rel(path),
            "active_examples": len(selection.active_rows),
            "active_fraction": round(selection.active_fraction, 4),
            "dedup": selection.dedup,
            "mean_entropy_weak": float(np.nanmean(h_weak)),
            "mean_entropy_strong": float(np.nanmean(h_strong)),
            "mean_entropy_gap": float(np.nanmean(delta)),
            "entropy_gap": separation,
            "separation_warning": warning,
            "term_mass": selection.term_mass,
            "notes": selection.notes,
        }

    run.phase(name, work)
    return selection


def resolve_mix_lambda(
    cfg: RunConfig, weak: Any, strong: Any, dataset: Dataset, tokenizer: Any, phase: str
) -> tuple[float, dict[str, Any] | None]:
    """λ of Eq. 5 for a WD-JT phase: ``wmss.mix_lambda`` when it is a number; for ``auto``, the
    gradient-share crossover of the two loaded models measured on the diagnostic sample of ``dataset``
    (``wmss.diagnostics``), returned with the measurement."""
    if cfg.wmss.mix_lambda != "auto":
        return float(cfg.wmss.mix_lambda), None
    sample = diagnostic_sample(dataset, cfg)
    measure = partial(measure_auto_lambda, weak, strong, sample, tokenizer.pad_token_id)
    # measured once, by the main process: every process must train with the same λ
    auto = distributed.on_main(
        lambda: measure(cfg.wmss.entropy_batch_size, cfg.train.fused_loss, cfg.train.padding_free)
    )
    log.info(
        "%s: mix_lambda auto: mean centred logit norm %.4f (strong) vs %.4f (weak) on %d positions of %d "
        "examples -> a = %.4f, λ = 1/(1+√a) = %.4f",
        phase,
        auto["strong_centred_norm"],
        auto["weak_centred_norm"],
        auto["positions"],
        auto["examples"],
        auto["a"],
        auto["mix_lambda"],
    )
    return auto["mix_lambda"], auto


def phase_joint_training(
    run: RunDir,
    t: int,
    weak_path: str,
    strong_path: str,
    tokenizer: Any,
    dataset: Dataset,
    active: Dataset,
    out: Path,
) -> dict[str, Any]:
    """WD-JT of iteration t (Eq. 5-6): weak and strong trained together on ``active``; only strong is
    kept, at ``out``. λ as ``resolve_mix_lambda`` says (``auto`` measures on ``dataset``, all of D); at
    λ = 1 the weak model gets no gradient, so the phase is SFT of the strong model and runs as exactly
    that, without loading the weak model. With ``wmss.weak_logits`` other than ``model`` a control
    takes the weak model's place (``wmss.weak_logits``): ``entropy_matched`` reads each row's
    ``weak_entropy`` column of ``active``."""
    cfg, name = run.cfg, wdjt_phase(t)
    if cfg.wmss.mix_lambda == 1.0:  # z_mix = z_strong
        record = phase_sft(
            run,
            strong_path,
            tokenizer,
            active,
            out,
            cfg.wmss.epochs,
            name,
            learning_rate=cfg.wmss.learning_rate,
        )
        return {
            **record,
            "weak": None,
            "strong": strong_path,
            "mix_lambda": 1.0,
            "trained_as": "sft (lambda = 1)",
        }
    check_compatible(weak_path, strong_path, load_tokenizer(weak_path), load_tokenizer(strong_path))
    w = cfg.wmss
    if w.weak_logits == "entropy_matched" and "weak_entropy" not in active.column_names:
        raise WmssError(
            f"{name}: wmss.weak_logits=entropy_matched matches each example's weak-model entropy, which only "
            "`wmss run` computes (its WD-DS entropy pass); run the whole pipeline for this control."
        )
    if cfg.peft.enabled:  # two adapters on one copy of the base weights
        from wmss.lora import trainable_pair

        weak, strong = trainable_pair(weak_path, strong_path, cfg.peft, cfg.seed, *_base_options(cfg))
    elif w.weak_logits in LOADS_WEAK_MODEL:
        weak, strong = _load(cfg, weak_path), _load(cfg, strong_path)
    else:  # a control with no weak model
        weak, strong = None, _load(cfg, strong_path)
    mix_lambda, auto = resolve_mix_lambda(cfg, weak, strong, dataset, tokenizer, name)
    where = run.training(name, save_to=out, learning_rate=cfg.wmss.learning_rate)
    result = train_joint(
        weak, strong, tokenizer, active, cfg.train, w.epochs, mix_lambda, w.freeze_weak, where,
        mix_lambda_end=w.mix_lambda_end, strong_lr_scale=w.strong_lr_scale, weak_logits=w.weak_logits,
    )  # fmt: skip
    del weak, strong
    _free_memory()
    return {
        "model": run.rel(out),
        "weak": weak_path,
        "strong": strong_path,
        "mix_lambda": mix_lambda,
        **({"mix_lambda_auto": auto} if auto else {}),
        **({"mix_lambda_end": w.mix_lambda_end} if w.mix_lambda_end is not None else {}),
        **({"strong_lr_scale": w.strong_lr_scale} if w.strong_lr_scale != 1.0 else {}),
        "freeze_weak": cfg.wmss.freeze_weak,
        **({"weak_logits": w.weak_logits} if w.weak_logits != "model" else {}),
        "epochs": cfg.wmss.epochs,
        "examples": len(active),
        "learning_rate": cfg.wmss.learning_rate or cfg.train.learning_rate,
        **({"schedule_segment": where.segment._asdict()} if where.segment else {}),
        "gradients": gradient_summary(result["log_history"]),
        **run.training_record(result, name),
    }


# ---------------------------------------------------------------- baselines


def _on_device(cfg: RunConfig, path: str) -> Any:
    """A model to generate with or score before training: on this process's GPU when there is one."""
    return _load(cfg, path).to(distributed.device())


def sft_baseline(run: RunDir, base: str, tokenizer: Any, dataset: Dataset) -> str:
    """Methods ``sft``, ``neftune`` and ``dft``: SFT from M0 (NEFTune: with noisy input embeddings; DFT:
    with DFT's loss) for the whole budget, ``sft.epochs``. From ``sft.checkpoint`` (M1, one epoch) they
    train the other ``sft.epochs`` − 1 epochs. Returns the path of the trained model."""
    cfg = run.cfg
    alpha = cfg.neftune.alpha if cfg.method == "neftune" else None
    models_dir = run.root / "models"
    if not cfg.sft.checkpoint:
        name, start, epochs = cfg.method, base, cfg.sft_epochs
        out = models_dir / ("M1" if cfg.method == "sft" else cfg.method)
    else:
        name, start, epochs = f"{cfg.method}-continued", given_m1(run, base, tokenizer), cfg.sft_epochs - 1
        if epochs <= 0:
            log.info("%s: sft.checkpoint is the whole budget (sft.epochs=%s)", cfg.method, cfg.sft_epochs)
            return start
        out = models_dir / name
    run.phase(name, lambda: phase_sft(run, start, tokenizer, dataset, out, epochs, name, neftune_alpha=alpha))
    return str(out)


def phase_undial(run: RunDir, m1: str, tokenizer: Any, dataset: Dataset, out: Path) -> dict[str, Any]:
    """UNDIAL from M1: the student starts as M1 and learns the frozen M1's adjusted distribution."""
    from wmss.baselines import train_undial

    cfg = run.cfg
    student, teacher = _for_training(cfg, m1), _load(cfg, m1)
    where = run.training("undial", save_to=out)
    result = train_undial(
        student, teacher, tokenizer, dataset, cfg.train, cfg.undial.epochs, cfg.undial.strength, where
    )
    del student, teacher
    _free_memory()
    return {
        "model": run.rel(out),
        "start": m1,
        "teacher": m1,
        "strength": cfg.undial.strength,
        "epochs": cfg.undial.epochs,
        "examples": len(dataset),
        **run.training_record(result, "undial"),
    }


def phase_pairs(run: RunDir, m1: str, tokenizer: Any, dataset: Dataset, path: Path) -> dict[str, Any]:
    """DPO / SPIN: M1 answers every training prompt; the answers become preference pairs (``pairs.jsonl``).

    Generated by the main process alone (the others wait, up to ``train.ddp_timeout``), so the pairs are
    the same whatever the number of processes."""
    from wmss.preference import make_pairs

    if not distributed.is_main():
        return {}
    cfg = run.cfg
    model = _on_device(cfg, m1)
    records, stats = make_pairs(model, tokenizer, dataset, cfg)
    del model
    _free_memory()
    atomic_write_jsonl(path, records)
    log.info(
        "pairs: %d of %d prompts give a pair (%d skipped)", stats["pairs"], stats["prompts"], stats["skipped"]
    )
    return {"file": run.rel(path), "model": m1, **stats}


def phase_preference(
    run: RunDir, m1: str, tokenizer: Any, dataset: Dataset, pairs_path: Path, out: Path
) -> dict[str, Any]:
    """DPO / SPIN training from M1 on the pairs, with M1 as the reference model."""
    from wmss.baselines import reference_log_probs, train_preference
    from wmss.preference import pair_dataset

    cfg = run.cfg
    records = read_jsonl(pairs_path)
    pairs = pair_dataset(dataset, records, tokenizer, cfg.train.max_length, spin=cfg.method == "spin")
    if len(pairs) == 0:
        why = "exactly like its completion" if cfg.method == "spin" else "right, or every one wrong"
        raise WmssError(
            f"{cfg.method}: none of the {len(records)} training prompts gave a preference pair: M1 answered "
            f"every prompt {why} (see {pairs_path}). There is nothing to train on."
        )
    model = _for_training(cfg, m1).to(distributed.device())
    pairs = reference_log_probs(
        model, pairs, tokenizer.pad_token_id, cfg.train.per_device_batch_size, cfg.train.fused_loss,
        padding_free=cfg.train.padding_free,
    )  # fmt: skip
    where = run.training(cfg.method, save_to=out, learning_rate=cfg.dpo_learning_rate)
    result = train_preference(model, tokenizer, pairs, cfg.train, cfg.dpo.epochs, cfg.dpo.beta, where)
    del model
    _free_memory()
    return {
        "model": run.rel(out),
        "start": m1,
        "reference": m1,
        "beta": cfg.dpo.beta,
        "learning_rate": cfg.dpo_learning_rate,
        "epochs": cfg.dpo.epochs,
        "examples": len(pairs),
        **run.training_record(result, cfg.method),
    }


def phase_expo(run: RunDir, m0: str, m1: str, tokenizer: Any, out: Path) -> dict[str, Any]:
    """ExPO from M1 away from M0 (``expo.alpha``), no training: ``θ = θ_M1 + α·(θ_M1 − θ_M0)``."""
    from wmss.baselines import extrapolate

    alpha = run.cfg.expo.alpha
    if distributed.is_main():
        save_model(extrapolate(load_model(m0), load_model(m1), alpha), tokenizer, out)
    _free_memory()
    return {"model": run.rel(out), "start": m1, "away_from": m0, "alpha": alpha, "steps": 0}


def from_m1_baseline(run: RunDir, chain: list[str], tokenizer: Any, dataset: Dataset) -> str:
    """Methods ``undial``, ``dpo``, ``spin`` and ``expo``: their own pass from M1 (``chain``: M0, M1);
    returns the path of the model it makes."""
    method, (m0, m1) = run.cfg.method, chain
    out = run.root / "models" / method
    if method == "expo":
        run.phase("expo", partial(phase_expo, run, m0, m1, tokenizer, out))
    elif method == "undial":
        run.phase("undial", partial(phase_undial, run, m1, tokenizer, dataset, out))
    else:
        pairs = run.root / f"{PAIRS}.jsonl"
        run.phase(PAIRS, partial(phase_pairs, run, m1, tokenizer, dataset, pairs))
        run.phase(method, partial(phase_preference, run, m1, tokenizer, dataset, pairs, out))
    return str(out)


def phase_eval(run: RunDir, model_path: str, tokenizer: Any) -> dict[str, Any]:
    """Evaluate the final model on ``eval.task`` / ``eval.path`` (predictions in ``eval/``)."""
    from wmss.evaluation.harness import backend_model, evaluate_one, load_problems, parse_task_spec

    cfg = run.cfg
    task, path = parse_task_spec(None, cfg.eval)
    data = load_problems(task, path, cfg.eval)
    model = backend_model(model_path, tokenizer, cfg)
    summary = evaluate_one(model, tokenizer, task, data, cfg, run.root / "eval")
    del model
    summary = {k: v for k, v in summary.items() if k != "per_problem"}
    atomic_write_json(run.root / "eval" / "results.json", summary)
    return {"eval_config": dataclasses.asdict(cfg.eval), **summary}


def phase_final(run: RunDir, src: Path, dst: Path) -> dict[str, Any]:
    """Publish the last strong model at ``final/`` (hard links where the filesystem allows). With LoRA
    (``peft.merge``) its adapter is merged into the base: ``final/`` is a standard checkpoint, in
    ``model_args.torch_dtype``."""
    from wmss.lora import is_adapter, merged_model

    bad = nonfinite_weight(src)  # every process reads it, so all stop together
    if bad:
        raise WmssError(
            f"final: the model to publish, {src}, holds NaN or infinite weights ({bad}); final/ is not "
            "written. Training diverged or the checkpoint is damaged: lower the learning rate, or check "
            "that model."
        )
    if run.cfg.peft.enabled and run.cfg.peft.merge and is_adapter(src):
        if distributed.is_main():
            save_model(merged_model(str(src), run.cfg.model_args.torch_dtype), load_tokenizer(str(src)), dst)
        return {"model": run.rel(dst), "from": str(src), "merged_adapter": True}

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if distributed.is_main():
        with atomic_directory(dst) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True, copy_function=link_or_copy)
    return {"model": run.rel(dst), "from": str(src)}


# ---------------------------------------------------------------- Algorithm 1


def _start(
    cfg: RunConfig,
    callbacks: list[TrainerCallback] | None,
    inputs: dict[str, Any] | None = None,
    train_dataset: Any = None,
) -> tuple:
    """Base model, tokenizer, training data and the run directory (made once the inputs are usable).
    ``train_dataset``: the training rows as a ``datasets.Dataset`` (or list of rows), for ``data.path``."""
    distributed.init(cfg.train.ddp_timeout)
    with distributed.main_process_first():  # the main process fills a download or GGUF cache first
        base = resolve_model(cfg.model)
        tokenizer = load_tokenizer(cfg.tokenizer or base)
        dataset, report = load_training_data(cfg.data, tokenizer, cfg.train.max_length, train_dataset)
    check_token_ids(base, dataset, cfg.tokenizer or base)
    if train_dataset is None:
        data = data_identity(cfg.data.path, cfg.data.split, cfg.data.subset)
    else:  # what it holds: the tokenised examples (a resumed run must get the same ones)
        content = json.dumps([dataset[k][:] for k in ("idx", "input_ids", "labels")]).encode()
        data = {"train_dataset_sha256": hashlib.sha256(content).hexdigest(), "rows": report.num_rows}
    identities = {"data": data, "base": model_identity(base)}
    for key, path in (("m1", cfg.sft.checkpoint), ("first_weak", cfg.wmss.weak)):
        if path:
            resolved = resolve_model(path)
            if key == "first_weak" and cfg.method == "wmss" and cfg.wmss.iterations > 0:  # checked now, not
                check_compatible(resolved, base, load_tokenizer(resolved), tokenizer)  # after SFT
            identities[key] = model_identity(resolved)
    run = RunDir(cfg, {**identities, **(inputs or {})}, callbacks)
    try:
        run.record_data(report)
    except BaseException:
        run.release()
        raise
    return base, tokenizer, dataset, run


def run_pipeline(
    cfg: RunConfig, callbacks: list[TrainerCallback] | None = None, train_dataset: Any = None
) -> dict[str, Any]:
    """Algorithm 1: SFT, then K iterations of WD-DS + WD-JT; returns the manifest.

    Other ``method`` values run a baseline in its place: ``sft``/``neftune`` train from M0 for their whole
    budget (``sft_baseline``); ``undial``/``dpo``/``spin`` take Phase 1's M1 and run their own pass
    (``from_m1_baseline``). ``callbacks`` go to every Trainer (for logging or tests). ``train_dataset``:
    the training rows as a ``datasets.Dataset`` (or ``DatasetDict``, list of rows), for ``data.path``.

    Launched as several processes, every process calls this; see the module docstring for who does what.
    """
    if cfg.eval.path or cfg.eval.task != "generic":  # the evaluation's inputs, before hours of training
        from wmss.evaluation.harness import load_problems, parse_task_spec

        load_problems(*parse_task_spec(None, cfg.eval), cfg.eval)
    base, tokenizer, dataset, run = _start(cfg, callbacks, train_dataset=train_dataset)
    try:
        return algorithm_1(run, base, tokenizer, dataset)
    finally:
        run.release()


def algorithm_1(run: RunDir, base: str, tokenizer: Any, dataset: Dataset) -> dict[str, Any]:
    """Algorithm 1 in the run directory ``run`` (or the baseline ``method`` names): see ``run_pipeline``."""
    cfg = run.cfg
    models_dir = run.root / "models"
    run.phase(M0, lambda: {"model": base, "source": cfg.model})
    if cfg.method in SFT_METHODS:  # baselines that are SFT from M0 for the whole budget
        last = sft_baseline(run, base, tokenizer, dataset)
        return _finish(run, last, tokenizer, len(dataset))
    chain = [base]  # chain[k] is the path of M_k

    # Phase 1 (initialisation): M1 <- SFT(M0, D), or a given SFT checkpoint
    if cfg.sft.checkpoint:
        chain.append(given_m1(run, base, tokenizer))
    else:
        m1 = models_dir / "M1"
        run.phase(SFT, lambda: phase_sft(run, base, tokenizer, dataset, m1, cfg.sft_epochs))
        chain.append(str(m1))
    if cfg.method != "wmss":  # baselines that continue from M1: undial, dpo, spin, expo
        last = from_m1_baseline(run, chain, tokenizer, dataset)
        return _finish(run, last, tokenizer, len(dataset))

    if cfg.wmss.weak:  # another checkpoint than M0 as the first weak model
        chain[0] = resolve_model(cfg.wmss.weak)
    for t in range(1, cfg.wmss.iterations + 1):
        weak, strong = chain[t - 1], chain[t]  # (M_{t-1}, M_t)
        # WD-DS: entropies under weak and strong, Eq. 9 weights, draw |D| with replacement, de-duplicate
        if cfg.wmss.selection == "all":  # ablation: WD-JT on all of D, no entropy pass
            run.phase(selection_phase(t), lambda: {"active_examples": len(dataset), "active_fraction": 1.0})
            active = dataset
            if cfg.wmss.weak_logits == "entropy_matched":
                active = active.add_column(
                    "weak_entropy", entropies(run, f"M{t - 1}", weak, dataset, tokenizer).tolist()
                )
        else:
            h_weak = entropies(run, f"M{t - 1}", weak, dataset, tokenizer)
            h_strong = entropies(run, f"M{t}", strong, dataset, tokenizer)
            selection = phase_selection(run, t, dataset, h_weak, h_strong)
            if cfg.wmss.weak_logits == "entropy_matched":  # the control matches the weak model's H_w[i]
                dataset_for_t = dataset.add_column("weak_entropy", h_weak.tolist())
            else:
                dataset_for_t = dataset
            active = active_set(dataset_for_t, selection.draws, selection.dedup)
        # WD-JT: train weak and strong jointly on the mixed logits; keep the strong model as M_{t+1}
        out = models_dir / f"M{t + 1}"
        run.phase(
            wdjt_phase(t),
            partial(phase_joint_training, run, t, weak, strong, tokenizer, dataset, active, out),
        )
        chain.append(str(out))
    return _finish(run, chain[-1], tokenizer, len(dataset))


def eval_changed(recorded: dict[str, Any] | None, current: EvalConfig) -> bool:
    """Whether an evaluation made with the eval section ``recorded`` is out of date for ``current``. A key
    the recorded section lacks (added to wmss since) counts as its default value, so upgrading wmss does
    not re-evaluate finished runs whose results the new key would not change."""
    if recorded is None:
        return True
    now, defaults = dataclasses.asdict(current), dataclasses.asdict(EvalConfig())
    return bool(set(recorded) - set(now)) or any(recorded.get(k, defaults[k]) != v for k, v in now.items())


def _finish(run: RunDir, last: str, tokenizer: Any, num_examples: int) -> dict[str, Any]:
    """Publish ``last`` as ``final/``, record the budget, evaluate when a task is set; the manifest."""
    cfg = run.cfg
    final = run.root / FINAL
    republished = run.done(FINAL) is None
    run.phase(FINAL, lambda: phase_final(run, Path(last), final))
    run.record_budget(num_examples)
    if not distributed.is_main():  # the main process evaluates alone; the others are done
        return run.manifest
    if cfg.eval.path or cfg.eval.task != "generic":
        evaluated = run.done(EVAL)
        # final/ published anew (it had been deleted), or the eval section changed: evaluate again
        if evaluated and (republished or eval_changed(evaluated.get("eval_config"), cfg.eval)):
            evaluated["status"] = "stale"
        run.phase(EVAL, lambda: phase_eval(run, str(final), tokenizer), alone=True)
    if final.is_dir():
        from wmss.model_card import write_model_card

        write_model_card(run.manifest, final)
    failed = push_final(run, final) if cfg.hub.push and final.is_dir() else None
    log.info("run finished: final model at %s\n%s", final, "\n".join(summary_lines(run.manifest)))
    if failed:
        raise WmssError(failed)
    return run.manifest


def push_final(run: RunDir, final: Path) -> str | None:
    """Upload ``final/`` to ``hub.model_id`` (``wmss.hub``) unless the manifest records this same
    ``final/`` already uploaded there; record the outcome in ``manifest["hub"]``. A failed upload leaves
    the run as it is (complete): the message saying what failed and what to do is returned, not raised."""
    hub = run.cfg.hub
    fingerprint = final_fingerprint(final, run.manifest["phases"][FINAL].get("finished"))
    before = run.manifest.get("hub", {})
    if (before.get("status"), before.get("model_id"), before.get("final")) == (
        "pushed",
        hub.model_id,
        fingerprint,
    ):
        log.info("hub: final/ already uploaded to %s (%s), skipping", hub.model_id, before.get("commit_url"))
        return None
    log.info("hub: uploading %s to %s", final, hub.model_id)
    message = f"wmss {run.cfg.method}: {run.root.resolve().name}/final"
    record: dict[str, Any] = {"model_id": hub.model_id, "final": fingerprint}
    try:
        record.update(upload_final(final, hub, message), status="pushed")
    except Exception as err:  # whatever stopped it (network, login, rights), the run itself is complete
        record.update(status="failed", error=f"{type(err).__name__}: {' '.join(str(err).split())}")
    run.manifest["hub"] = record
    run.save()
    if record["status"] == "pushed":
        log.info("hub: uploaded final/ to %s (%s)", hub.model_id, record["commit_url"])
        return None
    return (
        f"hub: uploading {final} to {hub.model_id} (hub.model_id) failed: {record['error']}. The run itself "
        f"is complete and its model is in {final}. Check that you are logged in with write access to "
        f"{hub.model_id} ($HF_TOKEN or `hf auth login`), then run the same command again: finished phases "
        f"are skipped and only the upload is retried (or upload by hand: hf upload {hub.model_id} {final})."
    )


# ---------------------------------------------------------------- one phase alone (wmss sft, wmss joint)


def run_sft(cfg: RunConfig, output: str | Path) -> dict[str, Any]:
    """``wmss sft``: Phase 1 alone, in the run directory ``output``; the model is saved at
    ``output/model``. Returns the phase's record."""
    cfg = dataclasses.replace(cfg, output_dir=str(output))
    base, tokenizer, dataset, run = _start(cfg, None)
    out = run.root / "model"
    try:
        return run.phase(SFT, lambda: phase_sft(run, base, tokenizer, dataset, out, cfg.sft_epochs))
    finally:
        run.release()


def run_joint(
    cfg: RunConfig, weak: str, strong: str, selection: str | None, output: str | Path
) -> dict[str, Any]:
    """``wmss joint``: one WD-JT phase (``phase_joint_training``, as in ``wmss run``) of ``strong`` with
    ``weak`` on the active set of the ``selection`` file (``wmss select``; None: all of the data), in the
    run directory ``output``; the strong model is saved at ``output/model``. Returns the phase's record."""
    cfg = dataclasses.replace(cfg, output_dir=str(output), model=strong, tokenizer=cfg.tokenizer or strong)
    weak_path, strong_path = resolve_model(weak), resolve_model(strong)
    inputs = {
        "weak": model_identity(weak_path),
        "strong": model_identity(strong_path),
        "selection": file_digest(selection) if selection and Path(selection).is_file() else selection,
    }
    _, tokenizer, dataset, run = _start(cfg, None, inputs)
    out = run.root / "model"
    try:
        active = dataset
        if selection:
            active = active_set(dataset, read_selection_draws(selection, dataset["idx"]), cfg.dedup)
        return run.phase(
            wdjt_phase(1),
            partial(phase_joint_training, run, 1, weak_path, strong_path, tokenizer, dataset, active, out),
        )
    finally:
        run.release()
