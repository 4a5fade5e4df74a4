"""`wmss demo --code`: SFT against WMSS on generated Python problems, graded in the sandbox, end to end on a
tiny model (the real demo runs SmolLM2-135M-Instruct); and its consent."""

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
