"""The study file: which data, which arms, which seeds, and how hyper-parameters are chosen.

A study YAML (see ``configs/study/``) has these keys::

    name: mawps-smollm2
    output_dir: runs/study-mawps
    data_dir: ../shared/data/mawps     # trainset.json, validset.json, testset.json
    train_size: 256                    # seeded subset of trainset.json (null: all of it)
    subset_seed: 0
    seeds: [1, 2, 3]
    run: {...}                         # a `wmss run` config shared by every run of the study
    tuning:                            # SFT runs scored on validset.json, one key at a time
      start: {format: worked, train.learning_rate: 1.0e-4, train.per_device_batch_size: 16}
      search:
        format: [worked, equation]
        train.learning_rate: [5.0e-5, 1.0e-4, 2.0e-4]
    # or, to reuse a setting another study chose (no tuning runs):
    # tuning: {fixed: {format: worked, train.learning_rate: 5.0e-5}, source: "why this setting"}
    arms:
      - {name: SFT, overrides: [sft.epochs=2, wmss.iterations=0], seeds: all}
      - {name: WMSS, seeds: all}
      - {name: WD-DS only, overrides: [wmss.mix_lambda=1.0], m1_from: WMSS}
      - {name: WMSS tuned, m1_from: WMSS, tune: {wmss.learning_rate: [5.0e-5, 1.0e-4]}}
    contrasts:                         # more paired differences for the report (beside each arm's Δ)
      - {arm: WD-DS only, versus: WMSS, differs: "λ = 1: no weak logits"}
    verdict: {arm: WMSS, controls: [WD-DS only]}   # docs/controls.md's rule (wmss.study.verdict)

``data_dir`` may be relative to the working directory; ``$WMSS_DATA_DIR`` (the folder holding
``mawps/``) replaces a leading ``../shared/data``. An arm with ``m1_from`` starts from that arm's
M1 (same seed) instead of training its own (``sft.checkpoint``), and runs the seeds of ``seeds``
(default: the first study seed only). An arm with ``tune`` first searches those keys on
the validation split (first seed), then runs its seeds on the test split with the chosen values.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wmss.config import config_from_dict, load_yaml, parse_override
from wmss.errors import ConfigError
from wmss.study.mawps import FORMATS

SHARED_DATA = "../shared/data"


@dataclass
class Arm:
    name: str
    overrides: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    m1_from: str | None = None
    tune: dict[str, list] = field(default_factory=dict)
    """Config keys searched for this arm on the validation split (first seed; one key at a time, the
    first value of each list is where the search starts, ties keep the earlier value)."""
    versus: str | None = None
    """The arm this one's Δ is taken against (default: the first arm of the study)."""
    from_curve: bool = False
    """Start from the plateau model M_{E*} of the study's learning curve (same seed) instead of M0:
    it becomes ``sft.checkpoint``, so ``sft.epochs`` counts it as one epoch."""
    weak: str | None = None
    """``previous``: the weak model of iteration 1 is M_{E*−1} of the learning curve (``wmss.weak``);
    unset: M0."""

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9.]+", "-", self.name.lower().replace("λ", "lambda")).strip("-")


@dataclass
class Study:
    path: Path
    name: str
    output_dir: Path
    data_dir: Path
    train_size: int | None
    subset_seed: int
    seeds: list[int]
    run: dict[str, Any]
    tuning_start: dict[str, Any]
    tuning_search: dict[str, list]
    arms: list[Arm]
    curve: dict[str, Any] | None = None
    """``curve``: the SFT learning curve (``wmss.study.curve``): max_epochs, patience, train_sample, seeds."""
    tuning_fixed: dict[str, Any] | None = None
    """A setting taken as chosen without tuning runs (``tuning.fixed``), with ``tuning_source`` saying
    where it was chosen."""
    tuning_source: str | None = None
    contrasts: list[dict[str, str]] = field(default_factory=list)
    """Paired differences the report adds, each ``{arm, versus, differs}``: accuracy of ``arm`` minus
    ``versus`` on the seeds both ran, with a paired bootstrap interval, and what sets the two apart."""
    heldout: bool = False
    """Score every arm's final model, once evaluated, on the held-out MAWPS problems (gold-solution NLL per
    token, ``wmss.study.heldout``) and for calibration on its test answers (``wmss.study.calibration``)."""
    verdict: dict[str, Any] | None = None
    """``{arm, controls}``: the report answers "weak-specific, sharpening or not separable" for ``arm``
    against ``controls`` by the rule of ``wmss.study.verdict``."""
    pass_at_k: dict[str, Any] | None = None
    """``{arms: [names], samples: 8, temperature: 0.8, seeds: [..]}``: with ``heldout``, those arms' final
    models are also evaluated on the test split with ``samples`` sampled answers per problem
    (``pass_at_k.json``: pass@k for k = 1…samples, unbiased estimator), for whether a gain at pass@1
    costs coverage; on the runs of ``seeds`` only (default: every seed the arm runs)."""

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise ConfigError(
            f"{self.path}: no arm named {name!r}; arms: {', '.join(a.name for a in self.arms)}."
        )


KEYS = (
    "name",
    "output_dir",
    "data_dir",
    "train_size",
    "subset_seed",
    "seeds",
    "run",
    "tuning",
    "arms",
    "curve",
    "contrasts",
    "heldout",
    "pass_at_k",
    "verdict",
)


def data_dir(raw: str) -> Path:
    env = os.environ.get("WMSS_DATA_DIR")
    if env and (raw == SHARED_DATA or raw.startswith(SHARED_DATA + "/")):
        return Path(env) / raw[len(SHARED_DATA) :].lstrip("/")
    return Path(raw)


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Study:
    """Read and check a study file; ``overrides`` are ``key=value`` for top-level keys, or
    ``run.<config key>=value`` for the shared run config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} does not exist.")
    raw = load_yaml(path.read_text(), path) or {}  # a key given twice is refused, naming the line
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping.")
    run_overrides = []
    for item in overrides:
        key, value = parse_override(item)
        if key.startswith("run."):
            run_overrides.append(item[len("run.") :])
        elif key in KEYS and key not in ("run", "tuning", "arms", "curve", "contrasts"):
            try:  # a study key may be a list (seeds=[1,2])
                raw[key] = yaml.safe_load(item.partition("=")[2])
            except yaml.YAMLError:
                raw[key] = value
        else:
            raise ConfigError(f"override {item!r}: use one of {', '.join(KEYS[:6])} or run.<config key>.")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; a study has {', '.join(KEYS)}.")
    for key in ("name", "output_dir", "data_dir", "seeds", "run", "arms"):
        if key not in raw:
            raise ConfigError(f"{path}: missing '{key}'.")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: 'seeds' must be a non-empty list of integers; got {seeds!r}.")
    run = dict(raw["run"] or {})
    for item in run_overrides:
        key, value = parse_override(item)
        node = run
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    config_from_dict(run, f"{path}: run")  # fails early, naming the key, if the shared config is bad

    tuning = raw.get("tuning") or {}
    extra = sorted(set(tuning) - {"start", "search", "fixed", "source"})
    if extra:
        raise ConfigError(f"{path}: tuning: unknown key(s) {', '.join(extra)}; use start + search, or fixed.")
    fixed = tuning.get("fixed")
    if fixed is not None:
        if not isinstance(fixed, dict) or set(tuning) & {"start", "search"}:
            raise ConfigError(f"{path}: tuning.fixed is a mapping of settings, and excludes start/search.")
        fixed = {"format": "worked", **fixed}
        tuning = {"start": fixed}
    start = dict(tuning.get("start") or {})
    search = dict(tuning.get("search") or {})
    start.setdefault("format", "worked")
    for key, values in search.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: tuning.search.{key} must be a non-empty list.")
    for fmt in [start["format"], *search.get("format", [])]:
        if fmt not in FORMATS:
            raise ConfigError(f"{path}: tuning format {fmt!r} is not one of {', '.join(FORMATS)}.")

    arms = []
    for i, entry in enumerate(raw["arms"]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{path}: arms[{i}] needs a 'name'.")
        extra = sorted(
            set(entry) - {"name", "overrides", "seeds", "m1_from", "tune", "versus", "from_curve", "weak"}
        )
        if extra:
            raise ConfigError(f"{path}: arms[{i}] ({entry['name']}): unknown key(s) {', '.join(extra)}.")
        arm_seeds = entry.get("seeds", [seeds[0]])
        arm_seeds = list(seeds) if arm_seeds == "all" else arm_seeds
        if not isinstance(arm_seeds, list) or not set(arm_seeds) <= set(seeds):
            raise ConfigError(
                f"{path}: arms[{i}] ({entry['name']}): seeds must be 'all' or a subset of {seeds}."
            )
        tune = entry.get("tune") or {}
        if not isinstance(tune, dict) or not all(isinstance(v, list) and v for v in tune.values()):
            raise ConfigError(
                f"{path}: arms[{i}] ({entry['name']}): tune maps config keys to non-empty lists of values."
            )
        arm = Arm(
            entry["name"], list(entry.get("overrides") or []), arm_seeds, entry.get("m1_from"), tune,
            entry.get("versus"), bool(entry.get("from_curve", False)), entry.get("weak"),
        )  # fmt: skip
        if arm.weak not in (None, "previous") or (arm.weak and not arm.from_curve):
            raise ConfigError(f"{path}: arms[{i}] ({arm.name}): weak: previous needs from_curve: true.")
        if arm.from_curve and arm.m1_from:
            raise ConfigError(f"{path}: arms[{i}] ({arm.name}): from_curve and m1_from exclude each other.")
        config_from_dict(run, f"{path}: arms[{i}] ({arm.name})", arm.overrides)
        for key, values in tune.items():
            for value in values:
                config_from_dict(
                    run, f"{path}: arms[{i}] ({arm.name}) tune", [*arm.overrides, f"{key}={value}"]
                )
        arms.append(arm)
    names = [a.name for a in arms]
    if len(set(a.slug for a in arms)) != len(arms):
        raise ConfigError(f"{path}: arm names must differ (after lower-casing): {names}.")
    for arm in arms:
        if arm.m1_from is not None:
            source = next((a for a in arms if a.name == arm.m1_from), None)
            if (
                source is None
                or source.m1_from is not None
                or names.index(source.name) > names.index(arm.name)
            ):
                raise ConfigError(
                    f"{path}: arm {arm.name!r}: m1_from must name an earlier arm that trains its own M1."
                )
            if not set(arm.seeds) <= set(source.seeds):
                raise ConfigError(f"{path}: arm {arm.name!r} runs seeds its m1_from arm does not.")
        if arm.versus is not None and arm.versus not in names:
            raise ConfigError(f"{path}: arm {arm.name!r}: versus names no arm ({arm.versus!r}).")
    contrasts = raw.get("contrasts") or []
    for i, entry in enumerate(contrasts if isinstance(contrasts, list) else [None]):
        if (
            not isinstance(entry, dict)
            or set(entry) - {"arm", "versus", "differs"}
            or not (entry.get("arm") in names and entry.get("versus") in names)
        ):
            raise ConfigError(
                f"{path}: contrasts[{i}] must be {{arm: <arm name>, versus: <arm name>, differs: <text>}} "
                f"naming two of the study's arms ({', '.join(names)}); got {entry!r}."
            )
    curve = raw.get("curve")
    if curve is not None:
        curve = {"max_epochs": 10, "patience": 2, "train_sample": 64, "seeds": "all", **curve}
        extra = sorted(set(curve) - {"max_epochs", "patience", "train_sample", "seeds"})
        if extra:
            raise ConfigError(f"{path}: curve: unknown key(s) {', '.join(extra)}.")
        for key in ("max_epochs", "patience", "train_sample"):
            if not isinstance(curve[key], int) or curve[key] < 1:
                raise ConfigError(f"{path}: curve.{key} must be a positive integer; got {curve[key]!r}.")
        curve["seeds"] = list(seeds) if curve["seeds"] == "all" else curve["seeds"]
        if not isinstance(curve["seeds"], list) or not set(curve["seeds"]) <= set(seeds):
            raise ConfigError(f"{path}: curve.seeds must be 'all' or a subset of {seeds}.")
    if any(a.from_curve for a in arms) and curve is None:
        raise ConfigError(f"{path}: an arm has from_curve: true but the study has no curve section.")
    train_size = raw.get("train_size")
    if train_size is not None and (not isinstance(train_size, int) or train_size < 1):
        raise ConfigError(f"{path}: train_size must be a positive integer or null; got {train_size!r}.")
    return Study(
        path=path,
        name=str(raw["name"]),
        output_dir=Path(raw["output_dir"]),
        data_dir=data_dir(str(raw["data_dir"])),
        train_size=train_size,
        subset_seed=int(raw.get("subset_seed", 0)),
        seeds=seeds,
        run=run,
        tuning_start=start,
        tuning_search=search,
        arms=arms,
        curve=curve,
        tuning_fixed=fixed,
        tuning_source=tuning.get("source") if fixed is None else raw["tuning"].get("source"),
        contrasts=[dict(c) for c in contrasts],
        heldout=_flag(raw.get("heldout", False), path, "heldout"),
        pass_at_k=_pass_at_k(raw.get("pass_at_k"), path, {a.name for a in arms}, seeds),
        verdict=_verdict(raw.get("verdict"), path, [a.name for a in arms]),
    )


def _verdict(value: Any, path: Path, names: list[str]) -> dict[str, Any] | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or set(value) != {"arm", "controls"}
        or value["arm"] not in names
        or not isinstance(value["controls"], list)
        or not value["controls"]
        or not set(value["controls"]) <= set(names)
        or value["arm"] in value["controls"]
    ):
        raise ConfigError(
            f"{path}: verdict must be {{arm: <arm name>, controls: [<other arm names>]}} naming the "
            f"study's arms ({', '.join(names)}); got {value!r}."
        )
    return {"arm": value["arm"], "controls": list(value["controls"])}


def _pass_at_k(value: Any, path: Path, names: set[str], seeds: list[int]) -> dict[str, Any] | None:
    if value is None:
        return None
    spec = {"samples": 8, "temperature": 0.8, "seeds": None, **value} if isinstance(value, dict) else None
    if (
        spec is None
        or set(spec) != {"arms", "samples", "temperature", "seeds"}
        or not (isinstance(spec["arms"], list) and set(spec["arms"]) <= names)
        or not (
            spec["seeds"] is None
            or (isinstance(spec["seeds"], list) and spec["seeds"] and set(spec["seeds"]) <= set(seeds))
        )
        or not (isinstance(spec["samples"], int) and spec["samples"] >= 1)
        or not (isinstance(spec["temperature"], (int, float)) and spec["temperature"] > 0)
    ):
        raise ConfigError(
            f"{path}: pass_at_k must be {{arms: [names of arms], samples: N >= 1, temperature: T > 0, "
            f"seeds: [some of the study's seeds {seeds}] (optional)}}; got {value!r}."
        )
    return spec


def _flag(value: Any, path: Path, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: {key} must be true or false; got {value!r}.")
    return value
