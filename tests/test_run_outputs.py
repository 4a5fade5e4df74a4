"""What a run shows and leaves: phase lines and a closing summary through the Python API, a progress bar
while DPO/SPIN pairs are generated, a model card in final/, reporting integrations checked early, and one
W&B run per training phase."""

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
    assert f"**Base model:** `{tiny_model_dir}`" in card and "supervised fine-tuning" in card
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


def wandb_records(path):
    """The records of a W&B run file (``run-<id>.wandb``): after a 7-byte file header, blocks of 32 KiB
    holding chunks, each with a 7-byte header (checksum, little-endian length, kind: 1 whole record,
    2/3/4 its first/middle/last part)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_each_training_phase_is_its_own_wandb_run(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("wandb")
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(tmp_path)), ("WANDB_SILENT", "true")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    from wmss.pipeline import run_pipeline

    data = write_jsonl(tmp_path / "d.jsonl", arithmetic_rows(8))
    cfg = load_config(
        None,
        [
            f"model={tiny_model_dir}",
            f"data.path={data}",
            f"output_dir={tmp_path / 'wb-run'}",
            "data.prompt_template={question}",
            "data.completion_template={answer}",
            "train.per_device_batch_size=2",
            "train.max_length=96",
            "train.logging_steps=1",
            "train.report_to=wandb",
            "wmss.iterations=1",
        ],
    )
    manifest = run_pipeline(cfg)
    runs = {}
    for path in sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb")):
        records = wandb_records(path)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        steps = [
            json.loads(item.value_json)
            for r in records
            if r.WhichOneof("record_type") == "history"
            for item in r.history.item
            if (item.key or "/".join(item.nested_key)) == "train/global_step"
        ]
        runs[run.display_name] = (run.run_group, run.job_type, steps)
    assert sorted(runs) == ["wb-run/sft", "wb-run/wdjt-1"]
    for phase in ("sft", "wdjt-1"):
        group, job_type, steps = runs[f"wb-run/{phase}"]
        assert (group, job_type) == ("wb-run", phase)
        # within a run the step never starts again: 1, 2, … up to the phase's last
        assert steps[0] == 1 and steps == sorted(steps) and steps[-1] == manifest["phases"][phase]["steps"]
