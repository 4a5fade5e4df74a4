"""`wmss demo --code`: SFT against WMSS on generated Python problems, graded in the sandbox, end to end on a
tiny model (the real demo runs SmolLM2-135M-Instruct); and its consent."""

import pytest

from tests.conftest import write_jsonl
from wmss.cli import main
from wmss.demo import format_pass_table, paired_differences, run_demo
from wmss.errors import ConfigError
from wmss.io import read_json, read_jsonl


def tiny_overrides(model_dir) -> list[str]:
    """The demo's settings cut down for the tiny model: short rows, a few tokens generated."""
    return [f"model={model_dir}", "train.max_length=320", "eval.max_new_tokens=8", "eval.batch_size=12"]


def test_the_code_demo_trains_both_arms_and_grades_by_running_tests(tmp_path, tiny_model_dir):
    rows = run_demo(
        tmp_path / "demo",
        quick=True,
        code=True,
        overrides=tiny_overrides(tiny_model_dir),
    )
    assert [r["method"] for r in rows] == ["SFT", "WMSS"]
    assert all(r["num_problems"] == 12 and r["optimizer_steps"] > 0 for r in rows)
    train = read_jsonl(tmp_path / "demo" / "data" / "train.jsonl")
    assert len(train) == 32 and train[0]["messages"][1]["content"].startswith("```python")
    for arm in ("sft", "wmss"):
        graded = read_jsonl(tmp_path / "demo" / arm / "eval" / "predictions.jsonl")
        assert len(graded) == 12 and all("correct" in r for r in graded)  # each one run against its tests
        assert read_json(tmp_path / "demo" / arm / "manifest.json")["phases"]["eval"]["task"] == "code"
    assert "Python function-writing problems" in (tmp_path / "demo" / "report.md").read_text()


def test_the_code_demo_asks_for_consent(tmp_path, capsys):
    assert main(["demo", "--code", "--quick", "--output-dir", str(tmp_path / "d")]) == 2
    assert "--allow-code-execution" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_the_code_demo_with_humaneval_grades_both_arms_on_both_evaluations(tmp_path, tiny_model_dir):
    out = tmp_path / "demo"
    common = dict(
        quick=True,
        code=True,
        overrides=tiny_overrides(tiny_model_dir),
        humaneval=True,
        humaneval_limit=3,
        humaneval_max_new_tokens=6,
    )
    plain = run_demo(out, **{**common, "humaneval": False, "humaneval_limit": None})
    plain_report = (out / "report.md").read_text()
    weights = [(out / arm / "final" / "model.safetensors").stat().st_mtime_ns for arm in ("sft", "wmss")]
    rows = run_demo(out, **common)  # the finished demo is reused, then HumanEval is added
    assert [
        (out / arm / "final" / "model.safetensors").stat().st_mtime_ns for arm in ("sft", "wmss")
    ] == weights
    added = ("humaneval", "vs_sft", "total_wall_time_s")
    assert [{k: v for k, v in r.items() if k not in added} for r in rows] == [
        {k: v for k, v in r.items() if k != "total_wall_time_s"} for r in plain
    ]
    assert (out / "report.md").read_text().startswith(plain_report)
    report = read_json(out / "report.json")
    for row, arm in zip(report, ("sft", "wmss"), strict=True):
        he = row["humaneval"]
        assert he["num_problems"] == 3 and len(he["per_problem"]) == 3
        assert he["accuracy"] == sum(he["per_problem"]) / 3 == he["num_correct"] / 3
        graded = read_jsonl(out / "humaneval" / arm / "predictions.jsonl")
        assert [g["id"] for g in graded] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
        assert all(g["num_tokens"] <= 6 and "execution" in g for g in graded)  # each one run in the sandbox
        assert [float(g["correct"]) for g in graded] == he["per_problem"]
    paired = report[1]["vs_sft"]
    held_out = [read_jsonl(out / arm / "eval" / "predictions.jsonl") for arm in ("sft", "wmss")]
    for name, (wmss, sft) in {
        "held_out": ([r["correct"] for r in held_out[1]], [r["correct"] for r in held_out[0]]),
        "humaneval": (report[1]["humaneval"]["per_problem"], report[0]["humaneval"]["per_problem"]),
    }.items():
        d = paired[name]
        assert d["num_problems"] == len(sft) and d["delta"] == pytest.approx(
            (sum(wmss) - sum(sft)) / len(sft)
        )
        assert d["ci95"][0] <= d["delta"] <= d["ci95"][1]
    text = (out / "report.md").read_text()
    assert "| HumanEval (n=3) |" in text and "| generated, held out (n=12) |" in text and "bootstrap" in text
    assert "vs_sft" not in report[0]

    # run again: the runs and both evaluations are read back, not redone, and give the same report
    stamps = [(out / "humaneval" / a / "predictions.jsonl").stat().st_mtime_ns for a in ("sft", "wmss")]
    again = run_demo(out, **common)
    assert [{**r, "total_wall_time_s": 0} for r in again] == [{**r, "total_wall_time_s": 0} for r in rows]
    assert [
        (out / "humaneval" / a / "predictions.jsonl").stat().st_mtime_ns for a in ("sft", "wmss")
    ] == stamps
    assert (out / "report.md").read_text() == text


def test_the_humaneval_comparison_needs_the_code_demo(tmp_path, capsys):
    where = ["--output-dir", str(tmp_path / "d")]
    assert main(["demo", "--humaneval", *where]) == 2
    assert "add --code" in capsys.readouterr().err
    code = ["demo", "--code", "--allow-code-execution", *where]
    assert main([*code, "--humaneval-limit", "3"]) == 2
    assert "add --humaneval" in capsys.readouterr().err
    assert main([*code, "--humaneval", "--humaneval-limit", "0"]) == 2
    assert "--humaneval-limit must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def _arm(tmp_path, name, held_out, humaneval):
    """A demo row as ``run_demo`` writes it, with its held-out verdicts in ``<run_dir>/eval``."""
    run_dir = tmp_path / name
    (run_dir / "eval").mkdir(parents=True)
    write_jsonl(run_dir / "eval" / "predictions.jsonl", [{"id": i, "correct": c} for i, c in held_out])
    return {
        "run_dir": str(run_dir),
        "num_correct": sum(c for _, c in held_out),
        "num_problems": len(held_out),
        "humaneval": {
            "per_problem": humaneval,
            "num_correct": int(sum(humaneval)),
            "num_problems": len(humaneval),
        },
    }


def test_the_paired_differences_are_wmss_minus_sft_problem_by_problem(tmp_path):
    sft = _arm(tmp_path, "sft", [("a", True), ("b", False), ("c", False), ("d", True)], [1.0, 0.0, 0.0])
    wmss = _arm(tmp_path, "wmss", [("a", True), ("b", True), ("c", True), ("d", True)], [0.0, 0.0, 0.0])
    rows = [sft, wmss]
    wmss["vs_sft"] = paired = paired_differences(rows)
    assert paired["held_out"]["delta"] == pytest.approx(0.5) and paired["held_out"]["num_problems"] == 4
    assert paired["humaneval"]["delta"] == pytest.approx(-1 / 3)
    low, high = paired["held_out"]["ci95"]
    assert 0 <= low < high  # WMSS is never worse on a problem: no resample loses
    low, high = paired["humaneval"]["ci95"]
    assert low < high <= 0
    table = format_pass_table(rows)
    assert "| generated, held out (n=4) | 2/4 (50.0%) | 4/4 (100.0%) | +50.0 [" in table
    assert "| HumanEval (n=3) | 1/3 (33.3%) | 0/3 (0.0%) | -33.3 [" in table


def test_the_paired_differences_need_the_same_held_out_problems(tmp_path):
    sft = _arm(tmp_path, "sft", [("a", True), ("b", False)], [1.0])
    wmss = _arm(tmp_path, "wmss", [("a", True), ("x", False)], [1.0])
    with pytest.raises(ConfigError, match="different held-out problems"):
        paired_differences([sft, wmss])
