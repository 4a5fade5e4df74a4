"""Algorithm 1 end to end on a tiny model: run directory contract, K=2, resume, WD-JT on several
architectures."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from tests.conftest import arithmetic_rows, build_model
from wmss.config import DataConfig, TrainConfig, load_config
from wmss.data import tokenize_examples
from wmss.errors import ConfigError
from wmss.io import read_jsonl
from wmss.pipeline import run_pipeline
from wmss.trainers import PhaseTraining, last_complete_checkpoint, train_joint


def _config(model_dir, train_file, out, *extra):
    return load_config(
        None,
        [
            f"model={model_dir}",
            f"data.path={train_file}",
            f"output_dir={out}",
            "data.prompt_template={question}",
            "data.completion_template={answer}",
            "train.learning_rate=3e-3",
            "train.per_device_batch_size=4",
            "train.max_length=96",
            "train.save_steps=2",
            "train.logging_steps=1",
            "train.warmup_ratio=0.1",
            *extra,
        ],
    )


def _weights(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_two_iterations_follow_algorithm_1(tmp_path, tiny_model_dir, train_file):
    out = tmp_path / "run"
    manifest = run_pipeline(_config(tiny_model_dir, train_file, out, "wmss.iterations=2"))
    phases = manifest["phases"]
    assert all(p["status"] == "done" for p in phases.values())
    assert [k for k in phases] == [
        "M0",
        "sft",
        "entropy-M0",
        "entropy-M1",
        "selection-1",
        "wdjt-1",
        "entropy-M2",
        "selection-2",
        "wdjt-2",
        "final",
    ]
    # weak = M_{t-1}, strong = M_t; M1's entropy computed once and reused by iteration 2
    assert phases["wdjt-1"]["weak"] == str(tiny_model_dir) and phases["wdjt-1"]["strong"].endswith(
        "models/M1"
    )
    assert phases["wdjt-2"]["weak"].endswith("models/M1") and phases["wdjt-2"]["strong"].endswith("models/M2")
    assert phases["entropy-M1"]["attempts"] == 1
    for t in (1, 2):
        rows = read_jsonl(out / f"selection-{t}.jsonl")
        assert len(rows) == 24 and [r["idx"] for r in rows] == list(range(24))
        assert set(rows[0]) >= {"idx", "entropy_weak", "entropy_strong", "weight", "draws", "active"}
        assert sum(r["weight"] for r in rows) == pytest.approx(1.0)
        assert sum(r["draws"] for r in rows) == 24
        assert all(r["active"] == (r["draws"] > 0) for r in rows)
        assert phases[f"wdjt-{t}"]["examples"] == sum(r["active"] for r in rows)  # de-duplicated
    entropy_m1 = {r["idx"]: r["entropy"] for r in read_jsonl(out / "entropy" / "M1.jsonl")}
    assert [r["entropy_strong"] for r in read_jsonl(out / "selection-1.jsonl")] == list(entropy_m1.values())
    assert [r["entropy_weak"] for r in read_jsonl(out / "selection-2.jsonl")] == list(entropy_m1.values())
    # the result: the strong model alone, same architecture and size as the base, with its tokenizer
    base, final = (AutoModelForCausalLM.from_pretrained(p) for p in (tiny_model_dir, out / "final"))
    assert type(final) is type(base)
    assert sum(p.numel() for p in final.parameters()) == sum(p.numel() for p in base.parameters())
    assert (out / "final" / "tokenizer.json").is_file() and not (out / "checkpoints").exists()
    for a, b in zip(_weights(out / "final").values(), _weights(out / "models" / "M3").values(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(
        _weights(out / "models" / "M2")["lm_head.weight"], _weights(out / "models" / "M1")["lm_head.weight"]
    )
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["config"]["wmss"]["iterations"] == 2 and saved["data"]["num_examples"] == 24
    # the budget: every optimizer step, and passes over D (WD-JT passes over the active set only)
    budget = saved["budget"]
    assert budget["optimizer_steps"] == sum(phases[k]["steps"] for k in ("sft", "wdjt-1", "wdjt-2"))
    active = [phases[f"wdjt-{t}"]["examples"] / 24 for t in (1, 2)]
    assert budget["passes_over_data"] == pytest.approx(1.0 + sum(active), abs=1e-3)


class InterruptAfterSave(TrainerCallback):
    """Simulates Ctrl-C right after the checkpoint at ``step`` of the phase ``phase`` was written."""

    def __init__(self, phase, step):
        self.phase, self.step = phase, step

    def on_save(self, args, state, control, **kwargs):
        if args.output_dir.endswith(self.phase) and state.global_step == self.step:
            raise KeyboardInterrupt


def test_resume_after_interruptions_gives_the_same_weights(tmp_path, tiny_model_dir, train_file):
    reference = tmp_path / "reference"
    run_pipeline(_config(tiny_model_dir, train_file, reference))
    out = tmp_path / "interrupted"
    cfg = _config(tiny_model_dir, train_file, out)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, callbacks=[InterruptAfterSave("sft", 2)])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["phases"]["sft"]["status"] == "running" and not (out / "final").exists()
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, callbacks=[InterruptAfterSave("wdjt-1", 2)])
    # a checkpoint half-written by a kill is ignored, never resumed from
    (out / "checkpoints" / "wdjt-1" / "checkpoint-3").mkdir()
    manifest = run_pipeline(cfg)
    assert manifest["phases"]["sft"]["attempts"] == 2 and manifest["phases"]["wdjt-1"]["attempts"] == 2
    assert manifest["phases"]["entropy-M0"]["attempts"] == 1
    for (name, a), b in zip(
        _weights(reference / "final").items(), _weights(out / "final").values(), strict=True
    ):
        assert torch.equal(a, b), name  # bit for bit


def test_resuming_with_another_config_is_refused(tmp_path, tiny_model_dir, train_file):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(_config(tiny_model_dir, train_file, out), callbacks=[InterruptAfterSave("sft", 2)])
    with pytest.raises(ConfigError, match=r"different configuration \(wmss.mix_lambda: 0.5 -> 0.3\)"):
        run_pipeline(_config(tiny_model_dir, train_file, out, "wmss.mix_lambda=0.3"))


def test_bad_data_leaves_no_run_directory(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": ""}\n')
    with pytest.raises(Exception, match="the completion is empty"):
        run_pipeline(_config(tiny_model_dir, bad, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_last_complete_checkpoint(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert not (tmp_path / "checkpoint-6").exists()
    assert last_complete_checkpoint(tmp_path / "none") is None


@pytest.mark.parametrize("arch,tie", [("qwen2", False), ("gpt2", True), ("llama", True)])
@pytest.mark.parametrize("freeze_weak", [False, True])
def test_joint_training_on_any_causal_lm(tmp_path, tokenizer, arch, tie, freeze_weak):
    cfg = DataConfig(prompt_template="{question}", completion_template="{answer}")
    dataset, _ = tokenize_examples(arithmetic_rows(8), tokenizer, cfg, 96)
    weak = build_model(len(tokenizer), seed=1, arch=arch, tie=tie)
    strong = build_model(len(tokenizer), seed=2, arch=arch, tie=tie)
    weak_before, strong_before = copy.deepcopy(weak.state_dict()), copy.deepcopy(strong.state_dict())
    train = TrainConfig(learning_rate=1e-2, per_device_batch_size=4, save_steps=100, logging_steps=1)
    result = train_joint(
        weak, strong, tokenizer, dataset, train, 1.0, 0.5, freeze_weak, PhaseTraining(tmp_path / "ckpt", 0)
    )
    assert result["steps"] == 2
    changed = lambda model, before: any(not torch.equal(p, before[n]) for n, p in model.state_dict().items())  # noqa: E731
    assert changed(strong, strong_before)
    assert changed(weak, weak_before) is not freeze_weak
    assert not weak.training if freeze_weak else True


@pytest.mark.parametrize("damage", ["empty_state", "cut_weights"])
def test_a_damaged_checkpoint_is_skipped_for_the_previous_one(
    tmp_path, tiny_model_dir, train_file, damage, caplog
):
    reference = tmp_path / "reference"
    run_pipeline(_config(tiny_model_dir, train_file, reference, "wmss.iterations=0"))
    out = tmp_path / "run"
    cfg = _config(tiny_model_dir, train_file, out, "wmss.iterations=0")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, callbacks=[InterruptAfterSave("sft", 4)])
    last = out / "checkpoints" / "sft" / "checkpoint-4"
    assert (out / "checkpoints" / "sft" / "checkpoint-2").is_dir()
    if damage == "empty_state":  # a full disk: the file was created, nothing written into it
        (last / "trainer_state.json").write_text("")
    else:
        weights = last / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    manifest = run_pipeline(cfg)
    assert "checkpoint-4 is damaged" in caplog.text and manifest["phases"]["sft"]["attempts"] == 2
    for (name, a), b in zip(
        _weights(reference / "final").items(), _weights(out / "final").values(), strict=True
    ):
        assert torch.equal(a, b), name  # bit for bit


def test_an_interrupted_attempt_counts_towards_the_phase_wall_time(tmp_path, tiny_model_dir, train_file):
    cfg = _config(tiny_model_dir, train_file, tmp_path / "run", "wmss.iterations=0")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, callbacks=[InterruptAfterSave("sft", 2)])
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    before = manifest["phases"]["sft"]["interrupted_time_s"]
    assert before > 0
    sft = run_pipeline(cfg)["phases"]["sft"]
    assert sft["wall_time_s"] > before and sft["interrupted_time_s"] == before
