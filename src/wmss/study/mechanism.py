"""The mechanism behind the saturation regime (issue 13, part B3), measured on a study's checkpoints.

The paper's argument: after SFT has saturated, the model's own cross-entropy gradient on the tokens it
already predicts with near certainty is tiny (``p − e_y`` ≈ 0), while under WD-JT the strong model's
gradient is ``λ·(P_mix − e_y)``, and mixing in a weak model's logits lowers ``P_mix(y)`` on exactly those
tokens, so their gradient "comes back". Per seed of a study with a learning curve this module measures,
with ``wmss.diagnostics.saturation_statistics`` on every training example:

- ``start``: the plateau model M_E* alone (its saturated-token share, their share of the SFT gradient,
  the SFT gradient norm on them) and, for each weak model an arm of the study uses (M0, and M_(E*−1)
  where an arm has ``weak: previous``), the strong model's WD-JT gradient on the same tokens at λ = 0.5
  and its ratio to the SFT one (``wdjt_over_sft_on_saturated``);
- ``arms``: each finished ``from_curve`` arm's final model alone, i.e. how saturated it ended up.

The start is written to ``curve/seed-<s>/mechanism.json``, each arm's measurement to
``saturation.json`` in that arm's run directory (each record lives with the run it measures, so an
archive that takes runs from several machines keeps them all); finished entries are not measured again.
"""

from __future__ import annotations

import logging
from typing import Any

from wmss.io import atomic_write_json, read_json
from wmss.rundir import finished_phases
from wmss.study.layout import arm_dir, curve_dir, curve_model, plateau_epoch, setting_overrides, study_config
from wmss.study.spec import Study

log = logging.getLogger("wmss")

MECHANISM_FILE = "mechanism.json"
ARM_FILE = "saturation.json"
MIX_LAMBDA = 0.5  # the paper's λ, at which the start is measured for every weak model


def weak_models(study: Study, seed: int, plateau: int) -> dict[str, str]:
    """The weak models the study's ``from_curve`` arms pair with M_E* (``plateau``): ``M0`` always,
    ``M_(E*-1)`` when an arm has ``weak: previous`` and the curve has that epoch."""
    from wmss.models import resolve_model

    weak = {"M0": resolve_model(str(study.run["model"]))}
    if plateau >= 2 and any(a.weak == "previous" for a in study.arms if a.from_curve):
        weak["M_(E*-1)"] = str(curve_model(study, seed, plateau - 1))
    return weak


def measure_mechanism(study: Study, seed: int, setting: dict[str, Any]) -> dict[str, Any]:
    """Measure what is missing from ``curve/seed-<seed>/mechanism.json`` (see the module) and return it."""
    from wmss.data import load_training_data
    from wmss.diagnostics import saturation_statistics
    from wmss.models import load_model, load_tokenizer

    root = curve_dir(study, seed)
    path = root / MECHANISM_FILE
    plateau = plateau_epoch(study, seed)
    result: dict[str, Any] = read_json(path) if path.is_file() else {}
    if result.get("plateau_epoch") != plateau:  # measured for another curve: start again
        result = {}
    result.update({"seed": seed, "plateau_epoch": plateau, "threshold": 0.99, "mix_lambda": MIX_LAMBDA})
    result.setdefault("start", {})
    result.pop("arms", None)  # each arm's measurement lives in its own run directory
    todo_arms = {}
    for arm in study.arms:
        run = arm_dir(study, arm, seed)
        if arm.from_curve and seed in arm.seeds and finished_phases(run) is not None:
            done = run / ARM_FILE
            if not done.is_file() or read_json(done).get("plateau_epoch") != plateau:
                todo_arms[arm.name] = run
    weak = weak_models(study, seed, plateau)
    todo_start = [name for name in weak if name not in result["start"]]
    if not todo_start and not todo_arms:
        return read_mechanism(study, seed)

    strong_path = str(curve_model(study, seed, plateau))
    tokenizer = load_tokenizer(strong_path)
    cfg = study_config(study, root, seed, setting["format"], setting_overrides(setting), "validset")
    dataset, _ = load_training_data(cfg.data, tokenizer, cfg.train.max_length)

    def stats(model: Any, weak_model: Any = None) -> dict[str, Any]:
        return saturation_statistics(
            model, dataset, tokenizer.pad_token_id, weak=weak_model, mix_lambda=MIX_LAMBDA,
            batch_size=cfg.wmss.entropy_batch_size, fused=cfg.train.fused_loss,
        )  # fmt: skip

    if todo_start:
        options = cfg.model_args.load_kwargs()
        strong = load_model(strong_path, **options).eval()
        for name in todo_start:
            log.info("study: mechanism, seed %d: M_E* (epoch %d) with weak %s", seed, plateau, name)
            result["start"][name] = {
                "weak": weak[name],
                **stats(strong, load_model(weak[name], **options).eval()),
            }
            atomic_write_json(path, result)
        del strong
    for name, run in todo_arms.items():
        log.info("study: mechanism, seed %d: final model of %s", seed, name)
        final = run / "final"
        atomic_write_json(
            run / ARM_FILE,
            {
                "model": str(final),
                "plateau_epoch": plateau,
                **stats(load_model(str(final), **cfg.model_args.load_kwargs()).eval()),
            },
        )
    return read_mechanism(study, seed)


def read_mechanism(study: Study, seed: int) -> dict[str, Any] | None:
    """``curve/seed-<seed>/mechanism.json`` with ``arms``: the measurement of each ``from_curve`` arm of
    that seed (from its run directory); None before the start is measured."""
    path = curve_dir(study, seed) / MECHANISM_FILE
    if not path.is_file():
        return None
    result = read_json(path)
    result["arms"] = {}
    for arm in study.arms:
        measured = arm_dir(study, arm, seed) / ARM_FILE
        if arm.from_curve and seed in arm.seeds and measured.is_file():
            result["arms"][arm.name] = {k: v for k, v in read_json(measured).items() if k != "plateau_epoch"}
    return result
