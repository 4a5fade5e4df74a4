"""`wmss demo --code`: SFT against WMSS on generated Python problems, graded in the sandbox, end to end on a
tiny model (the real demo runs SmolLM2-135M-Instruct); and its consent."""

import pytest

from wmss.cli import main
from wmss.demo import run_demo
from wmss.io import read_json, read_jsonl


def test_the_code_demo_trains_both_arms_and_grades_by_running_tests(tmp_path, tiny_model_dir):
    rows = run_demo(
        tmp_path / "demo",
        quick=True,
        code=True,
        overrides=[
            f"model={tiny_model_dir}",
            "train.max_length=320",
            "eval.max_new_tokens=8",
            "eval.batch_size=12",
        ],
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
        overrides=[
            f"model={tiny_model_dir}",
            "train.max_length=320",
            "eval.max_new_tokens=8",
            "eval.batch_size=12",
        ],
        humaneval=True,
        humaneval_limit=3,
        humaneval_max_new_tokens=6,
    )
    rows = run_demo(out, **common)
    assert [r["method"] for r in rows] == ["SFT", "WMSS"]
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
