"""Run a study: tune SFT on the validation split, then every arm for its seeds on the test split.

Where each run lives (its layout under the study's ``output_dir``) is ``wmss.study.layout``.
Every run is a resumable `wmss run` directory, so re-running the same command after an
interruption skips what is finished. Nothing here reads the test file until tuning is done.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wmss.config import RunConfig
from wmss.errors import ConfigError, WmssError
from wmss.io import atomic_write_json, read_json
from wmss.pipeline import run_pipeline
from wmss.rundir import EVAL
from wmss.study.layout import (
    arm_dir,
    arm_tuning_path,
    curve_dir,
    curve_model,
    plateau_epoch,
    setting_name,
    setting_overrides,
    study_config,
    training_file,
)
from wmss.study.spec import Arm, Study

log = logging.getLogger("wmss")


def run_one(
    study: Study,
    out: Path,
    seed: int,
    fmt: str,
    overrides: list[str],
    split: str,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """One `wmss run` of the study (``split``: validset or testset is evaluated)."""
    cfg = study_config(study, out, seed, fmt, overrides, split)
    log.info("study: %s (seed %d)", out, seed)
    manifest = run_pipeline(cfg, callbacks=callbacks)
    if not (out / "machine.json").is_file():
        atomic_write_json(out / "machine.json", {"machine": machine()})
    return manifest


def machine() -> str:
    """The hardware a run used, in words (recorded beside each run; the report lists it per row)."""
    import platform

    import torch

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"CPU {platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return f"{device}, torch {torch.__version__}"


def tune(study: Study) -> dict[str, Any]:
    """Coordinate search for SFT (2 epochs, first seed) on the validation split; writes tuning.json.
    A study with ``tuning.fixed`` runs nothing: the fixed setting is recorded as chosen."""
    if study.tuning_fixed is not None:
        result = {"split": None, "candidates": [], "chosen": study.tuning_fixed, "accuracy": None,
                  "fixed": True, "source": study.tuning_source}  # fmt: skip
        atomic_write_json(study.output_dir / "tuning.json", result)
        log.info("study: fixed setting %s (no tuning runs)", setting_name(study.tuning_fixed))
        return result

    def run(setting: dict[str, Any]) -> dict[str, Any]:
        name = setting_name(setting)
        overrides = ["sft.epochs=2", "wmss.iterations=0", *setting_overrides(setting)]
        return run_one(study, study.output_dir / "tune" / name, study.seeds[0], setting["format"], overrides,
                       "validset")  # fmt: skip

    best, best_score, candidates = coordinate_search(dict(study.tuning_start), study.tuning_search, run)
    result = {"split": "validset", "candidates": candidates, "chosen": best, "accuracy": best_score}
    atomic_write_json(study.output_dir / "tuning.json", result)
    log.info("study: tuning chose %s (validation accuracy %.1f%%)", setting_name(best), 100 * best_score)
    return result


def coordinate_search(
    start: dict[str, Any], search: dict[str, list], run: Callable[[dict[str, Any]], dict[str, Any]]
) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """One key at a time, each value of ``search[key]`` replaces the best setting's; a candidate is kept
    only if its validation accuracy is higher (ties keep the earlier). ``run(setting)`` returns the
    manifest of that setting's run (evaluated on the validation split); each setting runs once.
    Returns the best setting, its accuracy, and every candidate's record."""
    scores: dict[str, dict] = {}

    def score(setting: dict[str, Any]) -> float:
        key = repr(sorted(setting.items()))
        if key not in scores:
            manifest = run(setting)
            result, budget = manifest["phases"][EVAL], manifest["budget"]
            scores[key] = {
                "setting": dict(setting),
                "accuracy": result["accuracy"],
                "num_correct": result["num_correct"],
                "num_problems": result["num_problems"],
                "steps": budget["optimizer_steps"],
                "wall_time_s": budget["train_wall_time_s"],
            }
        return scores[key]["accuracy"]

    best, best_score = start, score(start)
    for key, values in search.items():
        for value in values:
            candidate = {**best, key: value}
            value_score = score(candidate)
            if value_score > best_score:
                best, best_score = candidate, value_score
    return best, best_score, list(scores.values())


def chosen_setting(study: Study) -> dict[str, Any]:
    path = study.output_dir / "tuning.json"
    if not path.is_file():
        raise WmssError(f"{path} does not exist: run the tuning stage first (`wmss study run {study.path}`).")
    return read_json(path)["chosen"]


def _arm_overrides(study: Study, arm: Arm, seed: int, setting: dict[str, Any]) -> list[str]:
    overrides = setting_overrides(setting) + arm.overrides
    if arm.from_curve:
        plateau = plateau_epoch(study, seed)
        overrides.append(f"sft.checkpoint={curve_model(study, seed, plateau).resolve()}")
        if arm.weak == "previous":
            if plateau < 2:
                raise WmssError(f"arm {arm.name!r}: the curve of seed {seed} peaks at epoch 1; no M_(E*-1).")
            overrides.append(f"wmss.weak={curve_model(study, seed, plateau - 1).resolve()}")
    if arm.m1_from is not None:
        source = arm_dir(study, study.arm(arm.m1_from), seed)
        m1 = source / "models" / "M1"
        if not (m1 / "config.json").is_file():
            raise WmssError(f"arm {arm.name!r} needs {m1}; run arm {arm.m1_from!r} for seed {seed} first.")
        overrides.append(f"sft.checkpoint={m1.resolve()}")
    return overrides


def tune_arm(study: Study, arm: Arm, setting: dict[str, Any]) -> dict[str, Any]:
    """The arm's ``tune`` keys chosen on the validation split (first seed; coordinate search from the
    first value of each list, ties keep the earlier value); ``tune-arms/<arm>/tuning.json``."""
    path = arm_tuning_path(study, arm)
    if path.is_file() and read_json(path).get("search") == arm.tune:
        return read_json(path)["chosen"]
    seed = study.seeds[0]

    def run(candidate: dict[str, Any]) -> dict[str, Any]:
        name = "-".join(f"{k.split('.')[-1]}{v}" for k, v in candidate.items())
        overrides = _arm_overrides(study, arm, seed, setting) + setting_overrides(candidate)
        return run_one(study, path.parent / name, seed, setting["format"], overrides, "validset")

    start = {key: values[0] for key, values in arm.tune.items()}
    best, best_score, candidates = coordinate_search(start, arm.tune, run)
    result = {"split": "validset", "seed": seed, "search": arm.tune, "candidates": candidates,
              "chosen": best, "accuracy": best_score}  # fmt: skip
    atomic_write_json(path, result)
    log.info("study: arm %s tuned to %s (validation accuracy %.1f%%)", arm.name, best, 100 * best_score)
    return best


def run_arm(study: Study, arm: Arm, seed: int, setting: dict[str, Any]) -> dict[str, Any]:
    overrides = _arm_overrides(study, arm, seed, setting)
    if arm.tune:
        overrides += setting_overrides(tune_arm(study, arm, setting))
    manifest = run_one(study, arm_dir(study, arm, seed), seed, setting["format"], overrides, "testset")
    if study.heldout:
        score_arm_measures(study, arm, seed, setting)
    return manifest


def score_arm_measures(study: Study, arm: Arm, seed: int, setting: dict[str, Any]) -> dict[str, Any] | None:
    """The held-out gold-solution NLL (``wmss.study.heldout``) and the calibration on the test answers
    (``wmss.study.calibration``) of one finished arm run; None if the run has no final model."""
    from wmss.study.calibration import score_calibration
    from wmss.study.heldout import heldout_rows, score_heldout

    run_dir = arm_dir(study, arm, seed)
    if not (run_dir / "final" / "config.json").is_file():
        return None
    rows, made = heldout_rows(study.data_dir, setting["format"], study.train_size, study.subset_seed)
    cfg = study_config(study, run_dir, seed, setting["format"], [], "testset")
    summary = score_heldout(run_dir, cfg.data, cfg.train.max_length, rows, made)
    calibration = score_calibration(run_dir)
    log.info(
        "study: %s seed %d: held-out gold NLL %.4f per token; ECE %.3f, Brier %.3f",
        arm.name, seed, summary["nll_per_token"], calibration["ece"], calibration["brier"],
    )  # fmt: skip
    out = {**summary, "calibration": calibration}
    if (
        study.pass_at_k
        and arm.name in study.pass_at_k["arms"]
        and (study.pass_at_k["seeds"] is None or seed in study.pass_at_k["seeds"])
    ):
        out["pass_at_k"] = sampled_pass_at_k(study, run_dir, cfg)
    return out


def sampled_pass_at_k(study: Study, run_dir: Path, cfg: RunConfig) -> dict[str, Any]:
    """``pass_at_k.json``: the final model's pass@k on the test split from ``study.pass_at_k``'s samples
    per problem at its temperature (the run's own evaluation settings otherwise)."""
    from wmss.evaluation.harness import backend_model, evaluate_one, load_problems, parse_task_spec
    from wmss.models import load_tokenizer

    path = run_dir / "pass_at_k.json"
    if path.is_file():
        return read_json(path)
    spec = study.pass_at_k
    cfg = dataclasses.replace(
        cfg, eval=dataclasses.replace(cfg.eval, num_samples=spec["samples"], temperature=spec["temperature"])
    )
    task, task_path = parse_task_spec(None, cfg.eval)
    tokenizer = load_tokenizer(str(run_dir / "final"))
    model = backend_model(str(run_dir / "final"), tokenizer, cfg)
    summary = evaluate_one(model, tokenizer, task, load_problems(task, task_path, cfg.eval), cfg,
                           run_dir / "eval-pass-at-k")  # fmt: skip
    result = {
        "samples": spec["samples"],
        "temperature": spec["temperature"],
        "pass_at_k": summary["pass_at_k"],
        "per_problem": summary["per_problem"],
    }
    atomic_write_json(path, result)
    return result


def run_curve(study: Study, seed: int, setting: dict[str, Any]) -> dict[str, Any]:
    """SFT of the first seed … for up to ``curve.max_epochs`` epochs, measured after each and stopped at
    the plateau (``wmss.study.curve``)."""
    from wmss.study.curve import EpochProbe

    curve, out = study.curve, curve_dir(study, seed)
    overrides = [
        *setting_overrides(setting),
        "method=sft",
        f"sft.epochs={curve['max_epochs']}",
        "wmss.iterations=0",
    ]
    cfg = study_config(study, out, seed, setting["format"], overrides, "validset")
    probe = EpochProbe(
        cfg, out, training_file(study, setting["format"]), study.data_dir / "validset.json",
        curve["train_sample"], curve["patience"],
    )  # fmt: skip
    return run_one(study, out, seed, setting["format"], overrides, "validset", callbacks=[probe])


def run_study(
    study: Study, stage: str = "all", arms: list[str] | None = None, seeds: list[int] | None = None
) -> None:
    """``stage``: ``tune``, ``curve``, ``arms`` or ``all`` (in that order), or ``heldout`` (score the
    finished arm runs on the held-out problems and their calibration, ``Study.heldout``, and run nothing
    else). The arms with
    several seeds (the main comparison) run first, seed by seed; then the single-seed arms; then, for a
    study with a learning curve, the saturation measurements of ``wmss.study.mechanism``. ``arms`` and
    ``seeds`` run only those arms and seeds (a study spread over machines: the seeds still missing from
    its archive). An interrupted study resumes where it stopped."""
    if seeds is not None and not set(seeds) <= set(study.seeds):
        raise ConfigError(
            f"{study.path}: seed(s) {sorted(set(seeds) - set(study.seeds))} are not among the study's "
            f"seeds {study.seeds}."
        )
    wanted = [s for s in study.seeds if seeds is None or s in seeds]
    if stage == "heldout":
        setting = chosen_setting(study)
        for arm in [study.arm(name) for name in arms] if arms else study.arms:
            for seed in (s for s in arm.seeds if s in wanted):
                score_arm_measures(study, arm, seed, setting)
        return
    if stage in ("tune", "all"):
        tune(study)
    if stage in ("curve", "all") and study.curve is not None:
        setting = chosen_setting(study)
        for seed in study.curve["seeds"]:
            if seed in wanted:
                run_curve(study, seed, setting)
    if stage in ("arms", "all"):
        setting = chosen_setting(study)
        selected = [study.arm(name) for name in arms] if arms else study.arms
        main = [a for a in selected if len(a.seeds) > 1]
        for group in (main, [a for a in selected if a not in main]):
            for seed in wanted:
                for arm in group:
                    if seed in arm.seeds:
                        run_arm(study, arm, seed, setting)
        if any(a.from_curve for a in selected):
            from wmss.study.mechanism import measure_mechanism

            for seed in study.curve["seeds"]:
                if seed in wanted and (curve_dir(study, seed) / "curve.json").is_file():
                    measure_mechanism(study, seed, setting)
