"""What a run shows and leaves: phase lines and a closing summary through the Python API, a progress bar
while DPO/SPIN pairs are generated, a model card in final/, and reporting integrations checked early."""

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import arithmetic_rows, build_model, write_jsonl
from wmss.config import DataConfig, load_config
from wmss.data import tokenize_examples
from wmss.errors import ConfigError
from wmss.rundir import summary_lines

SCRIPT = """
import sys, wmss
wmss.run({"model": sys.argv[1], "output_dir": sys.argv[2], "method": "sft", "sft": {"epochs": 1},
          "data": {"path": sys.argv[3], "prompt_template": "{question}", "completion_template": "{answer}"},
          "train": {"per_device_batch_size": 4, "max_length": 96, "save_steps": 100}})
"""


def test_python_api_shows_phases_summary_and_writes_a_model_card(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", arithmetic_rows(8))
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_model_dir), str(out), str(data)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[wmss] phase sft: started" in done.stderr and "[wmss] data: 8 examples" in done.stderr
    assert "total" in done.stderr and "(training)" in done.stderr
    card = (out / "final" / "README.md").read_text()
    assert f"base_model: {tiny_model_dir}" in card and "supervised fine-tuning" in card
    assert "8 examples" in card and "wmss.run(...)" in card
    manifest = json.loads((out / "manifest.json").read_text())
    assert f"{manifest['budget']['optimizer_steps']} optimizer steps" in card


def test_summary_lines_give_steps_passes_and_time():
    manifest = {
        "phases": {
            "M0": {"status": "done", "wall_time_s": 0.1},
            "sft": {"status": "done", "wall_time_s": 12.34},
            "final": {"status": "done", "wall_time_s": 0.5},
        },
        "budget": {
            "optimizer_steps": 6,
            "passes_over_data": 1.0,
            "train_wall_time_s": 12.34,
            "phases": {"sft": {"steps": 6, "passes": 1.0}},
        },
    }
    lines = summary_lines(manifest)
    assert lines[2].split() == ["sft", "6", "1.00", "12.3", "s"]
    assert lines[-1].split()[:4] == ["total", "6", "1.00", "12.3"]


def test_pair_generation_shows_progress(tokenizer, capfd):
    from wmss.preference import make_pairs

    cfg = load_config(None, ["method=spin", "dpo.max_new_tokens=2", "dpo.generation_batch_size=2"])
    data, _ = tokenize_examples(
        arithmetic_rows(4),
        tokenizer,
        DataConfig(prompt_template="{question}", completion_template="{answer}"),
        96,
    )
    make_pairs(build_model(len(tokenizer)), tokenizer, data, cfg)
    assert "generating" in capfd.readouterr().err


@pytest.mark.parametrize("integration", ["wandb", "mlflow"])
def test_missing_reporting_integration_fails_when_the_config_is_read(integration):
    if importlib.util.find_spec(integration) is not None:
        pytest.skip(f"{integration} is installed")
    with pytest.raises(ConfigError, match=f"needs {integration}, which is not installed: pip install"):
        load_config(None, [f"train.report_to={integration}"])
