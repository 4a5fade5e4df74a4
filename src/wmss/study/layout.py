"""Where a study's runs live, and how one run of it is configured: the names that the runner, the
mechanism measurement and the report share (``wmss.study.runner`` runs a study with them).

Under the study's ``output_dir``::

    data/<format>/train.jsonl      the training subset with derived solutions (and data.json)
    tune/<setting>/                one `wmss run` directory per tuning candidate (SFT, scored on validset)
    tuning.json                    every candidate's validation accuracy and the chosen setting
    tune-arms/<arm>/               an arm's own tuning runs and its tuning.json
    arms/<arm>/seed-<s>/           one `wmss run` directory per arm and seed (scored on testset)
    curve/seed-<s>/                the SFT learning curve (epochs/epoch-<e>/, curve.json)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from wmss.config import RunConfig, config_from_dict
from wmss.errors import WmssError
from wmss.io import read_json
from wmss.study.mawps import prepare
from wmss.study.spec import Arm, Study

log = logging.getLogger("wmss")

SHORT = {
    "train.learning_rate": "lr",
    "train.per_device_batch_size": "bs",
    "train.gradient_accumulation_steps": "ga",
}


def setting_name(setting: dict[str, Any]) -> str:
    parts = [str(setting["format"])]
    for key in sorted(k for k in setting if k != "format"):
        parts.append(f"{SHORT.get(key, key.split('.')[-1])}{setting[key]}")
    return "-".join(parts)


def setting_overrides(setting: dict[str, Any]) -> list[str]:
    return [f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items() if k != "format"]


def training_file(study: Study, fmt: str) -> Path:
    out = study.output_dir / "data" / fmt
    info = out / "data.json"
    expected = {"format": fmt, "train_size": study.train_size, "subset_seed": study.subset_seed}
    if info.is_file():
        old = read_json(info)
        if all(old.get(k) == v for k, v in expected.items() if v is not None):
            return out / "train.jsonl"
    made = prepare(study.data_dir, out, fmt, study.train_size, study.subset_seed)
    log.info(
        "study data: %d training rows (%s format, %d without working) in %s",
        made["train_size"], fmt, made["rows_without_working"], out,
    )  # fmt: skip
    return out / "train.jsonl"


def study_config(study: Study, out: Path, seed: int, fmt: str, overrides: list[str], split: str) -> RunConfig:
    """The `wmss run` config of one run of the study (``split``: validset or testset is evaluated)."""
    eval_path = study.data_dir / f"{split}.json"
    if not eval_path.is_file():
        raise WmssError(f"{eval_path} does not exist; check the study's data_dir ({study.data_dir}).")
    return config_from_dict(
        study.run,
        f"{study.path}: run",
        [
            f"output_dir={out}",
            f"seed={seed}",
            f"data.path={training_file(study, fmt)}",
            "eval.task=mawps",
            f"eval.path={eval_path}",
            *overrides,
        ],
    )


def arm_dir(study: Study, arm: Arm, seed: int) -> Path:
    return study.output_dir / "arms" / arm.slug / f"seed-{seed}"


def arm_tuning_path(study: Study, arm: Arm) -> Path:
    return study.output_dir / "tune-arms" / arm.slug / "tuning.json"


def curve_dir(study: Study, seed: int) -> Path:
    return study.output_dir / "curve" / f"seed-{seed}"


def curve_model(study: Study, seed: int, epoch: int) -> Path:
    path = curve_dir(study, seed) / "epochs" / f"epoch-{epoch}"
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise WmssError(
            f"{path} does not exist: run the learning curve first (`wmss study run --stage curve`)."
        )
    return path


def plateau_epoch(study: Study, seed: int) -> int:
    from wmss.study.curve import read_curve

    curve = read_curve(curve_dir(study, seed))
    if curve is None:
        raise WmssError(
            f"the learning curve of seed {seed} is missing ({curve_dir(study, seed)}); run "
            f"`wmss study run {study.path} --stage curve` first."
        )
    return int(curve["plateau_epoch"])
