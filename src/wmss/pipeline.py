"""Algorithm 1 of the paper, and the baselines it is compared with, with a resumable run directory.

``method`` picks what runs after the base model M0 (see ``run_pipeline``): ``wmss`` (Algorithm 1),
``sft`` and ``neftune`` (SFT from M0 for the whole budget), or ``undial``, ``dpo`` and ``spin`` (M1 from
Phase 1 as for WMSS, then the baseline's own pass). Every method shares the data loading, the run
directory, resume, the budget record and evaluation.

Run directory layout::

    manifest.json            status, config, timings and outputs of every phase; ``budget``: optimizer
                             steps, passes over the data and training wall time of the whole run
    config.yaml              the resolved configuration
    models/M1, models/M2 …   every model of the chain (M0 is recorded as a reference to the base);
                             baselines: models/neftune, models/undial, models/dpo, models/spin
    final/                   the last strong model, a standard Hugging Face checkpoint
    entropy/M<k>.jsonl       Eq. 7 entropies per example for checkpoint M<k> (reused across iterations)
    selection-<t>.jsonl      WD-DS of iteration t: idx, entropy_weak, entropy_strong, weight, draws, active
    pairs.jsonl              dpo/spin: M1's answers per training example, their verdicts and the pair
    checkpoints/<phase>/     Trainer checkpoints of an unfinished training phase (removed when it ends)
    logs/<phase>.json        Trainer log history of a finished training phase
    tensorboard/<phase>/     TensorBoard event files, with ``train.report_to: tensorboard``
    diagnostics/             ``wmss diagnose logits --run``: logits.json, logits.md
    report/                  ``wmss report``: report.html (self-contained) and its PNG figures
    eval/                    predictions and accuracy of the final model, when an eval task is set

Re-running the same command skips finished phases and resumes an unfinished training phase from
its last complete checkpoint. Every file is written atomically.

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
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from datasets import Dataset
from transformers import TrainerCallback

from wmss import __version__, distributed
from wmss.config import RunConfig
from wmss.data import DataReport, load_training_data
from wmss.diagnostics import diagnostic_sample, entropy_separation, measure_auto_lambda, separation_warning
from wmss.entropy import dataset_entropies, read_entropy_file, write_entropy_file
from wmss.errors import ConfigError, WmssError
from wmss.io import atomic_directory, atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from wmss.models import check_compatible, load_model, load_tokenizer, resolve_model
from wmss.selection import Selection, select_for_config, selection_rows
from wmss.trainers import ScheduleSegment, gradient_summary, steps_per_pass, train_joint, train_sft

log = logging.getLogger("wmss")

# Keys that do not change what a run computes; they may differ when a run is resumed.
NON_RESULT_KEYS = (
    "output_dir",
    "eval",
    "train.logging_steps",
    "train.report_to",
    "train.save_steps",
    "train.save_total_limit",
    "train.fused_loss",
    "train.ddp_timeout",
    "wmss.entropy_batch_size",
    "wmss.min_entropy_gap",
)


def _result_config(cfg: RunConfig) -> dict[str, Any]:
    flat = _flatten(cfg.to_dict())
    ignored = NON_RESULT_KEYS
    if cfg.wmss.mix_lambda != "auto":  # the diagnostic sample changes a run only by measuring λ
        ignored += ("wmss.diagnostic_examples",)
    flat["sft.epochs"] = cfg.sft_epochs  # as resolved: unset and its value are the same run
    # The global batch is per_device_batch_size × gradient_accumulation_steps × processes.
    flat["num_processes"] = distributed.world_size()
    return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in ignored)}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class RunDir:
    """The run directory and its ``manifest.json``.

    Under several processes each holds the manifest and only the main process writes it (and every
    other file of the run); after each phase the others wait for it and read the manifest back.
    """

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.root = Path(cfg.output_dir)
        self.manifest_path = self.root / "manifest.json"
        self.root.mkdir(parents=True, exist_ok=True)
        result_cfg = _result_config(cfg)
        if self.manifest_path.is_file():
            self.manifest = json.loads(self.manifest_path.read_text())
            old = self.manifest.get("result_config", {})
            # A key added to the config since the run was made counts as its default value.
            default = {**_flatten(RunConfig().to_dict()), **_result_config(RunConfig()), "num_processes": 1}
            before = {k: old.get(k, default.get(k)) for k in set(old) | set(result_cfg)}
            changed = sorted(k for k, v in before.items() if v != result_cfg.get(k))
            if changed:
                details = "; ".join(f"{k}: {before[k]!r} -> {result_cfg.get(k)!r}" for k in changed[:6])
                processes = (
                    " The number of processes is part of it: the global batch is per_device_batch_size × "
                    "gradient_accumulation_steps × processes."
                    if "num_processes" in changed
                    else ""
                )
                raise ConfigError(
                    f"{self.root} holds a run made with a different configuration ({details}). "
                    "Resuming would mix two experiments: use a new output_dir, or restore those "
                    f"values to resume the run.{processes}"
                )
        else:
            self.manifest = {
                "wmss_version": __version__,
                "created": _now(),
                "result_config": result_cfg,
                "phases": {},
            }
        self.manifest["config"] = cfg.to_dict()
        distributed.barrier()  # every process has read the old manifest before the main one rewrites it
        if distributed.is_main():
            atomic_write_text(self.root / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.save()
        self.sync()

    def save(self) -> None:
        if distributed.is_main():
            atomic_write_json(self.manifest_path, self.manifest)

    def sync(self) -> None:
        """Under several processes: wait until the main process has written, then read its manifest."""
        if distributed.world_size() > 1:
            distributed.barrier()
            if not distributed.is_main():
                self.manifest = json.loads(self.manifest_path.read_text())

    def done(self, phase: str) -> dict | None:
        entry = self.manifest["phases"].get(phase)
        return entry if entry and entry.get("status") == "done" else None

    def phase(self, name: str, work: Callable[[], dict[str, Any]], alone: bool = False) -> dict[str, Any]:
        """Run ``work`` unless ``name`` is already done; record status, timing and its outputs.

        Every process calls it, and waits for the others at the end, unless ``alone``: a phase the main
        process runs after the others have finished (evaluation).
        """
        finished = self.done(name)
        if finished:
            log.info("phase %s: already done, skipping", name)
            return finished
        entry = self.manifest["phases"].setdefault(name, {})
        attempts = entry.get("attempts", 0) + 1
        entry.update(status="running", started=_now(), attempts=attempts)
        self.save()
        log.info("phase %s: started%s", name, f" (attempt {attempts}, resuming)" if attempts > 1 else "")
        start = time.perf_counter()
        outputs = work()
        entry.update(outputs)
        entry.update(status="done", finished=_now(), wall_time_s=round(time.perf_counter() - start, 2))
        self.save()
        if not alone:
            self.sync()
        log.info("phase %s: done in %.1f s", name, entry["wall_time_s"])
        return entry

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _training_record(result: dict[str, Any], run: RunDir, phase: str) -> dict[str, Any]:
    if distributed.is_main():
        atomic_write_json(run.root / "logs" / f"{phase}.json", result["log_history"])
        shutil.rmtree(run.root / "checkpoints" / phase, ignore_errors=True)
        if (run.root / "checkpoints").is_dir() and not any((run.root / "checkpoints").iterdir()):
            (run.root / "checkpoints").rmdir()
    keep = ("steps", "train_loss", "train_runtime", "train_samples_per_second")
    return {k: result[k] for k in keep if k in result}


# ---------------------------------------------------------------- phases


def phase_sft(
    run: RunDir,
    base: str,
    tokenizer: Any,
    dataset: Dataset,
    out: Path,
    callbacks: list[TrainerCallback] | None,
    epochs: float,
    name: str = "sft",
    neftune_alpha: float | None = None,
    learning_rate: float | None = None,
) -> dict[str, Any]:
    """Phase 1: M1 = SFT(M0, D), completion-only cross-entropy (with NEFTune's noisy embeddings when
    ``neftune_alpha`` is set). Also the training phase of methods ``sft`` and ``neftune``, and WD-JT at
    λ = 1 (``learning_rate``: ``wmss.learning_rate``)."""
    cfg = run.cfg
    segment = schedule_segments(cfg, run.manifest["data"]["num_examples"]).get(name)
    model = load_model(base)
    result = train_sft(
        model,
        tokenizer,
        dataset,
        cfg.train,
        epochs,
        run.root / "checkpoints" / name,
        cfg.seed,
        callbacks,
        run.root / "tensorboard" / name,
        neftune_alpha=neftune_alpha,
        save_to=out,
        learning_rate=learning_rate,
        segment=segment,
    )
    del model
    _free_memory()
    extra = {} if neftune_alpha is None else {"neftune_alpha": neftune_alpha}
    if segment is not None:
        extra["schedule_segment"] = segment._asdict()
    return {
        "model": run.rel(out),
        "start": base,
        "epochs": epochs,
        "examples": len(dataset),
        "learning_rate": learning_rate or cfg.train.learning_rate,
        **extra,
        **_training_record(result, run, name),
    }


def given_m1(run: RunDir, base: str, tokenizer: Any) -> str:
    """``sft.checkpoint`` as M1 (Phase 1 skipped), after checking it shares the base's vocabulary."""
    m1 = resolve_model(run.cfg.sft.checkpoint)
    check_compatible(base, m1, tokenizer, load_tokenizer(m1))
    run.phase("sft", lambda: {"model": m1, "reused": True, "steps": 0})
    return m1


def entropies(run: RunDir, name: str, model_path: str, dataset: Dataset, tokenizer: Any) -> np.ndarray:
    """Eq. 7 for every example under one checkpoint, cached in ``entropy/<name>.jsonl``."""
    path = run.root / "entropy" / f"{name}.jsonl"

    def work() -> dict[str, Any]:
        model = load_model(model_path).to(distributed.device())
        values = dataset_entropies(  # every process computes its share; all get every value
            model,
            dataset,
            tokenizer.pad_token_id,
            run.cfg.wmss.entropy_batch_size,
            desc=f"entropy {name}",
            fused=run.cfg.train.fused_loss,
        )
        del model
        _free_memory()
        if distributed.is_main():
            write_entropy_file(path, dataset["idx"], values)
        return {
            "file": run.rel(path),
            "mean_entropy": float(np.nanmean(values)) if np.isfinite(values).any() else None,
        }

    run.phase(f"entropy-{name}", work)
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
    selection = select_for_config(h_weak, h_strong, run.cfg, seed=run.cfg.seed + t)
    # Every process draws the active set itself, from the same entropy files and seed: prove it is the same.
    distributed.check_same(
        f"the WD-DS selection of iteration {t}", distributed.digest(selection.weights, selection.draws)
    )
    path = run.root / f"selection-{t}.jsonl"

    def work() -> dict[str, Any]:
        if distributed.is_main():
            atomic_write_jsonl(path, selection_rows(dataset["idx"], h_weak, h_strong, selection))
        for note in selection.notes:
            log.warning("selection-%d: %s", t, note)
        delta = h_strong - h_weak
        separation = entropy_separation(h_weak, h_strong, run.cfg.wmss.min_entropy_gap)
        warning = separation_warning(separation, f"iteration {t}'s weak and strong models")
        if warning:
            log.warning("selection-%d: %s", t, warning)
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

    run.phase(f"selection-{t}", work)
    return selection


def phase_joint_training(
    run: RunDir,
    t: int,
    weak_path: str,
    strong_path: str,
    tokenizer: Any,
    dataset: Dataset,
    active: Dataset,
    out: Path,
    callbacks: list[TrainerCallback] | None,
) -> dict[str, Any]:
    """WD-JT of iteration t (Eq. 5-6): weak and strong trained together; only strong is kept.

    With ``wmss.mix_lambda: auto``, λ is first set to the gradient-share crossover of the two models,
    measured on the diagnostic sample of the training data ``dataset`` (``wmss.diagnostics``).
    """
    cfg = run.cfg
    if cfg.wmss.mix_lambda == 1.0:
        # z_mix = z_strong: the weak model gets no gradient, so this is SFT of the strong model.
        record = phase_sft(
            run, strong_path, tokenizer, active, out, callbacks, cfg.wmss.epochs, f"wdjt-{t}",
            learning_rate=cfg.wmss.learning_rate,
        )  # fmt: skip
        return {
            **record,
            "weak": None,
            "strong": strong_path,
            "mix_lambda": 1.0,
            "trained_as": "sft (lambda = 1)",
        }
    check_compatible(weak_path, strong_path, load_tokenizer(weak_path), load_tokenizer(strong_path))
    weak, strong = load_model(weak_path), load_model(strong_path)
    mix_lambda, auto = cfg.wmss.mix_lambda, None
    if mix_lambda == "auto":
        sample = diagnostic_sample(dataset, cfg)
        measure = partial(measure_auto_lambda, weak, strong, sample, tokenizer.pad_token_id)
        # measured once, by the main process: every process must train with the same λ
        auto = distributed.on_main(lambda: measure(cfg.wmss.entropy_batch_size, cfg.train.fused_loss))
        mix_lambda = auto["mix_lambda"]
        log.info(
            "wdjt-%d: mix_lambda auto: mean centred logit norm %.4f (strong) vs %.4f (weak) on %d "
            "positions of %d examples -> a = %.4f, λ = 1/(1+√a) = %.4f",
            t,
            auto["strong_centred_norm"],
            auto["weak_centred_norm"],
            auto["positions"],
            auto["examples"],
            auto["a"],
            mix_lambda,
        )
    segment = schedule_segments(cfg, len(dataset)).get(f"wdjt-{t}")
    result = train_joint(
        weak,
        strong,
        tokenizer,
        active,
        cfg.train,
        cfg.wmss.epochs,
        mix_lambda,
        cfg.wmss.freeze_weak,
        run.root / "checkpoints" / f"wdjt-{t}",
        cfg.seed,
        callbacks,
        run.root / "tensorboard" / f"wdjt-{t}",
        save_to=out,
        learning_rate=cfg.wmss.learning_rate,
        segment=segment,
    )
    del weak, strong
    _free_memory()
    return {
        "model": run.rel(out),
        "weak": weak_path,
        "strong": strong_path,
        "mix_lambda": mix_lambda,
        **({"mix_lambda_auto": auto} if auto else {}),
        "freeze_weak": cfg.wmss.freeze_weak,
        "epochs": cfg.wmss.epochs,
        "examples": len(active),
        "learning_rate": cfg.wmss.learning_rate or cfg.train.learning_rate,
        **({"schedule_segment": segment._asdict()} if segment else {}),
        "gradients": gradient_summary(result["log_history"]),
        **_training_record(result, run, f"wdjt-{t}"),
    }


def schedule_segments(cfg: RunConfig, num_examples: int) -> dict[str, ScheduleSegment]:
    """With ``wmss.lr_schedule: whole_run`` (method wmss), each training phase's segment of the one
    schedule over the whole budget: ``sft`` first, then ``wdjt-1`` … ``wdjt-K``, each as long as its
    nominal passes over D; empty otherwise (every phase has its own schedule)."""
    if cfg.method != "wmss" or cfg.wmss.lr_schedule != "whole_run" or cfg.wmss.iterations == 0:
        return {}
    per_pass = steps_per_pass(num_examples, cfg.train)
    lengths = [("sft", math.ceil(cfg.sft_epochs * per_pass))]
    lengths += [
        (f"wdjt-{t}", math.ceil(cfg.wmss.epochs * per_pass)) for t in range(1, cfg.wmss.iterations + 1)
    ]
    total, offset, out = sum(n for _, n in lengths), 0, {}
    for name, n in lengths:
        out[name] = ScheduleSegment(offset, total)
        offset += n
    return out


# ---------------------------------------------------------------- baselines


def _on_device(path: str) -> Any:
    """A model to generate with or score before training: on this process's GPU when there is one."""
    return load_model(path).to(distributed.device())


def sft_baseline(
    run: RunDir, base: str, tokenizer: Any, dataset: Dataset, callbacks: list[TrainerCallback] | None
) -> str:
    """Methods ``sft`` and ``neftune``: SFT from M0 (NEFTune: with noisy input embeddings) for the whole
    budget, ``sft.epochs``. From ``sft.checkpoint`` (M1, one epoch) they train the other
    ``sft.epochs`` − 1 epochs. Returns the path of the trained model."""
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
    run.phase(
        name,
        lambda: phase_sft(run, start, tokenizer, dataset, out, callbacks, epochs, name, neftune_alpha=alpha),
    )
    return str(out)


def phase_undial(
    run: RunDir,
    m1: str,
    tokenizer: Any,
    dataset: Dataset,
    out: Path,
    callbacks: list[TrainerCallback] | None,
) -> dict[str, Any]:
    """UNDIAL from M1: the student starts as M1 and learns the frozen M1's adjusted distribution."""
    from wmss.baselines import train_undial

    cfg = run.cfg
    student, teacher = load_model(m1), load_model(m1)
    result = train_undial(
        student,
        teacher,
        tokenizer,
        dataset,
        cfg.train,
        cfg.undial.epochs,
        cfg.undial.strength,
        run.root / "checkpoints" / "undial",
        cfg.seed,
        callbacks,
        run.root / "tensorboard" / "undial",
        save_to=out,
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
        **_training_record(result, run, "undial"),
    }


def phase_pairs(run: RunDir, m1: str, tokenizer: Any, dataset: Dataset, path: Path) -> dict[str, Any]:
    """DPO / SPIN: M1 answers every training prompt; the answers become preference pairs (``pairs.jsonl``).

    Generated by the main process alone (the others wait, up to ``train.ddp_timeout``), so the pairs are
    the same whatever the number of processes."""
    from wmss.preference import make_pairs

    if not distributed.is_main():
        return {}
    cfg = run.cfg
    model = _on_device(m1)
    records, stats = make_pairs(model, tokenizer, dataset, cfg)
    del model
    _free_memory()
    atomic_write_jsonl(path, records)
    log.info(
        "pairs: %d of %d prompts give a pair (%d skipped)", stats["pairs"], stats["prompts"], stats["skipped"]
    )
    return {"file": run.rel(path), "model": m1, **stats}


def phase_preference(
    run: RunDir,
    m1: str,
    tokenizer: Any,
    dataset: Dataset,
    pairs_path: Path,
    out: Path,
    callbacks: list[TrainerCallback] | None,
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
    model = _on_device(m1)
    pairs = reference_log_probs(
        model, pairs, tokenizer.pad_token_id, cfg.train.per_device_batch_size, cfg.train.fused_loss
    )
    result = train_preference(
        model,
        tokenizer,
        pairs,
        cfg.train,
        cfg.dpo.epochs,
        cfg.dpo.beta,
        cfg.dpo_learning_rate,
        run.root / "checkpoints" / cfg.method,
        cfg.seed,
        callbacks,
        run.root / "tensorboard" / cfg.method,
        save_to=out,
    )
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
        **_training_record(result, run, cfg.method),
    }


def from_m1_baseline(
    run: RunDir, m1: str, tokenizer: Any, dataset: Dataset, callbacks: list[TrainerCallback] | None
) -> str:
    """Methods ``undial``, ``dpo`` and ``spin``: their own pass from M1; returns the trained model's path."""
    method = run.cfg.method
    out = run.root / "models" / method
    if method == "undial":
        run.phase("undial", partial(phase_undial, run, m1, tokenizer, dataset, out, callbacks))
    else:
        pairs = run.root / "pairs.jsonl"
        run.phase("pairs", partial(phase_pairs, run, m1, tokenizer, dataset, pairs))
        run.phase(method, partial(phase_preference, run, m1, tokenizer, dataset, pairs, out, callbacks))
    return str(out)


def record_budget(run: RunDir, num_examples: int) -> dict[str, Any]:
    """``manifest["budget"]``: optimizer steps and passes over D of every training phase and in all, and
    the wall time of everything but evaluation. A pass is epochs × examples trained on / |D| (for DPO and
    SPIN the examples are pairs, each two sequences); an M1 given by ``sft.checkpoint`` is not counted."""
    phases = run.manifest["phases"]
    rows = {}
    for name, entry in phases.items():
        if "steps" not in entry:
            continue
        passes = None
        if entry.get("epochs") is not None and entry.get("examples") is not None:
            passes = round(entry["epochs"] * entry["examples"] / num_examples, 4)
        rows[name] = {"steps": entry["steps"], "passes": passes}
    budget = {
        "method": run.cfg.method,
        "optimizer_steps": sum(r["steps"] for r in rows.values()),
        "passes_over_data": round(sum(r["passes"] or 0.0 for r in rows.values()), 4),
        "train_wall_time_s": round(
            sum(e.get("wall_time_s", 0.0) for k, e in phases.items() if k not in ("M0", "final", "eval")), 2
        ),
        "m1_given": run.cfg.sft.checkpoint,
        "phases": rows,
    }
    if "pairs" in phases:
        budget["generated_tokens"] = phases["pairs"].get("generated_tokens")
    run.manifest["budget"] = budget
    run.save()
    return budget


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
    """Publish the last strong model at ``final/`` (hard links where the filesystem allows)."""

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


def run_pipeline(cfg: RunConfig, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """Algorithm 1: SFT, then K iterations of WD-DS + WD-JT; returns the manifest.

    Other ``method`` values run a baseline in its place: ``sft``/``neftune`` train from M0 for their whole
    budget (``sft_baseline``); ``undial``/``dpo``/``spin`` take Phase 1's M1 and run their own pass
    (``from_m1_baseline``). ``callbacks`` go to every Trainer (for logging or tests).

    Launched as several processes, every process calls this; see the module docstring for who does what.
    """
    distributed.init(cfg.train.ddp_timeout)
    with distributed.main_process_first():  # the main process fills a download or GGUF cache first
        base = resolve_model(cfg.model)
        tokenizer = load_tokenizer(cfg.tokenizer or base)
        dataset, report = load_training_data(cfg.data, tokenizer, cfg.train.max_length)
    run = RunDir(cfg)  # created only once the inputs are known to be usable
    _record_data(run, report)
    models_dir = run.root / "models"
    run.phase("M0", lambda: {"model": base, "source": cfg.model})
    if cfg.method in ("sft", "neftune"):  # baselines that are SFT from M0 for the whole budget
        last = sft_baseline(run, base, tokenizer, dataset, callbacks)
        return _finish(run, last, tokenizer, len(dataset))
    chain = [base]  # chain[k] is the path of M_k

    # Phase 1 (initialisation): M1 <- SFT(M0, D), or a given SFT checkpoint
    if cfg.sft.checkpoint:
        chain.append(given_m1(run, base, tokenizer))
    else:
        m1 = models_dir / "M1"
        run.phase("sft", lambda: phase_sft(run, base, tokenizer, dataset, m1, callbacks, cfg.sft_epochs))
        chain.append(str(m1))
    if cfg.method != "wmss":  # baselines that continue from M1: undial, dpo, spin
        last = from_m1_baseline(run, chain[1], tokenizer, dataset, callbacks)
        return _finish(run, last, tokenizer, len(dataset))

    for t in range(1, cfg.wmss.iterations + 1):
        weak, strong = chain[t - 1], chain[t]  # (M_{t-1}, M_t)
        # WD-DS: entropies under weak and strong, Eq. 9 weights, draw |D| with replacement, de-duplicate
        if cfg.wmss.selection == "all":  # ablation: WD-JT on all of D, no entropy pass
            run.phase(f"selection-{t}", lambda: {"active_examples": len(dataset), "active_fraction": 1.0})
            active = dataset
        else:
            h_weak = entropies(run, f"M{t - 1}", weak, dataset, tokenizer)
            h_strong = entropies(run, f"M{t}", strong, dataset, tokenizer)
            selection = phase_selection(run, t, dataset, h_weak, h_strong)
            active = dataset.select(selection.active_rows)
        # WD-JT: train weak and strong jointly on the mixed logits; keep the strong model as M_{t+1}
        out = models_dir / f"M{t + 1}"
        run.phase(
            f"wdjt-{t}",
            partial(phase_joint_training, run, t, weak, strong, tokenizer, dataset, active, out, callbacks),
        )
        chain.append(str(out))
    return _finish(run, chain[-1], tokenizer, len(dataset))


def _finish(run: RunDir, last: str, tokenizer: Any, num_examples: int) -> dict[str, Any]:
    """Publish ``last`` as ``final/``, record the budget, evaluate when a task is set; the manifest."""
    cfg = run.cfg
    final = run.root / "final"
    run.phase("final", lambda: phase_final(run, Path(last), final))
    record_budget(run, num_examples)
    if not distributed.is_main():  # the main process evaluates alone; the others are done
        return run.manifest
    if cfg.eval.path or cfg.eval.task != "generic":
        evaluated = run.done("eval")
        if evaluated and evaluated.get("eval_config") != dataclasses.asdict(cfg.eval):
            evaluated["status"] = "stale"  # the eval section changed since: evaluate again
        run.phase("eval", lambda: phase_eval(run, str(final), tokenizer), alone=True)
    log.info("run finished: final model at %s", final)
    return run.manifest


def _record_data(run: RunDir, report: DataReport) -> None:
    run.manifest["data"] = report.to_dict()
    run.save()
    log.info("data: %s", report.summary())
