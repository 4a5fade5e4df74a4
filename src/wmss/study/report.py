"""Tables and plots of a study, from its run directories (nothing is re-computed or typed in by hand).

Per arm: test accuracy per seed, mean ± std over seeds, the difference to SFT on the same seeds with
a paired bootstrap 95% interval (problems resampled; each problem's score is its mean correctness
over those seeds), optimizer steps, estimated training compute (``training_compute``) and training
wall time (an arm that starts from another arm's M1 is charged for that M1's steps, compute and
time), the WD-DS active fraction and the mean entropy gap H_strong − H_weak. Only finished runs
(evaluated) are reported; missing ones are listed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from wmss.errors import WmssError
from wmss.evaluation.metrics import paired_bootstrap, pass_at_k
from wmss.io import atomic_write_json, atomic_write_text, read_json, read_jsonl
from wmss.reporting import markdown_table
from wmss.rundir import EVAL, NOT_TRAINING, SFT, finished_phases, selection_phase, training_cost, wdjt_phase
from wmss.study.layout import arm_dir, arm_tuning_path, setting_name
from wmss.study.spec import Arm, Study
from wmss.study.verdict import control_reading, decide
from wmss.trainers import GRADIENT_KEYS


def predictions_file(run: Path, recorded: str) -> Path:
    """The predictions file a run's manifest names (a path as it was when the run was evaluated), or the
    same file inside ``run`` when the run has moved since (an archive: ``wmss.study.archive``)."""
    path = Path(recorded)
    if path.is_file():
        return path
    parts = path.parts
    if run.name in parts:
        moved = run.joinpath(*parts[len(parts) - parts[::-1].index(run.name) :])
        if moved.is_file():
            return moved
    raise WmssError(f"{run}: the predictions file {recorded} named in its manifest does not exist.")


def _scores(run: Path, phases: dict) -> np.ndarray:
    records = read_jsonl(predictions_file(run, phases[EVAL]["predictions_path"]))
    return np.array([float(r["correct"]) for r in sorted(records, key=lambda r: str(r["id"]))])


def _heldout(run: Path) -> np.ndarray | None:
    """Per held-out problem (in id order), its gold NLL sum scaled so that the mean over problems is the
    run's NLL per token (``wmss.study.heldout``); None if the run was not scored."""
    path = run / "heldout-nll.jsonl"
    if not path.is_file():
        return None
    records = sorted(read_jsonl(path), key=lambda r: str(r["id"]))
    nll = np.array([r["nll"] for r in records], dtype=np.float64)
    return nll * len(nll) / max(sum(r["tokens"] for r in records), 1)


def _run_row(study: Study, arm: Arm, seed: int) -> dict | None:
    run = arm_dir(study, arm, seed)
    phases = finished_phases(run)
    if phases is None:
        return None
    steps, wall = training_cost(phases)
    examples = read_json(run / "manifest.json").get("data", {}).get("num_examples")
    compute = training_compute(phases, examples)
    gap_source = phases
    if arm.m1_from is not None:  # charged for the M1 it starts from
        source = finished_phases(arm_dir(study, study.arm(arm.m1_from), seed)) or {}
        m1 = source.get(SFT, {})
        steps, wall = steps + m1.get("steps", 0), wall + m1.get("wall_time_s", 0.0)
        m1_compute = training_compute({SFT: m1}, examples) if m1 else None
        compute = None if compute is None or m1_compute is None else compute + m1_compute
        trains_pair = wdjt_phase(1) in phases  # the (M0, M1) gap is its weak-strong gap
        if trains_pair and "mean_entropy_gap" not in phases.get(selection_phase(1), {}):
            gap_source = source
    selection = phases.get(selection_phase(1), {})
    distinct = None
    if selection.get("dedup") is False and selection.get("file"):  # the active set repeats rows
        drawn = read_jsonl(run / selection["file"])
        distinct = sum(bool(r["active"]) for r in drawn) / len(drawn)
    machine = run / "machine.json"
    return {
        "seed": seed,
        "accuracy": phases[EVAL]["accuracy"],
        "num_correct": phases[EVAL]["num_correct"],
        "num_problems": phases[EVAL]["num_problems"],
        "scores": _scores(run, phases),
        "steps": steps,
        "wall_time_s": wall,
        "compute": compute,
        "active_fraction": selection.get("active_fraction"),
        "distinct_fraction": distinct,
        "mean_entropy_gap": gap_source.get(selection_phase(1), {}).get("mean_entropy_gap"),
        "machine": read_json(machine)["machine"] if machine.is_file() else "unrecorded",
        "run_dir": str(run),
        "gradients": phases.get(wdjt_phase(1), {}).get("gradients"),
        "heldout": _heldout(run),
        "calibration": read_json(run / "calibration.json") if (run / "calibration.json").is_file() else None,
        "pass_at_k": read_json(run / "pass_at_k.json") if (run / "pass_at_k.json").is_file() else None,
    }


PASS_COST = {"train": 3.0, "forward": 1.0}
"""A model's training pass (forward and backward) over an example costs about three forward passes."""
PLAIN_TRAINING = {SFT, *(f"{m}-continued" for m in ("sft", "dft", "neftune"))}
"""Phases that are one model's plain training (``training_compute``)."""


def training_compute(phases: dict[str, dict], num_examples: int | None) -> float | None:
    """A run's training compute in forward passes of one model over D, estimated from its phases'
    records (examples × epochs; an example's length is taken as D's mean): a training pass of one
    model counts 3, a forward-only pass 1. An Eq. 7 entropy pass is one forward pass over D. In WD-JT
    the strong model trains (3 per pass over the active set) and the weak model adds 3 when it trains,
    1 when it only runs forward (held fixed, or ``shuffled``) and 0 for a control with no weak model
    (``uniform``, ``entropy_matched``: its temperature search works on logits already computed) or at
    λ = 1. A reused M1 costs nothing here (a study charges the arm it came from). None when a phase of
    a kind not counted here ran (DPO's and SPIN's generation, UNDIAL's teacher, ...) or D's size is
    unknown."""
    if not num_examples:
        return None
    total = 0.0
    for name, entry in phases.items():
        passes = (entry.get("epochs") or 0.0) * (entry.get("examples") or 0) / num_examples
        if name in NOT_TRAINING or name.startswith("selection-") or name == "expo":
            continue
        if name.startswith("entropy-"):
            total += PASS_COST["forward"]
        elif name in PLAIN_TRAINING:
            total += 0.0 if entry.get("reused") else PASS_COST["train"] * passes
        elif name.startswith("wdjt-"):
            total += PASS_COST["train"] * passes
            source = entry.get("weak_logits", "model")
            if entry.get("weak") is None or source in ("uniform", "entropy_matched"):
                continue
            trains_weak = source == "model" and not entry.get("freeze_weak")
            total += PASS_COST["train" if trains_weak else "forward"] * passes
        else:
            return None
    return total


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _mean_gradients(per_seed: list[dict]) -> dict | None:
    """WD-JT's per-run gradient means (``wmss.trainers.GRADIENT_KEYS``, iteration 1) averaged over seeds,
    with the seeds' count; None for an arm without WD-JT."""
    if not per_seed:
        return None
    return {"runs": len(per_seed), **{key: _mean([g.get(key) for g in per_seed]) for key in GRADIENT_KEYS}}


def _mean_calibration(per_seed: list[dict]) -> dict | None:
    """``calibration.json``'s stated and derived answer confidence, ECE and Brier, each averaged over the
    runs that have the derived measure (``wmss.study.calibration``); None if none has."""
    per_seed = [c for c in per_seed if "derived" in c]
    if not per_seed:
        return None
    keys = ("mean_confidence", "ece", "brier")
    return {
        "runs": len(per_seed),
        "accuracy": _mean([c["accuracy"] for c in per_seed]),
        "stated": {k: _mean([c[k] for c in per_seed]) for k in keys},
        "derived": {k: _mean([c["derived"][k] for c in per_seed]) for k in keys},
    }


def _mean_pass_at_k(per_seed: list[dict]) -> dict | None:
    """The sampled pass@k of ``pass_at_k.json`` (``wmss.study.runner.sampled_pass_at_k``), each k averaged
    over the seeds that measured it, with their count and the sampling settings; None if none did."""
    if not per_seed:
        return None
    ks = sorted(set(per_seed[0]["pass_at_k"]).intersection(*(r["pass_at_k"] for r in per_seed)), key=int)
    return {
        "runs": len(per_seed),
        "samples": per_seed[0]["samples"],
        "temperature": per_seed[0]["temperature"],
        "pass_at_k": {k: _mean([r["pass_at_k"][k] for r in per_seed]) for k in ks},
    }


def _paired(
    runs: dict[str, dict[int, dict | None]], arm: str, versus: str, key: str = "scores"
) -> dict | None:
    """Accuracy (``key``: ``scores``; or held-out NLL per token, ``heldout``) of ``arm`` minus ``versus``
    on the seeds both finished (per-problem values averaged over those seeds), with a paired bootstrap
    95% interval; None when they share no finished seed."""
    mine = {s: r for s, r in runs[arm].items() if r is not None and r[key] is not None}
    theirs = {s: r for s, r in runs[versus].items() if r is not None and r[key] is not None}
    shared = sorted(set(mine) & set(theirs))
    if not shared:
        return None
    delta, low, high = paired_bootstrap(
        np.mean([mine[s][key] for s in shared], axis=0),
        np.mean([theirs[s][key] for s in shared], axis=0),
        seed=0,
    )
    return {"arm": versus, "seeds": shared, "delta": delta, "low": low, "high": high}


def _paired_pass_at_k(runs: dict[str, dict[int, dict | None]], arm: str, versus: str) -> dict | None:
    """Sampled pass@1 and pass@n (n the samples per problem) of ``arm`` minus ``versus`` on the seeds
    both sampled: each problem's unbiased pass@k from its share of correct samples, averaged over those
    seeds, with a paired bootstrap 95% interval over problems; None when they share no sampled seed."""
    mine = {s: r["pass_at_k"] for s, r in runs[arm].items() if r is not None and r["pass_at_k"]}
    theirs = {s: r["pass_at_k"] for s, r in runs[versus].items() if r is not None and r["pass_at_k"]}
    shared = sorted(set(mine) & set(theirs))
    if not shared:
        return None
    n = mine[shared[0]]["samples"]

    def per_problem(record: dict, k: int) -> list[float]:
        return [pass_at_k(n, round(share * n), k) for share in record["per_problem"]]

    out = {"arm": versus, "seeds": shared}
    for k in (1, n):
        delta, low, high = paired_bootstrap(
            np.mean([per_problem(mine[s], k) for s in shared], axis=0),
            np.mean([per_problem(theirs[s], k) for s in shared], axis=0),
            seed=0,
        )
        out[str(k)] = {"delta": delta, "low": low, "high": high}
    return out


def _verdict(runs: dict[str, dict[int, dict | None]], spec: dict, heldout: bool = False) -> dict | None:
    """The study's ``verdict``: each control against the reference arm (control − reference, on the
    seeds both finished), then the rule of ``wmss.study.verdict``; None until a control has a seed.
    ``unfinished``: the arms with a seed still to run; ``unscored`` (a study with ``heldout``): those
    with a finished run whose held-out NLL is still to score."""
    readings = {}
    for control in spec["controls"]:
        accuracy = _paired(runs, control, spec["arm"])
        if accuracy is not None:
            readings[control] = control_reading(accuracy, _paired(runs, control, spec["arm"], "heldout"))
    if not readings:
        return None
    unfinished = [
        arm for arm in (spec["arm"], *spec["controls"]) if any(r is None for r in runs[arm].values())
    ]
    unscored = [
        arm
        for arm in (spec["arm"], *spec["controls"])
        if heldout and any(r is not None and r["heldout"] is None for r in runs[arm].values())
    ]
    return {
        "arm": spec["arm"],
        "readings": readings,
        "unfinished": unfinished,
        "unscored": unscored,
        **decide(readings),
    }


def collect(study: Study) -> dict[str, Any]:
    """Every finished run of the study, grouped by arm, with the comparisons to SFT."""
    tuning_path = study.output_dir / "tuning.json"
    tuning = read_json(tuning_path) if tuning_path.is_file() else None
    runs = {arm.name: {s: _run_row(study, arm, s) for s in arm.seeds} for arm in study.arms}
    baseline = study.arms[0].name
    rows, missing = [], []
    for arm in study.arms:
        done = {s: r for s, r in runs[arm.name].items() if r is not None}
        missing += [f"{arm.name} (seed {s})" for s, r in runs[arm.name].items() if r is None]
        if not done:
            continue
        accuracies = [done[s]["accuracy"] for s in sorted(done)]
        row = {
            "arm": arm.name,
            "overrides": arm.overrides,
            "m1_from": arm.m1_from,
            "seeds": sorted(done),
            "accuracies": accuracies,
            "mean": float(np.mean(accuracies)),
            "std": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else None,
            "num_problems": done[min(done)]["num_problems"],
            "steps": _mean([r["steps"] for r in done.values()]),
            "wall_time_s": _mean([r["wall_time_s"] for r in done.values()]),
            "compute": _mean([r["compute"] for r in done.values()])
            if all(r["compute"] is not None for r in done.values())
            else None,
            "active_fraction": _mean([r["active_fraction"] for r in done.values()]),
            "distinct_fraction": _mean([r["distinct_fraction"] for r in done.values()]),
            "mean_entropy_gap": _mean([r["mean_entropy_gap"] for r in done.values()]),
            "machines": sorted({r["machine"] for r in done.values()}),
            "gradients": _mean_gradients([r["gradients"] for r in done.values() if r["gradients"]]),
            "heldout_nll": _mean([r["heldout"].mean() for r in done.values() if r["heldout"] is not None]),
            "heldout_seeds": sorted(s for s, r in done.items() if r["heldout"] is not None),
            **{
                key: _mean([r["calibration"][key] for r in done.values() if r["calibration"] is not None])
                for key in ("ece", "brier")
            },
            "calibration": _mean_calibration([r["calibration"] for r in done.values() if r["calibration"]]),
            "pass_at_k": _mean_pass_at_k([r["pass_at_k"] for r in done.values() if r["pass_at_k"]]),
        }
        versus = arm.versus or baseline
        if arm.name != versus and (paired := _paired(runs, arm.name, versus)) is not None:
            row["vs_baseline"] = paired
        if arm.name != versus and (paired := _paired(runs, arm.name, versus, "heldout")) is not None:
            row["heldout_vs_baseline"] = paired
        if arm.name != baseline and (paired := _paired_pass_at_k(runs, arm.name, baseline)) is not None:
            row["pass_at_k_vs_baseline"] = paired
        rows.append(row)
    contrasts = []
    for contrast in study.contrasts:
        paired = _paired(runs, contrast["arm"], contrast["versus"])
        if paired is not None:
            contrasts.append({**paired, **contrast})  # "arm" is the contrast's, not the one it is paired with
    verdict = _verdict(runs, study.verdict, study.heldout) if study.verdict is not None else None
    arm_tuning = {
        arm.name: read_json(arm_tuning_path(study, arm))
        for arm in study.arms
        if arm.tune and arm_tuning_path(study, arm).is_file()
    }
    curves = {}
    if study.curve is not None:
        from wmss.study.curve import read_curve
        from wmss.study.layout import curve_dir

        curves = {s: c for s in study.curve["seeds"] if (c := read_curve(curve_dir(study, s))) is not None}
    mechanism = {}
    if curves:
        from wmss.study.mechanism import read_mechanism

        mechanism = {s: m for s in curves if (m := read_mechanism(study, s)) is not None}
    return {
        "study": study.name,
        "baseline": baseline,
        "tuning": tuning,
        "arm_tuning": arm_tuning,
        "curves": curves,
        "mechanism": mechanism,
        "passes": {arm.name: extra_passes(study, arm) for arm in study.arms},
        "arms": rows,
        "contrasts": contrasts,
        "verdict": verdict,
        "missing": missing,
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _delta(paired: dict) -> str:
    return f"{100 * paired['delta']:+.1f} [{100 * paired['low']:+.1f}, {100 * paired['high']:+.1f}]"


def _nll_delta(paired: dict) -> str:
    """A held-out NLL difference with its interval, in nats per token."""
    return f"{paired['delta']:+.4f} [{paired['low']:+.4f}, {paired['high']:+.4f}]"


def _seeds_note(measured: list[int] | None, seeds: list[int]) -> str:
    """`` (seed 3)`` when a measure covers fewer seeds than the row's accuracy."""
    if not measured or list(measured) == list(seeds):
        return ""
    return f" (seed{'s' if len(measured) > 1 else ''} {','.join(map(str, measured))})"


def _verdict_lines(verdict: dict) -> list[str]:
    """The rule's answer and the table it was read from."""
    rows = []
    for name, r in verdict["readings"].items():
        nll = r["nll"]
        rows.append(
            [
                name,
                ",".join(map(str, r["accuracy"]["seeds"])),
                _delta(r["accuracy"]),
                "– (not measured)"
                if nll is None
                else _nll_delta(nll) + _seeds_note(nll["seeds"], r["accuracy"]["seeds"]),
                "yes" if r["does_as_well"] else "no",
                "yes" if r["reference_better"] and not r["control_better"] else "no",
            ]
        )
    accuracy_only = any(r["nll"] is None for r in verdict["readings"].values())
    return [
        f"**Answer by the rule fixed before the runs** (docs/controls.md; `verdict` in the study file): "
        f"**{verdict['answer']}** (decided by: {', '.join(verdict['because'])}). Each control minus "
        f"{verdict['arm']}, pooled over the seeds both ran, paired bootstrap 95% intervals over problems"
        + (
            "; where the held-out NLL is not measured the rule reads accuracy alone."
            if accuracy_only
            else "."
        )
        + (
            f" **Provisional**: seeds of {', '.join(verdict['unfinished'])} are still to run."
            if verdict.get("unfinished")
            else ""
        )
        + (
            f" **Provisional**: the held-out NLL of {', '.join(verdict['unscored'])} is still to score "
            "(`wmss study run <study.yaml> --stage heldout`)."
            if verdict.get("unscored")
            else ""
        ),
        "",
        markdown_table(
            [
                "control",
                "seeds",
                f"Δ accuracy vs {verdict['arm']} [95% CI]",
                "Δ held-out NLL/token [95% CI]",
                "does as well",
                f"{verdict['arm']} better",
            ],
            rows,
        ),  # fmt: skip
    ]


def _lambda(arm: dict) -> float | None:
    for item in arm["overrides"]:
        if item.startswith("wmss.mix_lambda="):
            value = item.split("=", 1)[1]
            return None if value.strip() == "auto" else float(value)
    return 0.5 if not arm["overrides"] and arm["m1_from"] is None else None  # the plain WMSS arm


def extra_passes(study: Study, arm: Arm) -> tuple[str, int] | None:
    """``("SFT", k)`` or ``("WMSS", k)`` for an arm of the accuracy-vs-K curve: it starts from the plateau
    model M_E*, pairs with the paper's weak model, and changes nothing but the number of extra passes
    (``sft.epochs`` = k + 1 with ``method=sft``, M_E* counting as one epoch; or ``wmss.iterations`` = k).
    ``None`` for every other arm (variants, other weak models, arms not from the curve)."""
    if not arm.from_curve or arm.weak is not None:
        return None
    settings = dict(item.split("=", 1) for item in arm.overrides)
    if set(settings) - {"method", "sft.epochs", "wmss.iterations"}:
        return None
    if settings.get("method", study.run.get("method", "wmss")) == "sft":
        epochs = settings.get("sft.epochs", (study.run.get("sft") or {}).get("epochs", 1))
        return ("SFT", int(float(epochs)) - 1)
    if "method" in settings and settings["method"] != "wmss":
        return None
    return ("WMSS", int(settings.get("wmss.iterations", (study.run.get("wmss") or {}).get("iterations", 1))))


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plots(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    arms = results["arms"]
    made = []
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(arms) + 1.5), 3.8), dpi=120)
    x = np.arange(len(arms))
    means = [100 * a["mean"] for a in arms]
    errors = [100 * (a["std"] or 0.0) for a in arms]
    ax.bar(x, means, 0.6, yerr=errors, capsize=3, color=["#888888"] + ["#3b75af"] * (len(arms) - 1))
    for i, arm in enumerate(arms):
        ax.scatter(
            [i] * len(arm["accuracies"]), [100 * a for a in arm["accuracies"]], color="black", s=8, zorder=3
        )
    ax.set_xticks(x, [a["arm"] for a in arms], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{results['study']}: mean over seeds (bars), each seed (dots), ±1 std", fontsize=9)
    made.append(_save(fig, out_dir / "accuracy_by_arm.png"))

    if results.get("curves"):
        curve = _curve_rows(results["curves"])
        epochs = [e for e, _, _ in curve]
        fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.4), dpi=120)
        for key, label in (("val_accuracy", "validation"), ("train_accuracy", "training sample")):
            axes[0].plot(epochs, [100 * (m[key] or np.nan) for _, _, m in curve], marker="o", label=label)
        axes[0].set_ylabel("accuracy (%)")
        axes[0].legend(fontsize=8)
        for key, label in (("saturated_share", "saturated tokens (p > 0.99)"),
                           ("saturated_gradient_share", "their share of the gradient")):  # fmt: skip
            axes[1].plot(epochs, [m[key] if m[key] is not None else np.nan for _, _, m in curve], marker="o",
                         label=label)  # fmt: skip
        axes[1].plot(epochs, [m["train_loss"] or np.nan for _, _, m in curve], marker="s", label="train loss")
        axes[1].legend(fontsize=8)
        for ax in axes:
            ax.set_xlabel("SFT epoch")
        fig.suptitle(f"{results['study']}: SFT learning curve (mean over seeds)", fontsize=9)
        made.append(_save(fig, out_dir / "learning_curve.png"))

    series: dict[str, list[tuple[int, dict]]] = {}
    for arm in arms:
        if (where := results.get("passes", {}).get(arm["arm"])) is not None:
            series.setdefault(where[0], []).append((where[1], arm))
    start = [p for p in series.get("SFT", []) if p[0] == 0]
    if start and "WMSS" in series:  # M_E* is K = 0 of both curves
        series["WMSS"].append(start[0])
    if sum(len(points) > 1 for points in series.values()) == 2:
        fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=120)
        for name, points in sorted(series.items()):
            points.sort(key=lambda p: p[0])
            ax.errorbar([k for k, _ in points], [100 * a["mean"] for _, a in points],
                        yerr=[100 * (a["std"] or 0) for _, a in points], marker="o", capsize=3,
                        label="SFT: k more epochs" if name == "SFT" else "WMSS: K iterations")  # fmt: skip
        ax.set_xticks(sorted({k for points in series.values() for k, _ in points}))
        ax.set_xlabel("extra passes over the data after the plateau model M_E* (k = K)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=8)
        ax.set_title(f"{results['study']}: accuracy vs K (mean ± std over seeds)", fontsize=9)
        made.append(_save(fig, out_dir / "accuracy_vs_k.png"))

    sweep = sorted(((lam, a) for a in arms if (lam := _lambda(a)) is not None), key=lambda pair: pair[0])
    if len({lam for lam, _ in sweep}) >= 2:  # a sweep needs two values of λ
        fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=120)
        lams = [lam for lam, _ in sweep]
        ax.errorbar(lams, [100 * a["mean"] for _, a in sweep], yerr=[100 * (a["std"] or 0) for _, a in sweep],
                    marker="o", capsize=3)  # fmt: skip
        sft = next((a for a in arms if a["arm"] == results["baseline"]), None)
        if sft:
            ax.axhline(100 * sft["mean"], color="#888888", linestyle="--", label=f"{sft['arm']} (mean)")
            ax.legend(fontsize=8)
        ax.set_xlabel("λ (weight of the strong logits; 1 = plain SFT on the selected set)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{results['study']}: λ sweep (same M1 and selection)", fontsize=9)
        made.append(_save(fig, out_dir / "lambda_sweep.png"))
    return made


CURVE_COLUMNS = (
    ("train_loss", "train loss", "{:.3f}"),
    ("saturated_share", "saturated tokens (p > 0.99)", "{:.1%}"),
    ("saturated_gradient_share", "their gradient share", "{:.1%}"),
    ("target_prob", "target prob.", "{:.3f}"),
    ("mean_entropy", "mean entropy (Eq. 7)", "{:.3f}"),
    ("train_accuracy", "train-sample accuracy", "{:.1%}"),
    ("val_accuracy", "validation accuracy", "{:.1%}"),
)


def _curve_rows(curves: dict) -> list[tuple[int, list[int], dict[str, float | None]]]:
    """Per epoch: the seeds that reached it and the mean of each ``CURVE_COLUMNS`` value over them."""
    epochs = sorted({r["epoch"] for c in curves.values() for r in c["epochs"]})
    out = []
    for epoch in epochs:
        rows = {s: r for s, c in curves.items() for r in c["epochs"] if r["epoch"] == epoch}
        means = {key: _mean([r.get(key) for r in rows.values()]) for key, _, _ in CURVE_COLUMNS}
        out.append((epoch, sorted(rows), means))
    return out


def _curve_table(curves: dict) -> str:
    plateaus = ", ".join(f"seed {s}: E* = {c['plateau_epoch']}" for s, c in sorted(curves.items()))
    header = ["epoch", "seeds", *[label for _, label, _ in CURVE_COLUMNS]]
    rows = [
        [str(epoch), ",".join(map(str, seeds)),
         *["–" if means[key] is None else fmt.format(means[key]) for key, _, fmt in CURVE_COLUMNS]]
        for epoch, seeds, means in _curve_rows(curves)
    ]  # fmt: skip
    return (
        "**Learning curve** (SFT on the training subset, one schedule over `curve.max_epochs`, measured "
        "after every epoch; means over the seeds that reached the epoch; training stops when validation "
        "accuracy has stayed below its best for `curve.patience` epochs, a tie counting as the best; the "
        f"plateau epoch E* is the latest best one: {plateaus}):\n\n" + markdown_table(header, rows)
    )


def _mechanism_table(mechanism: dict) -> str:
    """B3: saturation at the plateau model and after each arm, means over the seeds measured."""

    def mean(entries: list[dict], key: str) -> float | None:
        return _mean([e.get(key) for e in entries])

    def fmt(value: float | None, spec: str) -> str:
        return "–" if value is None else spec.format(value)

    seeds = sorted(mechanism)
    rows = []
    for weak in sorted({w for m in mechanism.values() for w in m["start"]}):
        entries = [m["start"][weak] for m in mechanism.values() if weak in m["start"]]
        rows.append([
            f"M_E* (start), weak {weak}", str(len(entries)), fmt(mean(entries, "saturated_share"), "{:.1%}"),
            fmt(mean(entries, "saturated_gradient_share"), "{:.1%}"), fmt(mean(entries, "loss"), "{:.3f}"),
            fmt(mean(entries, "saturated_gradient_norm"), "{:.4f}"),
            fmt(mean(entries, "wdjt_saturated_gradient_norm"), "{:.4f}"),
            fmt(mean(entries, "wdjt_over_sft_on_saturated"), "{:.2f}×"),
        ])  # fmt: skip
    for name in dict.fromkeys(n for s in seeds for n in mechanism[s]["arms"]):
        entries = [m["arms"][name] for m in mechanism.values() if name in m["arms"]]
        rows.append([
            f"after {name}", str(len(entries)), fmt(mean(entries, "saturated_share"), "{:.1%}"),
            fmt(mean(entries, "saturated_gradient_share"), "{:.1%}"), fmt(mean(entries, "loss"), "{:.3f}"),
            fmt(mean(entries, "saturated_gradient_norm"), "{:.4f}"), "–", "–",
        ])  # fmt: skip
    header = ["model", "seeds", "saturated tokens (p > 0.99)", "their share of the SFT gradient",
              "train loss", "SFT gradient norm on them", "WD-JT gradient norm on them (λ 0.5)",
              "WD-JT ÷ SFT on them"]  # fmt: skip
    return (
        "**Mechanism** (`wmss.study.mechanism`, on every training example; gradient norms are the per-token "
        "L2 norms of the logit gradient: SFT `p − e_y`, WD-JT's strong branch `λ·(P_mix − e_y)`; means over "
        f"seeds {', '.join(map(str, seeds))}):\n\n" + markdown_table(header, rows)
    )


def _tuning_table(tuning: dict, name: Any, wall_label: str) -> str:
    """One row per candidate of a tuning search (``tuning.json``), the chosen one marked."""
    rows = []
    for c in tuning["candidates"]:
        mark = " **(chosen)**" if c["setting"] == tuning["chosen"] else ""
        rows.append(
            [
                f"{name(c['setting'])}{mark}",
                f"{c['num_correct']}/{c['num_problems']} ({_pct(c['accuracy'])}%)",
                str(c["steps"]),
                f"{c['wall_time_s']:.0f} s",
            ]
        )
    return markdown_table(["setting", "validation accuracy", "optimizer steps", wall_label], rows)


def markdown(study: Study, results: dict, figures: list[str]) -> str:
    cmd_run = f"wmss study run {study.path}"
    cmd_report = f"wmss study report {study.path} --into docs/RESULTS.md"
    produced = f"Produced by `{cmd_run}` then `{cmd_report}`."
    archive = f"results/{study.name}"
    if Path(archive).is_dir():
        produced += (
            f" The runs' records are in `{archive}` (`wmss study archive {study.path}`, which also adds "
            f"seeds run on another machine with `--seed`); `wmss study report {study.path} "
            f"output_dir={archive} --into docs/RESULTS.md` rebuilds this section from them alone."
        )
    lines = [produced, ""]
    tuning = results["tuning"]
    if tuning and tuning.get("fixed"):
        source = f"; {tuning['source']}" if tuning.get("source") else ""
        lines += [f"**Setting** (fixed, not tuned here{source}): `{setting_name(tuning['chosen'])}`.", ""]
    elif tuning:
        lines += [
            "**Tuning** (SFT, 2 epochs, seed "
            f"{study.seeds[0]}, scored on `validset.json`; one key at a time, ties keep the earlier value):",
            "",
        ]
        lines += [_tuning_table(tuning, setting_name, "SFT wall time"), ""]
    for name, arm_tuning in results.get("arm_tuning", {}).items():
        lines += [
            f"**Tuning of arm {name}** (seed {arm_tuning['seed']}, scored on `validset.json`; one key at a "
            "time from the first value of each, ties keep the earlier):",
            "",
            _tuning_table(
                arm_tuning, lambda s: ", ".join(f"{k}={v}" for k, v in s.items()), "train wall time"
            ),
            "",
        ]
    if results.get("curves"):
        lines += [_curve_table(results["curves"]), ""]
    if results.get("mechanism"):
        lines += [_mechanism_table(results["mechanism"]), ""]
    base = results["baseline"]
    lines += [
        f"**Test** (`testset.json`): accuracy in %; Δ vs {base} (or the arm named after it) on the same"
        " seeds with a paired bootstrap 95% interval over problems; compute is an estimate in forward passes"
        " of one model over D from the runs' records (a training pass counts 3, an untrained weak model's"
        " forward 1, a synthetic weak source 0; tuning runs not counted); steps, compute and wall time"
        " include the shared M1 where an arm starts from it"
        + (
            "; an arm that starts from the plateau model M_E* counts only what it trains after it."
            if any(study.arm(a["arm"]).from_curve for a in results["arms"])
            else "."
        ),  # fmt: skip
        "",
    ]
    rows = []
    for a in results["arms"]:
        vs = a.get("vs_baseline")
        delta = _delta(vs) if vs else "–"
        if vs and vs["arm"] != base:
            delta += f" vs {vs['arm']}"
        std = f" ± {100 * a['std']:.1f}" if a["std"] is not None else ""
        gap = "–" if a["mean_entropy_gap"] is None else f"{a['mean_entropy_gap']:+.3f}"
        per_seed = " / ".join(_pct(x) for x in a["accuracies"])
        active = "–" if a["active_fraction"] is None else f"{_pct(a['active_fraction'])}%"
        if a["distinct_fraction"] is not None:
            active += f" ({_pct(a['distinct_fraction'])}% distinct)"
        rows.append(
            [
                a["arm"],
                ",".join(map(str, a["seeds"])),
                per_seed,
                f"{_pct(a['mean'])}{std}",
                delta,
                f"{a['steps']:.0f}",
                "–" if a.get("compute") is None else f"{a['compute']:.2f}",
                f"{a['wall_time_s']:.0f} s",
                active,
                gap,
            ]
        )
    header = ["arm", "seeds", "accuracy per seed", "mean ± std", f"Δ vs {base} [95% CI]", "optimizer steps"]
    header += ["compute (passes over D)", "train wall time", "active fraction", "mean ΔH"]
    if any(a.get("heldout_nll") is not None for a in results["arms"]):  # studies with `heldout: true`
        header += ["held-out NLL/token", "Δ NLL [95% CI]", "ECE", "Brier"]
        for row, a in zip(rows, results["arms"], strict=True):
            vs = a.get("heldout_vs_baseline")
            nll = "–" if a.get("heldout_nll") is None else f"{a['heldout_nll']:.4f}"
            nll += _seeds_note(a.get("heldout_seeds"), a["seeds"]) if a.get("heldout_nll") is not None else ""
            row += [
                nll,
                "–" if vs is None else _nll_delta(vs) + _seeds_note(vs["seeds"], a["seeds"]),
            ]
            row += ["–" if a.get(k) is None else f"{a[k]:.3f}" for k in ("ece", "brier")]
    lines.append(markdown_table(header, rows))
    with_gradients = [a for a in results["arms"] if a.get("gradients")]
    if with_gradients:
        lines += [
            "",
            "**WD-JT gradients** (first WD-JT pass, each run's mean over its steps, then the mean over the "
            "arm's seeds; norms before clipping; the strong model's share is of the pair's squared norm):",
            "",
            markdown_table(
                ["arm", "runs", "strong ‖g‖", "weak ‖g‖", "clip factor", "strong share of ‖g‖²"],
                [
                    [a["arm"], str(g["runs"])] + [_number(g[key]) for key in GRADIENT_KEYS]
                    for a in with_gradients
                    for g in [a["gradients"]]
                ],
            ),
        ]
    calibrated = [a for a in results["arms"] if a.get("calibration")]
    if calibrated:
        lines += [
            "",
            "**Calibration** on the test answers (`wmss.study.calibration`; means over the arm's scored "
            "runs): the confidence of the stated answer as defined before the runs, and of the derived "
            "answer, where the solution computed it (added after the first runs: on these worked "
            "solutions the stated answer copies the last computed number, so its confidence is near 1 "
            "whatever the arithmetic):",
            "",
            markdown_table(
                [
                    "arm",
                    "runs",
                    "accuracy",
                    "stated: mean confidence",
                    "ECE",
                    "Brier",
                    "derived: mean confidence",
                    "ECE",
                    "Brier",
                ],
                [
                    [a["arm"], str(c["runs"]), f"{_pct(c['accuracy'])}%"]
                    + [
                        f"{c[kind][k]:.3f}"
                        for kind in ("stated", "derived")
                        for k in ("mean_confidence", "ece", "brier")
                    ]
                    for a in calibrated
                    for c in [a["calibration"]]
                ],
            ),  # fmt: skip
        ]
    sampled = [a for a in results["arms"] if a.get("pass_at_k")]
    if sampled:
        ks = list(sampled[0]["pass_at_k"]["pass_at_k"])
        first = sampled[0]["pass_at_k"]
        edges = ["1", str(first["samples"])]
        lines += [
            "",
            f"**Sampled pass@k** ({first['samples']} answers per test problem at temperature "
            f"{first['temperature']}, unbiased estimator; means over the arm's measured seeds; Δ vs "
            f"{results['baseline']} on the seeds both sampled, paired bootstrap 95% interval over problems):",
            "",
            markdown_table(
                ["arm", "runs"]
                + [f"pass@{k}" for k in ks]
                + [f"Δ pass@{k} vs {results['baseline']}" for k in edges],
                [
                    [a["arm"], str(a["pass_at_k"]["runs"])]
                    + [_pct(a["pass_at_k"]["pass_at_k"].get(k)) for k in ks]
                    + [_delta(vs[k]) if (vs := a.get("pass_at_k_vs_baseline")) else "–" for k in edges]
                    for a in sampled
                ],
            ),  # fmt: skip
        ]
    if results.get("contrasts"):
        lines += [
            "",
            "**Paired contrasts** (the study's `contrasts`: each difference on the seeds both arms ran, "
            "paired bootstrap 95% interval over problems):",
            "",
            markdown_table(
                ["arm", "versus", "what differs", "seeds", "Δ [95% CI]"],
                [
                    [c["arm"], c["versus"], c.get("differs", ""), ",".join(map(str, c["seeds"])), _delta(c)]
                    for c in results["contrasts"]
                ],
            ),
        ]
    if results.get("verdict"):
        lines += ["", *_verdict_lines(results["verdict"])]
    if results["missing"]:
        lines += ["", "Not run yet: " + ", ".join(results["missing"]) + "."]
    machines = sorted({m for a in results["arms"] for m in a["machines"]})
    lines += ["", "Machine(s): " + "; ".join(machines) + "."]
    for fig in figures:
        lines += ["", f"![{Path(fig).stem}]({fig})"]
    return "\n".join(lines)


def write_study_report(study: Study, into: str | Path | None = None) -> Path:
    """``report/results.json``, ``report/report.md`` and the figures under the study's output_dir;
    with ``into``, also the study's section of that Markdown file (between its markers) and the
    figures in ``figures/`` beside it."""
    results = collect(study)
    if not results["arms"]:
        raise WmssError(
            f"{study.output_dir} has no finished arm yet; run `wmss study run {study.path}` first."
        )
    out = study.output_dir / "report"
    made = plots(results, out)
    serialisable = {**results, "arms": [{k: v for k, v in a.items()} for a in results["arms"]]}
    atomic_write_json(out / "results.json", serialisable)
    atomic_write_text(out / "report.md", markdown(study, results, [p.name for p in made]) + "\n")
    if into is None:
        return out / "report.md"
    into = Path(into)
    figures = into.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    names = []
    for path in made:
        target = figures / f"{study.name}-{path.name}"
        shutil.copyfile(path, target)
        names.append(f"figures/{target.name}")
    begin, end = f"<!-- study:{study.name}:begin -->", f"<!-- study:{study.name}:end -->"
    section = f"{begin}\n{markdown(study, results, names)}\n{end}"
    text = into.read_text() if into.is_file() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    atomic_write_text(into, text)
    return into
