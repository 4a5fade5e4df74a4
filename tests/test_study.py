"""The comparison study: MAWPS solutions, the study file, and a whole study on a tiny model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from wmss.errors import ConfigError, DataError
from wmss.io import read_json, read_jsonl
from wmss.study.mawps import convert, number, prepare, solution
from wmss.study.spec import load_study
from wmss.study.verdict import NOT_SEPARABLE, SHARPENING, WEAK_SPECIFIC, control_reading, decide


def test_number_formatting():
    assert number(12.0) == "12"
    assert number(1.8333333333333335) == "1.833333"
    assert number(-0.5) == "-0.5"
    assert number(0.1 + 0.2) == "0.3"


def test_worked_solution_one_operation_per_line_innermost_first():
    text, worked = solution("x=(22.0-14.0)/4.0+1", 3.0)
    assert worked
    assert text.splitlines() == ["22 - 14 = 8", "8 / 4 = 2", "2 + 1 = 3", "The answer is 3."]


def test_equation_format_writes_the_expression_at_once():
    text, worked = solution("X=((2.0*6.0)+3)", 15.0, "equation")
    assert worked and text == "x = (2 * 6) + 3 = 15\nThe answer is 15."


def test_rows_that_cannot_be_worked_get_the_answer_line_only():
    assert solution("X-6=52", 58.0) == ("The answer is 58.", False)  # an equation to solve
    assert solution("x=3+4", 8.0) == ("The answer is 8.", False)  # does not evaluate to ans
    assert solution("x=3/0", 1.0) == ("The answer is 1.", False)
    with pytest.raises(ValueError, match="unknown solution format"):
        solution("x=1+1", 2.0, "latex")


def mawps_rows(n: int, start: int = 0) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        a, b = 2 + i % 7, 3 + (i * 5) % 9
        rows.append(
            {
                "id": i,
                "original_text": f"Tom has {a} apples and buys {b} more . How many apples does he have ?",
                "equation": f"x={a}.0+{b}.0",
                "ans": float(a + b),
            }
        )
    return rows


@pytest.fixture()
def mawps_dir(tmp_path) -> Path:
    d = tmp_path / "mawps"
    d.mkdir()
    for name, rows in (
        ("trainset", mawps_rows(16)),
        ("validset", mawps_rows(4, 100)),
        ("testset", mawps_rows(4, 200)),
    ):
        (d / f"{name}.json").write_text(json.dumps(rows))
    return d


def test_prepare_takes_a_seeded_subset_in_file_order(mawps_dir, tmp_path):
    info = prepare(mawps_dir, tmp_path / "a", "worked", 8, seed=0)
    again = prepare(mawps_dir, tmp_path / "b", "worked", 8, seed=0)
    other = prepare(mawps_dir, tmp_path / "c", "worked", 8, seed=1)
    assert info["ids"] == again["ids"] == sorted(info["ids"]) and len(info["ids"]) == 8
    assert other["ids"] != info["ids"]
    rows = read_jsonl(tmp_path / "a" / "train.jsonl")
    assert [r["id"] for r in rows] == info["ids"]
    assert rows[0]["solution"].endswith(f"The answer is {rows[0]['answer']}.")


def test_bad_mawps_files_are_named(tmp_path):
    (tmp_path / "trainset.json").write_text('[{"original_text": "q"}]')
    with pytest.raises(DataError, match=r"trainset.json: row 0 lacks equation, ans"):
        prepare(tmp_path, tmp_path / "out", "worked", None, 0)
    with pytest.raises(DataError, match="does not exist"):
        prepare(tmp_path / "nowhere", tmp_path / "out", "worked", None, 0)
    rows, bare = convert([{"original_text": "q", "equation": "x=1+1", "ans": 2}], "worked")
    assert bare == 0 and rows[0]["answer"] == "2"


def write_study(tmp_path: Path, model: Path, data: Path, **changes) -> Path:
    study = {
        "name": "tiny",
        "output_dir": str(tmp_path / "study"),
        "data_dir": str(data),
        "train_size": 12,
        "seeds": [1, 2],
        "run": {
            "model": str(model),
            "data": {"prompt_template": "{question}", "completion_template": "{solution}"},
            "train": {
                "per_device_batch_size": 4,
                "max_length": 96,
                "learning_rate": 1e-3,
                "save_steps": 100,
                "logging_steps": 1,
            },
            "wmss": {"entropy_batch_size": 4},
            "eval": {"instruction": "", "max_new_tokens": 8, "batch_size": 4},
        },
        "tuning": {
            "start": {"format": "worked", "train.learning_rate": 1e-3},
            "search": {"train.learning_rate": [1e-3, 1e-2]},
        },
        "arms": [
            {"name": "SFT", "overrides": ["sft.epochs=2", "wmss.iterations=0"], "seeds": "all"},
            {"name": "WMSS", "seeds": "all"},
            {"name": "WD-DS only", "overrides": ["wmss.mix_lambda=1.0"], "m1_from": "WMSS"},
            {"name": "WD-JT only", "overrides": ["wmss.selection=all"], "m1_from": "WMSS"},
            {"name": "released", "overrides": ["wmss.selection=released_code"], "m1_from": "WMSS"},
        ],
    }
    study.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, allow_unicode=True))
    return path


def test_study_file_errors_name_the_problem(tmp_path, tiny_model_dir, mawps_dir):
    bad_arm = [{"name": "A", "m1_from": "B"}, {"name": "B"}]
    cases = [
        ({"colour": "red"}, "unknown key"),
        ({"seeds": []}, "non-empty list"),
        ({"arms": bad_arm}, "earlier arm"),
        ({"arms": [{"name": "A", "seeds": [7]}]}, "subset of"),
        ({"arms": [{"name": "A", "overrides": ["wmss.mix_lamda=0.3"]}]}, "Did you mean 'wmss.mix_lambda'"),
        ({"tuning": {"search": {"format": ["latex"]}}}, "not one of worked, equation"),
        ({"contrasts": [{"arm": "WMSS", "versus": "SFT2"}]}, r"contrasts\[0\] must be .* naming two"),
        ({"contrasts": {"arm": "WMSS"}}, r"contrasts\[0\] must be"),
        ({"verdict": {"arm": "WMSS", "controls": ["SFT2"]}}, "verdict must be"),
        ({"verdict": {"arm": "WMSS", "controls": ["WMSS"]}}, "verdict must be"),
        ({"verdict": {"arm": "WMSS"}}, "verdict must be"),
    ]
    for changes, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_study(write_study(tmp_path, tiny_model_dir, mawps_dir, **changes))
    with pytest.raises(ConfigError, match="use one of"):
        load_study(write_study(tmp_path, tiny_model_dir, mawps_dir), ["colour=red"])
    path = write_study(tmp_path, tiny_model_dir, mawps_dir)
    study = load_study(path, ["seeds=[2]", "train_size=8"])  # top-level keys, lists included
    assert study.seeds == [2] and study.train_size == 8 and study.arm("SFT").seeds == [2]
    with pytest.raises(ConfigError, match="non-empty list"):
        load_study(path, ["seeds=two"])


def test_a_whole_study_on_a_tiny_model(tmp_path, tiny_model_dir, mawps_dir):
    from wmss.study.report import collect, training_compute, write_study_report
    from wmss.study.runner import run_study

    contrast = {"arm": "WD-JT only", "versus": "WD-DS only", "differs": "all of D, λ = 0.5"}
    verdict = {"arm": "WMSS", "controls": ["WD-DS only", "WD-JT only"]}
    study = load_study(
        write_study(tmp_path, tiny_model_dir, mawps_dir, contrasts=[contrast], verdict=verdict)
    )
    run_study(study)
    root = study.output_dir
    tuning = read_json(root / "tuning.json")
    assert len(tuning["candidates"]) == 2  # the start setting is not run twice
    assert all(c["num_problems"] == 4 for c in tuning["candidates"])  # scored on validset
    assert tuning["chosen"]["train.learning_rate"] in (1e-3, 1e-2)

    wmss = read_json(root / "arms" / "wmss" / "seed-1" / "manifest.json")["phases"]
    assert wmss["sft"]["steps"] == 3 and wmss["eval"]["num_problems"] == 4
    shared = read_json(root / "arms" / "wd-ds-only" / "seed-1" / "manifest.json")["phases"]
    assert shared["sft"]["reused"] and shared["sft"]["model"].endswith("arms/wmss/seed-1/models/M1")
    assert shared["wdjt-1"]["trained_as"] == "sft (lambda = 1)"
    assert shared["wdjt-1"]["examples"] == wmss["wdjt-1"]["examples"]  # same M1, seed: same active set
    jt_only = read_json(root / "arms" / "wd-jt-only" / "seed-1" / "manifest.json")["phases"]
    assert jt_only["wdjt-1"]["examples"] == 12 and "entropy-M0" not in jt_only
    assert not (root / "arms" / "wd-ds-only" / "seed-2").exists()  # shared-M1 arms: first seed only
    assert (root / "arms" / "sft" / "seed-2" / "manifest.json").is_file()

    results = collect(study)
    rows = {r["arm"]: r for r in results["arms"]}
    assert rows["SFT"]["seeds"] == [1, 2] and len(rows["SFT"]["accuracies"]) == 2
    # shared-M1 arms are charged for the M1 they start from
    assert rows["WD-DS only"]["steps"] == wmss["sft"]["steps"] + shared["wdjt-1"]["steps"]
    assert rows["WD-JT only"]["active_fraction"] == 1.0 and rows["WD-JT only"]["distinct_fraction"] is None
    # compute in forward passes over D: M1's epoch (3), two entropy passes, WD-JT over the active set
    # (3 for the strong model, 3 more for the trained weak one; λ = 1 trains the strong model alone)
    n = read_json(root / "arms" / "wmss" / "seed-1" / "manifest.json")["data"]["num_examples"]
    active = wmss["wdjt-1"]["examples"] * wmss["wdjt-1"]["epochs"] / n
    m1 = 3 * wmss["sft"]["epochs"] * wmss["sft"]["examples"] / n
    assert training_compute(wmss, n) == pytest.approx(m1 + 2 + 6 * active)
    assert rows["WD-DS only"]["compute"] == pytest.approx(m1 + 2 + 3 * active)  # charged for its M1
    # without de-duplication the active set repeats rows: the table also says how many are distinct
    drawn = read_jsonl(root / "arms" / "released" / "seed-1" / "selection-1.jsonl")
    assert rows["released"]["active_fraction"] == sum(r["draws"] for r in drawn) / 12
    assert rows["released"]["distinct_fraction"] == sum(r["draws"] > 0 for r in drawn) / 12 < 1
    # WD-JT's gradient statistics, per arm: the mean over its seeds of each run's own mean
    per_seed = [read_json(root / "arms" / "wmss" / f"seed-{s}" / "manifest.json")["phases"] for s in (1, 2)]
    norms = [p["wdjt-1"]["gradients"]["grad_norm_strong"] for p in per_seed]
    assert rows["WMSS"]["gradients"]["runs"] == 2 and rows["SFT"]["gradients"] is None
    assert rows["WMSS"]["gradients"]["grad_norm_strong"] == pytest.approx(sum(norms) / 2) and norms[0] > 0
    # a contrast: one arm minus another on their shared seeds, named as the study file names it
    [paired] = results["contrasts"]
    assert paired["arm"] == "WD-JT only" and paired["versus"] == "WD-DS only" and paired["seeds"] == [1]
    gap = rows["WD-JT only"]["accuracies"][0] - rows["WD-DS only"]["accuracies"][0]
    assert paired["delta"] == pytest.approx(gap) and paired["low"] <= paired["delta"] <= paired["high"]

    # the verdict: each control minus the reference on their shared seeds, then the rule
    readings = results["verdict"]["readings"]
    assert set(readings) == {"WD-DS only", "WD-JT only"} and results["verdict"]["unfinished"] == []
    control_gap = rows["WD-DS only"]["accuracies"][0] - rows["WMSS"]["accuracies"][0]
    assert readings["WD-DS only"]["accuracy"]["delta"] == pytest.approx(control_gap)
    assert readings["WD-DS only"]["nll"] is None  # no held-out NLL in this study: accuracy alone
    assert results["verdict"]["answer"] == decide(readings)["answer"]

    doc = tmp_path / "RESULTS.md"
    doc.write_text(
        "# Results\n\nkept above\n\n<!-- study:tiny:begin -->\nold\n<!-- study:tiny:end -->\n\nkept below\n"
    )
    write_study_report(study, doc)
    text = doc.read_text()
    assert "kept above" in text and "kept below" in text and "\nold\n" not in text
    assert "| WMSS |" in text and "wmss study run" in text and "% distinct)" in text
    assert "| WD-JT only | WD-DS only | all of D, λ = 0.5 | 1 |" in text
    assert "**WD-JT gradients**" in text and "| WMSS | 2 |" in text
    assert f"**{results['verdict']['answer']}**" in text and "reads accuracy alone" in text
    assert (root / "report" / "accuracy_by_arm.png").is_file()

    # a study carried on on a second machine (no runs/ there): it re-runs SFT's seed 2 and has an
    # interrupted copy of seed 1; archived into the same place, the archive keeps every finished run
    from wmss.cli import main

    archive = tmp_path / "results" / "tiny"
    assert main(["study", "archive", str(study.path), "--into", str(archive)]) == 0
    first = collect(load_study(study.path, [f"output_dir={archive}"]))
    second = tmp_path / "second"
    second.mkdir()
    shutil.copy(root / "tuning.json", second / "tuning.json")
    again = ["study", "run", str(study.path), f"output_dir={second}", "--stage", "arms", "--arm", "SFT"]
    assert main([*again, "--seed", "7"]) == 2  # not a seed of the study: an error, nothing run
    assert main([*again, "--seed", "2"]) == 0
    assert not (second / "arms" / "sft" / "seed-1").exists() and not (second / "arms" / "wmss").exists()
    interrupted = read_json(root / "arms" / "sft" / "seed-1" / "manifest.json")
    del interrupted["phases"]["eval"]
    (second / "arms" / "sft" / "seed-1").mkdir(parents=True)
    (second / "arms" / "sft" / "seed-1" / "manifest.json").write_text(json.dumps(interrupted))
    assert main(["study", "archive", str(study.path), f"output_dir={second}", "--into", str(archive)]) == 0
    manifest = read_json(archive / "arms" / "sft" / "seed-2" / "manifest.json")
    assert manifest["created"] == read_json(second / "arms" / "sft" / "seed-2" / "manifest.json")["created"]
    assert "eval" in read_json(archive / "arms" / "sft" / "seed-1" / "manifest.json")["phases"]
    merged = collect(load_study(study.path, [f"output_dir={archive}"]))

    def accuracies(results: dict) -> dict:
        return {r["arm"]: (r["seeds"], r["accuracies"]) for r in results["arms"]}

    assert accuracies(merged) == accuracies(first)  # every arm and seed kept; SFT's seed 2 the same again


def test_fixed_setting_and_an_arm_tuned_on_the_validation_split(tmp_path, tiny_model_dir, mawps_dir):
    from wmss.study.report import write_study_report
    from wmss.study.runner import run_study

    arms = [
        {"name": "SFT", "overrides": ["sft.epochs=2", "wmss.iterations=0"]},
        {"name": "WMSS"},
        {"name": "WMSS tuned", "m1_from": "WMSS", "tune": {"wmss.learning_rate": [1e-3, 1e-2]}},
        {"name": "WD-JT only", "overrides": ["wmss.selection=all"], "m1_from": "WMSS", "versus": "WMSS"},
    ]
    fixed = {"fixed": {"train.learning_rate": 1e-3}, "source": "chosen elsewhere"}
    study = load_study(write_study(tmp_path, tiny_model_dir, mawps_dir, arms=arms, tuning=fixed))
    run_study(study)
    root = study.output_dir
    assert not (root / "tune").exists()  # a fixed setting runs no tuning
    assert read_json(root / "tuning.json")["chosen"] == {"format": "worked", "train.learning_rate": 1e-3}
    tuned = read_json(root / "tune-arms" / "wmss-tuned" / "tuning.json")
    assert [c["setting"]["wmss.learning_rate"] for c in tuned["candidates"]] == [1e-3, 1e-2]
    assert all(c["num_problems"] == 4 for c in tuned["candidates"])  # validset, not testset
    chosen = tuned["chosen"]["wmss.learning_rate"]
    test_run = read_json(root / "arms" / "wmss-tuned" / "seed-1" / "manifest.json")["phases"]
    assert test_run["wdjt-1"]["learning_rate"] == chosen and test_run["eval"]["num_problems"] == 4
    assert test_run["sft"]["reused"]  # the candidates and the test run start from WMSS's M1
    text = write_study_report(study).read_text()
    assert "fixed, not tuned here; chosen elsewhere" in text and "Tuning of arm WMSS tuned" in text
    jt_row = next(line for line in text.splitlines() if line.startswith("| WD-JT only |"))
    assert "] vs WMSS |" in jt_row  # its Δ is taken against the arm it names, not the first arm
    with pytest.raises(ConfigError, match="versus names no arm"):
        load_study(write_study(tmp_path, tiny_model_dir, mawps_dir, arms=[{"name": "A", "versus": "B"}]))
    with pytest.raises(ConfigError, match="tune maps config keys"):
        load_study(write_study(tmp_path, tiny_model_dir, mawps_dir, arms=[{"name": "A", "tune": {"x": 1}}]))


def test_plateau_rule_a_tie_is_the_later_epoch_and_starts_the_patience_again():
    from wmss.study.curve import plateau_reached, plateau_row

    def rows(*accuracies: float) -> list[dict]:
        return [{"epoch": e, "val_accuracy": a} for e, a in enumerate(accuracies, start=1)]

    assert plateau_row([]) is None and not plateau_reached([], 2)
    assert plateau_row(rows(0.2, 0.3, 0.3))["epoch"] == 3  # a tie: the later, more trained model
    assert not plateau_reached(rows(0.2, 0.3, 0.3, 0.3), 2)  # ties keep it going
    assert plateau_reached(rows(0.2, 0.3, 0.25, 0.29), 2)  # two epochs below the best: stop
    assert not plateau_reached(rows(0.2, 0.3, 0.25), 2)
    assert plateau_row(rows(0.2, 0.3, 0.25, 0.29))["epoch"] == 2


def test_learning_curve_stops_at_the_plateau_and_arms_start_from_it(tmp_path, tiny_model_dir, mawps_dir):
    from wmss.study.report import write_study_report
    from wmss.study.runner import run_study

    arms = [
        {"name": "SFT +1 epoch", "overrides": ["method=sft", "sft.epochs=2"], "from_curve": True},
        {"name": "WMSS K=1", "from_curve": True, "versus": "SFT +1 epoch"},
        {"name": "M_E*", "overrides": ["method=sft", "sft.epochs=1"], "from_curve": True},
        {"name": "WMSS K=1, weak M_(E*-1)", "from_curve": True, "weak": "previous"},
    ]
    curve = {"max_epochs": 4, "patience": 1, "train_sample": 3, "seeds": [1]}
    study = load_study(write_study(tmp_path, tiny_model_dir, mawps_dir, arms=arms, curve=curve,
                                   tuning={"fixed": {"train.learning_rate": 1e-3}}))  # fmt: skip
    run_study(study)
    root = study.output_dir / "curve" / "seed-1"
    result = read_json(root / "curve.json")
    rows = result["epochs"]
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    best = max(reversed(rows), key=lambda r: r["val_accuracy"])
    assert result["plateau_epoch"] == best["epoch"]
    assert len(rows) == 4 or rows[-1]["epoch"] - best["epoch"] == 1  # stopped once patience ran out
    assert all(r["train_problems"] == 3 and r["val_problems"] == 4 for r in rows)
    assert all(0 <= r["saturated_share"] <= 1 and r["train_loss"] > 0 for r in rows)
    manifest = read_json(root / "manifest.json")
    assert manifest["phases"]["sft"]["steps"] == 3 * len(rows)  # 12 rows / batch 4, per epoch
    for r in rows:
        assert (root / "epochs" / f"epoch-{r['epoch']}" / "config.json").is_file()
    wmss = read_json(study.output_dir / "arms" / "wmss-k-1" / "seed-1" / "manifest.json")
    assert wmss["phases"]["sft"]["model"] == str((root / "epochs" / f"epoch-{best['epoch']}").resolve())
    run_study(study, "curve")  # finished: nothing is measured again
    assert read_json(root / "curve.json") == result
    text = write_study_report(study).read_text()
    assert "**Learning curve**" in text and f"seed 1: E* = {best['epoch']}" in text
    assert (study.output_dir / "report" / "learning_curve.png").is_file()
    assert (study.output_dir / "report" / "accuracy_vs_k.png").is_file()

    # B3: M_E* measured alone and with each weak model the arms use; every arm's final model alone (the
    # start beside the curve, each arm's in its own run directory)
    from wmss.study.mechanism import read_mechanism

    mechanism = read_mechanism(study, 1)
    assert "arms" not in read_json(root / "mechanism.json")
    assert (study.output_dir / "arms" / "wmss-k-1" / "seed-1" / "saturation.json").is_file()
    assert mechanism["plateau_epoch"] == best["epoch"]
    weak = {"M0"} | ({"M_(E*-1)"} if best["epoch"] >= 2 else set())
    assert set(mechanism["start"]) == weak
    finished = {"SFT +1 epoch", "WMSS K=1", "M_E*"} | (
        {"WMSS K=1, weak M_(E*-1)"} if best["epoch"] >= 2 else set()
    )
    assert set(mechanism["arms"]) == finished
    start = mechanism["start"]["M0"]
    assert (
        start["mix_lambda"] == 0.5 and 0 <= start["saturated_share"] <= 1 and start["wdjt_gradient_norm"] > 0
    )
    # M_E* with one more epoch of nothing is M_E* itself: its saturation is the start's
    assert mechanism["arms"]["M_E*"]["loss"] == pytest.approx(start["loss"], rel=1e-5)
    assert mechanism["arms"]["SFT +1 epoch"]["loss"] != pytest.approx(start["loss"], rel=1e-5)
    assert "**Mechanism**" in text and "after WMSS K=1" in text and "M_E* (start), weak M0" in text
    run_study(study, "arms")  # measured: not again
    assert read_mechanism(study, 1) == mechanism

    # the archive: every record, no weights; the same tables from it alone once the runs are gone
    from wmss.cli import main

    reported = read_json(study.output_dir / "report" / "results.json")
    archive = tmp_path / "results" / "tiny"
    assert main(["study", "archive", str(study.path), "--into", str(archive)]) == 0
    kept = {p.relative_to(archive).as_posix() for p in archive.rglob("*") if p.is_file()}
    assert "curve/seed-1/curve.json" in kept and "curve/seed-1/mechanism.json" in kept
    assert "arms/wmss-k-1/seed-1/eval/predictions.jsonl" in kept and "tuning.json" in kept
    assert "arms/wmss-k-1/seed-1/saturation.json" in kept
    assert "data/worked/data.json" in kept and "data/worked/train.jsonl" not in kept  # no dataset text
    predictions = read_jsonl(archive / "arms" / "wmss-k-1" / "seed-1" / "eval" / "predictions.jsonl")
    assert predictions and all("prompt" not in r and "gold" not in r and "correct" in r for r in predictions)
    assert not any(
        p.endswith((".safetensors", ".bin", ".pt")) or "/final/" in p or "/models/" in p for p in kept
    )
    assert not any(p.startswith("curve/seed-1/epochs/epoch-1/") and p.count("/") == 4 for p in kept)
    size = sum(p.stat().st_size for p in archive.rglob("*") if p.is_file())
    assert size < sum(p.stat().st_size for p in study.output_dir.rglob("*") if p.is_file()) / 10
    shutil.rmtree(study.output_dir)
    again = load_study(study.path, [f"output_dir={archive}"])
    write_study_report(again)
    rebuilt = read_json(archive / "report" / "results.json")
    assert rebuilt["arms"] == reported["arms"] and rebuilt["mechanism"] == reported["mechanism"]
    assert rebuilt["curves"] == reported["curves"]
    assert main(["study", "archive", str(study.path), "--into", str(archive)]) == 2  # no runs: an error
    assert (archive / "report" / "results.json").is_file()  # and the archive there is left as it was
    with pytest.raises(ConfigError, match="weak: previous needs from_curve"):
        load_study(write_study(tmp_path, tiny_model_dir, mawps_dir, arms=[{"name": "A", "weak": "previous"}]))


def test_training_compute_counts_what_each_weak_source_runs():
    """A synthetic weak source adds nothing, a weak model held fixed or shuffled adds its forward pass,
    a trained one its training pass; a phase whose cost is not modelled makes the estimate unknown."""
    from wmss.study.report import training_compute

    def wdjt(**record):
        return {"sft": {"steps": 0, "reused": True}, "wdjt-1": {"steps": 5, "epochs": 2.0, "examples": 5,
                **record}}  # fmt: skip

    weak = {"weak": "M0"}
    costs = {
        name: training_compute(wdjt(**record), 10)
        for name, record in {
            "real": weak,
            "frozen": {**weak, "freeze_weak": True},
            "shuffled": {**weak, "weak_logits": "shuffled"},
            "uniform": {**weak, "weak_logits": "uniform"},
            "entropy_matched": {**weak, "weak_logits": "entropy_matched"},
            "lambda 1": {"weak": None},
        }.items()
    }
    assert costs == {"real": 6.0, "frozen": 4.0, "shuffled": 4.0, "uniform": 3.0, "entropy_matched": 3.0,
                     "lambda 1": 3.0}  # fmt: skip
    assert training_compute({"sft": {"steps": 4, "epochs": 2.0, "examples": 10}, "expo": {}}, 10) == 6.0
    assert training_compute({"dpo": {"steps": 4, "epochs": 1.0, "examples": 10}}, 10) is None
    assert training_compute({"sft": {"steps": 4, "epochs": 1.0, "examples": 10}}, None) is None


def test_sampled_pass_at_k_difference_is_paired_per_problem_on_shared_seeds():
    """pass@1 and pass@n differences come from each problem's unbiased pass@k on the seeds both arms
    sampled (an unsampled seed is left out), not from the arms' means over different seeds."""
    from wmss.study.report import _paired_pass_at_k

    def sampled(*per_problem):
        return {"pass_at_k": {"samples": 2, "per_problem": list(per_problem)}}

    runs = {
        "SFT": {1: sampled(0.0, 0.5, 1.0), 2: sampled(1.0, 1.0, 1.0)},
        "WMSS": {1: sampled(0.5, 0.5, 0.0), 2: {"pass_at_k": None}, 3: None},
    }
    paired = _paired_pass_at_k(runs, "WMSS", "SFT")
    assert paired["seeds"] == [1]
    # pass@1 = share correct: 1/3 - 1/2; pass@2 = any correct: [1, 1, 0] vs [0, 1, 1]
    assert paired["1"]["delta"] == pytest.approx(1 / 3 - 1 / 2)
    assert paired["2"]["delta"] == pytest.approx(0.0)
    assert paired["2"]["low"] < 0 < paired["2"]["high"]
    assert _paired_pass_at_k({"SFT": runs["SFT"], "X": {2: sampled(1.0, 0.0, 0.0)}}, "X", "SFT")["seeds"] == [
        2
    ]
    assert _paired_pass_at_k({"SFT": runs["SFT"], "X": {3: sampled(1.0, 0.0, 0.0)}}, "X", "SFT") is None


def test_post_hoc_measures_held_out_nll_calibration_and_sampled_pass_at_k(
    tmp_path, tiny_model_dir, mawps_dir
):
    """``heldout: true`` scores every finished arm on the held-out problems and for calibration;
    ``pass_at_k`` samples the named arms; the report gains their columns and table."""
    from wmss.study.report import write_study_report
    from wmss.study.runner import run_study

    arms = [
        {"name": "SFT", "overrides": ["sft.epochs=1", "wmss.iterations=0"], "seeds": "all"},
        {"name": "Weak: uniform", "overrides": ["wmss.weak_logits=uniform"]},
    ]
    fixed = {"fixed": {"train.learning_rate": 1e-3}, "source": "chosen elsewhere"}
    path = write_study(tmp_path, tiny_model_dir, mawps_dir, arms=arms, tuning=fixed, seeds=[1, 2],
                       heldout=True, pass_at_k={"arms": ["SFT"], "samples": 2, "seeds": [1]},
                       verdict={"arm": "SFT", "controls": ["Weak: uniform"]})  # fmt: skip
    study = load_study(path)
    run_study(study)
    for slug, seed in (("sft", 1), ("weak-uniform", 1), ("sft", 2)):
        run = study.output_dir / "arms" / slug / f"seed-{seed}"
        held = read_json(run / "heldout.json")
        assert held["problems"] == 4 and held["tokens"] > 0 and held["nll_per_token"] > 0  # 16 - 12 held out
        calibration = read_json(run / "calibration.json")
        assert {"ece", "brier"} <= set(calibration) and {"ece", "brier"} <= set(calibration["derived"])
        assert (run / "pass_at_k.json").is_file() == (slug == "sft" and seed == 1)  # pass_at_k.seeds: [1]
    assert set(read_json(study.output_dir / "arms" / "sft" / "seed-1" / "pass_at_k.json")["pass_at_k"]) == {
        "1",
        "2",
    }
    text = write_study_report(study).read_text()
    assert "held-out NLL/token" in text and "**Sampled pass@k** (2 answers" in text
    assert "| Δ pass@1 vs SFT | Δ pass@2 vs SFT |" in text  # SFT is the only sampled arm: no differences
    assert "**Calibration** on the test answers" in text and "| derived: mean confidence |" in text
    assert "Provisional" not in text and "reads accuracy alone" not in text  # the rule read both measures
    (study.output_dir / "arms" / "weak-uniform" / "seed-1" / "heldout-nll.jsonl").unlink()
    (study.output_dir / "arms" / "sft" / "seed-2" / "heldout-nll.jsonl").unlink()
    text = write_study_report(study).read_text()  # runs not scored yet: the answer is provisional
    assert "the held-out NLL of SFT, Weak: uniform is still to score" in text
    assert re.search(r"\| SFT \| 1,2 \|.*\| \d\.\d{4} \(seed 1\) \|", text)  # the NLL's seeds are named
    run_study(study, stage="heldout")
    assert "Provisional" not in write_study_report(study).read_text()
    with pytest.raises(ConfigError, match="pass_at_k must be"):
        load_study(write_study(tmp_path, tiny_model_dir, mawps_dir, pass_at_k={"arms": ["nobody"]}))
    with pytest.raises(ConfigError, match=r"pass_at_k must be.*seeds: \[some of the study's seeds"):
        load_study(write_study(tmp_path, tiny_model_dir, mawps_dir, seeds=[1, 2],
                               pass_at_k={"arms": ["SFT"], "seeds": [3]}))  # fmt: skip


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[1] / "configs" / "study").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_every_shipped_study_config_loads(path):
    """The study configs that docs/RESULTS.md quotes parse, with their arms, overrides and contrasts
    (a config key renamed in the code would break them only at run time otherwise)."""
    study = load_study(path)
    assert study.arms, f"{path.name} has no arms"
    names = {arm.name for arm in study.arms}
    for contrast in study.contrasts:
        pair = {contrast["arm"], contrast["versus"]}
        assert pair <= names, f"{path.name}: contrast {pair} names an arm it does not have"


def _diff(delta, low, high):
    return {"delta": delta, "low": low, "high": high, "seeds": [1, 2, 3]}


def test_verdict_rule_sharpening_when_a_control_does_as_well():
    """A control level with the reference on accuracy and not worse on NLL: sharpening, even when
    another control loses clearly."""
    readings = {
        "entropy-matched": control_reading(_diff(0.0, -0.03, 0.03), _diff(0.001, -0.002, 0.004)),
        "uniform": control_reading(_diff(-0.08, -0.12, -0.04), _diff(0.05, 0.03, 0.07)),
    }
    assert decide(readings) == {"answer": SHARPENING, "because": ["entropy-matched"]}
    # the same accuracy but a held-out NLL clearly worse: that control no longer does as well
    readings["entropy-matched"] = control_reading(_diff(0.0, -0.03, 0.03), _diff(0.01, 0.004, 0.02))
    assert decide(readings)["answer"] != SHARPENING


def test_verdict_rule_weak_specific_only_when_every_control_loses_clearly():
    lose_on_accuracy = control_reading(_diff(-0.05, -0.09, -0.01), _diff(0.0, -0.01, 0.01))
    lose_on_nll = control_reading(_diff(-0.01, -0.04, 0.02), _diff(0.02, 0.01, 0.03))
    assert decide({"a": lose_on_accuracy, "b": lose_on_nll})["answer"] == WEAK_SPECIFIC
    # a control that loses on accuracy but wins on NLL, clearly: not separable
    mixed = control_reading(_diff(-0.05, -0.09, -0.01), _diff(-0.02, -0.03, -0.01))
    assert decide({"a": lose_on_accuracy, "c": mixed}) == {"answer": NOT_SEPARABLE, "because": ["c"]}
    # a control behind on accuracy, interval holding zero, no NLL: not separable either
    unclear = control_reading(_diff(-0.02, -0.06, 0.02), None)
    assert decide({"a": lose_on_accuracy, "d": unclear}) == {"answer": NOT_SEPARABLE, "because": ["d"]}
    with pytest.raises(ValueError):
        decide({})
