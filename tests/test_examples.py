"""Each script in examples/ runs as written (on tiny models, so that it takes seconds)."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import build_model

EXAMPLES = Path(__file__).parent.parent / "examples"


def _run(script, *args):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_pipeline_from_python(tmp_path, tiny_model_dir):
    printed = _run(
        "pipeline_from_python.py",
        "--model",
        tiny_model_dir,
        "--output-dir",
        tmp_path,
        "--train",
        16,
        "--test",
        4,
    )
    assert "sft: " in printed and "wmss: " in printed and "held-out problems" in printed
    for method in ("sft", "wmss"):
        manifest = json.loads((tmp_path / method / "manifest.json").read_text())
        assert manifest["phases"]["eval"]["num_problems"] == 4 and (tmp_path / method / "final").is_dir()


def test_own_pair(tmp_path, tiny_model_dir, tokenizer):
    strong = tmp_path / "strong-in"
    build_model(len(tokenizer), seed=7).save_pretrained(strong)
    tokenizer.save_pretrained(strong)
    printed = _run(
        "own_pair.py", "--weak", tiny_model_dir, "--strong", strong, "--output-dir", tmp_path / "out"
    )
    assert "WD-DS kept" in printed
    assert (tmp_path / "out" / "strong" / "config.json").is_file()
    assert not (tmp_path / "out" / "strong" / "weak").exists()  # the strong model alone


def test_compare_models(tmp_path, tiny_model_dir, tokenizer):
    other = tmp_path / "other"
    build_model(len(tokenizer), seed=7).save_pretrained(other)
    tokenizer.save_pretrained(other)
    task = tmp_path / "mawps.json"
    task.write_text(
        json.dumps(
            [
                {
                    "original_text": f"Tom has {i} apples and buys 2 more .",
                    "equation": f"x={i}+2",
                    "ans": i + 2,
                }
                for i in range(3)
            ]
        )
    )
    printed = _run(
        "compare_models.py",
        "--model",
        f"a={tiny_model_dir}",
        "--model",
        f"b={other}",
        "--task",
        f"mawps={task}",
        "--baseline",
        "a",
        "--output-dir",
        tmp_path / "eval",
    )
    assert "a: " in printed and "points vs a (95% CI" in printed
    assert (tmp_path / "eval" / "summary.json").is_file()
