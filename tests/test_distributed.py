"""Several processes (issue 7): 2 CPU processes (gloo) give what one process gives with the same global batch.

The 2-process runs are real launches (``torch.distributed.run``, ``accelerate launch``) of
``tests/distributed_worker.py`` and of ``wmss run``; the one-process references run here. Same global
batch: 2 processes × 2 per device against 1 × 4, with a dataset whose size is a multiple of 4 (see the
worker's docstring for why the batches then hold the same examples).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests import distributed_worker
from tests.conftest import build_model
from wmss import distributed
from wmss.config import load_config
from wmss.entropy import read_entropy_file
from wmss.errors import ConfigError, WmssError
from wmss.io import read_jsonl
from wmss.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
# A launch takes ~10-20 s on an idle 2-core CPU; a machine busy with other work may need more.
LAUNCH_TIMEOUT_S = int(os.environ.get("WMSS_TEST_LAUNCH_TIMEOUT", 600))
LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(kind: str, *args: str, expect_success: bool = True) -> str:
    """Run ``args`` on 2 processes with ``torchrun`` or ``accelerate`` (its CPU config); the output."""
    port = str(_free_port())
    if kind == "torchrun":
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    else:
        config = ROOT / "configs" / "accelerate" / "cpu-2proc.yaml"
        launcher = ["-m", "accelerate.commands.launch", "--config_file", str(config)]
        launcher += ["--main_process_port", port]
    return run_command([*launcher, *args], expect_success)


def run_command(args: list[str], expect_success: bool = True) -> str:
    """``python ARGS`` from the repository root, outside any launcher's environment; its output.

    On a timeout the whole process group is killed; a failure shows the end of the output.
    """
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "src")]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    what = " ".join(args)
    try:
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{what} ran over {LAUNCH_TIMEOUT_S} s; its output ended with:\n{output[-4000:]}")
    if (proc.returncode == 0) != expect_success:
        pytest.fail(f"{what} exited with {proc.returncode}; its output ended with:\n{output[-4000:]}")
    return output


@contextmanager
def one_thread() -> Iterator[None]:
    """One CPU thread, as in the launched processes (OMP_NUM_THREADS=1): same kernels, same bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=atol, msg=f"{name} of {a} vs {b}")


def moved(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def phases(tmp_path_factory, tiny_model_dir, tokenizer) -> tuple[Path, Path, Path, Path]:
    """(model, weak, outputs of 2 processes, outputs of 1 process) of ``distributed_worker.phases``."""
    root = tmp_path_factory.mktemp("phases")
    weak = root / "weak"
    build_model(len(tokenizer), seed=1).save_pretrained(weak)
    tokenizer.save_pretrained(weak)
    two, one = root / "two", root / "one"
    two.mkdir(), one.mkdir()
    launch("torchrun", "-m", "tests.distributed_worker", "phases", str(tiny_model_dir), str(weak), str(two))
    with one_thread():
        distributed_worker.phases(str(tiny_model_dir), str(weak), str(one))
    return Path(tiny_model_dir), weak, two, one


def _steps(out: Path, name: str) -> list[dict]:
    return json.loads((out / f"{name}-steps.json").read_text())


def assert_same_steps(two: Path, one: Path, name: str) -> None:
    """Loss and gradient norm of every step: the loss scaling over processes (num_items_in_batch) is
    right, which the weights alone would hide (AdamW's update barely depends on the gradient's scale)."""
    a, b = _steps(two, name), _steps(one, name)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)


def test_ddp_sft_equals_one_process(phases):
    model, _, two, one = phases
    assert_same_steps(two, one, "sft")
    assert_same_weights(two / "sft", one / "sft", atol=1e-6)
    assert moved(one / "sft", model) > 1e-3  # it did train


@pytest.mark.parametrize("freeze_weak", [False, True])
def test_ddp_joint_training_equals_one_process(phases, freeze_weak):
    model, weak, two, one = phases
    name = "joint-frozen" if freeze_weak else "joint"
    assert_same_steps(two, one, name)
    assert_same_weights(two / name, one / name, atol=1e-6)  # the strong model
    assert_same_weights(two / f"{name}-weak", one / f"{name}-weak", atol=1e-6)
    assert moved(one / name, model) > 1e-3
    if freeze_weak:
        assert moved(two / f"{name}-weak", weak) == 0.0  # left out of DDP's gradient sync, never updated
    else:
        assert moved(two / f"{name}-weak", weak) > 1e-3


def test_sharded_entropy_pass_equals_one_process(phases):
    _, _, two, one = phases
    sharded, single = np.load(two / "entropy.npy"), np.load(one / "entropy.npy")
    assert sharded.shape == (17,) and np.isfinite(sharded).all()
    assert np.array_equal(sharded, single)  # to the bit: every example in the same padded batch


@pytest.mark.parametrize("kind", ["joint", "sft"])
def test_fsdp_training_equals_one_process(phases, kind):
    """WD-JT (weak and strong both sharded, one optimizer) and SFT with FSDP2 on the CPU: same steps as
    one process with the fused loss heads, and the model saved from the gathered state dict is a
    standard full checkpoint of the base architecture."""
    model, _, two, one = phases
    name = f"fsdp-{kind}"
    assert_same_steps(two, one, name)
    # AdamW's g/√v amplifies float round-off where gradients are tiny: a looser bound than for DDP
    assert_same_weights(two / name, one / name, atol=1e-4)
    assert moved(one / name, model) > 1e-2
    saved, base = (AutoModelForCausalLM.from_pretrained(p) for p in (two / name, model))
    assert type(saved) is type(base)
    assert saved.state_dict().keys() == base.state_dict().keys()
    assert all(p.shape == base.state_dict()[k].shape for k, p in saved.state_dict().items())
    assert (two / name / "tokenizer.json").is_file()


def _pipeline_config(tmp_path: Path, model: Path, train_file: Path) -> Path:
    config = {
        "model": str(model),
        "output_dir": str(tmp_path / "two"),
        "data": {"path": str(train_file), "prompt_template": "{question}", "completion_template": "{answer}"},
        "train": {
            "learning_rate": 3e-3,
            "per_device_batch_size": 2,
            "max_length": 96,
            "save_steps": 2,
            "logging_steps": 1,
        },
        # keep duplicate draws: |D_active| = |D| = 24, a multiple of the global batch
        "wmss": {"dedup": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_wmss_run_on_two_processes_resumes_and_equals_one_process(tmp_path, tiny_model_dir, train_file):
    config = _pipeline_config(tmp_path, tiny_model_dir, train_file)
    two = tmp_path / "two"
    # interrupted on both processes right after WD-JT's checkpoint at step 2
    worker = ["-m", "tests.distributed_worker", "interrupted-pipeline", str(config), "wdjt-1", "2"]
    launch("torchrun", *worker, expect_success=False)
    manifest = json.loads((two / "manifest.json").read_text())
    assert (
        manifest["phases"]["sft"]["status"] == "done" and manifest["phases"]["wdjt-1"]["status"] == "running"
    )
    checkpoint = two / "checkpoints" / "wdjt-1" / "checkpoint-2"
    assert {"strong", "weak", "trainer_state.json", "rng_state_0.pth", "rng_state_1.pth"} <= {
        p.name for p in checkpoint.iterdir()
    }
    # resumed with the documented command
    output = launch("accelerate", "-m", "wmss", "run", str(config))
    assert output.count("done: final model at") == 1  # printed by the main process only
    manifest = json.loads((two / "manifest.json").read_text())
    phases = manifest["phases"]
    assert all(p["status"] == "done" for p in phases.values())
    assert phases["wdjt-1"]["attempts"] == 2 and phases["sft"]["attempts"] == 1
    assert phases["entropy-M1"]["attempts"] == 1 and phases["wdjt-1"]["steps"] == 6
    assert manifest["result_config"]["num_processes"] == 2
    assert not (two / "checkpoints").exists() and (two / "logs" / "wdjt-1.json").is_file()

    one = tmp_path / "one"
    with one_thread():
        run_pipeline(load_config(str(config), [f"output_dir={one}", "train.per_device_batch_size=4"]))
    assert_same_weights(two / "models" / "M1", one / "models" / "M1", atol=1e-6)
    assert_same_weights(two / "final", one / "final", atol=1e-6)
    assert (two / "entropy" / "M0.jsonl").read_text() == (one / "entropy" / "M0.jsonl").read_text()
    idx_two, h_two = read_entropy_file(two / "entropy" / "M1.jsonl")
    idx_one, h_one = read_entropy_file(one / "entropy" / "M1.jsonl")
    assert idx_two == idx_one and np.allclose(h_two, h_one, rtol=1e-6, atol=0)  # M1 itself differs by ~1e-8
    sel_two, sel_one = read_jsonl(two / "selection-1.jsonl"), read_jsonl(one / "selection-1.jsonl")
    assert [r["draws"] for r in sel_two] == [r["draws"] for r in sel_one]

    # the number of processes is part of the run: resuming it with one process is refused
    with pytest.raises(ConfigError, match=r"num_processes: 2 -> 1.*global batch"):
        run_pipeline(load_config(str(config), []))


def test_accelerate_cpu_flag_starting_one_process_is_refused(tmp_path, tiny_model_dir, train_file):
    """``accelerate launch --cpu --num_processes 2`` runs the script once (no MPI): wmss says so and stops."""
    config = _pipeline_config(tmp_path, tiny_model_dir, train_file)
    cmd = ["-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    cmd += ["--main_process_port", str(_free_port()), "-m", "wmss", "run", str(config)]
    output = run_command(cmd, expect_success=False)
    assert "wmss: error: `accelerate launch` was asked for more than one process" in output
    assert not (tmp_path / "two" / "manifest.json").exists()


def test_fsdp_or_deepspeed_config_on_the_cpu_is_refused(monkeypatch):
    """accelerate enables FSDP and DeepSpeed on GPUs only; on the CPU they would silently be DDP."""
    if torch.cuda.is_available():
        pytest.skip("on a machine with a GPU this launch would be valid")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(WmssError, match="asks for FSDP, which accelerate runs on GPUs only"):
        distributed.init()


def test_lora_wmss_run_on_two_processes_equals_one_process(tmp_path, tiny_model_dir, train_file):
    """LoRA (two adapters on one frozen base) under DDP: the same adapters as one process."""
    config = _pipeline_config(tmp_path, tiny_model_dir, train_file)
    lora = ["peft.enabled=true", "peft.r=4", "peft.dropout=0.0"]
    output = launch("accelerate", "-m", "wmss", "run", str(config), *lora)
    assert output.count("done: final model at") == 1
    one = tmp_path / "one"
    with one_thread():
        run_pipeline(load_config(str(config), [f"output_dir={one}", "train.per_device_batch_size=4", *lora]))
    two = tmp_path / "two"
    for model in ("M1", "M2"):
        a = load_file(str(two / "models" / model / "adapter_model.safetensors"))
        b = load_file(str(one / "models" / model / "adapter_model.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=f"{model}: {key}")
    assert_same_weights(two / "final", one / "final", atol=1e-5)
