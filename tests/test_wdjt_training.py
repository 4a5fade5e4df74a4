"""WD-JT's training loop beyond the loss: per-branch gradient statistics and the learning-rate schedule."""

import math

import pytest
import torch

from tests.conftest import arithmetic_rows, build_model
from tests.test_pipeline import _config
from wmss.config import DataConfig, TrainConfig, load_config
from wmss.data import CompletionCollator, tokenize_examples
from wmss.errors import ConfigError
from wmss.io import read_json
from wmss.losses import mixed_logit_cross_entropy
from wmss.pipeline import run_pipeline
from wmss.trainers import PhaseTraining, train_joint


def _data(tokenizer, n=4):
    cfg = DataConfig(prompt_template="{question}", completion_template="{answer}")
    dataset, _ = tokenize_examples(arithmetic_rows(n), tokenizer, cfg, 96)
    return dataset


def _manual_gradient_norms(weak, strong, dataset, pad_id, mix_lambda):
    """Each branch's gradient norm on the whole dataset as one batch, computed without Trainer."""
    batch = CompletionCollator(pad_id)([dataset[i] for i in range(len(dataset))])
    strong_logits = strong(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    weak_logits = weak(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mixed_logit_cross_entropy(strong_logits, weak_logits, batch["labels"], mix_lambda).backward()

    def norm(model):
        return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None))

    return norm(strong), norm(weak)


@pytest.mark.parametrize("max_grad_norm", [100.0, 0.05])
def test_wdjt_logs_each_branch_gradient_norm_and_clip_factor(tmp_path, tokenizer, max_grad_norm):
    dataset = _data(tokenizer)
    expected = _manual_gradient_norms(
        build_model(len(tokenizer), seed=1),
        build_model(len(tokenizer), seed=2),
        dataset,
        tokenizer.pad_token_id,
        0.3,
    )
    train = TrainConfig(
        learning_rate=1e-3,
        per_device_batch_size=4,
        logging_steps=1,
        save_steps=100,
        max_grad_norm=max_grad_norm,
    )
    weak, strong = build_model(len(tokenizer), seed=1), build_model(len(tokenizer), seed=2)
    result = train_joint(
        weak, strong, tokenizer, dataset, train, 1.0, 0.3, False, PhaseTraining(tmp_path / "ck", 0)
    )
    (line,) = [r for r in result["log_history"] if "loss" in r]
    assert line["grad_norm_strong"] == pytest.approx(expected[0], rel=1e-4)
    assert line["grad_norm_weak"] == pytest.approx(expected[1], rel=1e-4)
    total = math.hypot(*expected)
    assert line["grad_norm"] == pytest.approx(total, rel=1e-4)  # Trainer's own, before clipping
    assert line["clip_factor"] == pytest.approx(min(1.0, max_grad_norm / total), rel=1e-4)
    assert line["strong_grad_share"] == pytest.approx(expected[0] ** 2 / total**2, rel=1e-4)
    assert (line["clip_factor"] < 1.0) == (max_grad_norm < total)


def test_frozen_weak_branch_has_no_gradient_share(tmp_path, tokenizer):
    dataset = _data(tokenizer)
    train = TrainConfig(learning_rate=1e-3, per_device_batch_size=2, logging_steps=1, save_steps=100)
    weak, strong = build_model(len(tokenizer), seed=1), build_model(len(tokenizer), seed=2)
    result = train_joint(
        weak, strong, tokenizer, dataset, train, 1.0, 0.5, True, PhaseTraining(tmp_path / "ck", 0)
    )
    lines = [r for r in result["log_history"] if "loss" in r]
    assert len(lines) == 2
    assert all(r["grad_norm_weak"] == 0.0 and r["strong_grad_share"] == 1.0 for r in lines)
    assert all(r["grad_norm_strong"] == pytest.approx(r["grad_norm"], rel=1e-5) for r in lines)


def _learning_rates(run_dir, *phases):
    out = []
    for phase in phases:
        out += [r["learning_rate"] for r in read_json(run_dir / "logs" / f"{phase}.json") if "loss" in r]
    return out


def test_whole_run_schedule_is_the_schedule_of_sft_for_the_same_passes(tmp_path, tiny_model_dir, train_file):
    """wmss.lr_schedule=whole_run: Phase 1 and WD-JT (without de-duplication, so a full pass) run the
    learning rates that 2-epoch SFT runs, step for step; per_phase restarts the warm-up at WD-JT."""
    common = ["wmss.dedup=false", "train.warmup_ratio=0.25", "train.lr_scheduler_type=cosine"]
    sft = run_pipeline(
        _config(tiny_model_dir, train_file, tmp_path / "sft", "method=sft", "sft.epochs=2", *common)
    )
    whole = run_pipeline(
        _config(tiny_model_dir, train_file, tmp_path / "whole", "wmss.lr_schedule=whole_run", *common)
    )
    restart = run_pipeline(_config(tiny_model_dir, train_file, tmp_path / "restart", *common))
    expected = _learning_rates(tmp_path / "sft", "sft")
    assert len(expected) == sft["budget"]["optimizer_steps"] == 12
    assert whole["phases"]["wdjt-1"]["schedule_segment"] == {"offset": 6, "total": 12}
    assert _learning_rates(tmp_path / "whole", "sft", "wdjt-1") == pytest.approx(expected, rel=1e-9)
    per_phase = _learning_rates(tmp_path / "restart", "sft", "wdjt-1")
    assert len(per_phase) == 12 and per_phase[:6] != pytest.approx(expected[:6])
    assert per_phase[6] == per_phase[0] < max(per_phase)  # the second phase warms up again
    assert "schedule_segment" not in restart["phases"]["wdjt-1"]


@pytest.mark.parametrize("mix_lambda", ["0.5", "1.0"])
def test_wdjt_learning_rate_replaces_the_peak_of_the_second_pass(
    tmp_path, tiny_model_dir, train_file, mix_lambda
):
    cfg = _config(
        tiny_model_dir,
        train_file,
        tmp_path / "run",
        "wmss.learning_rate=0.02",
        f"wmss.mix_lambda={mix_lambda}",
        "train.lr_scheduler_type=constant",
    )
    manifest = run_pipeline(cfg)
    assert set(_learning_rates(tmp_path / "run", "sft")) == {3e-3}
    assert set(_learning_rates(tmp_path / "run", "wdjt-1")) == {0.02}
    assert manifest["phases"]["wdjt-1"]["learning_rate"] == 0.02


def test_bad_schedule_settings_are_refused():
    with pytest.raises(ConfigError, match="wmss.lr_schedule must be one of per_phase, whole_run"):
        load_config(None, ["wmss.lr_schedule=global"])
    with pytest.raises(ConfigError, match="wmss.learning_rate must be > 0"):
        load_config(None, ["wmss.learning_rate=0"])


def test_annealed_lambda_moves_linearly_to_its_end_value(tmp_path, tokenizer):
    dataset = _data(tokenizer, n=8)
    train = TrainConfig(learning_rate=1e-3, per_device_batch_size=2, logging_steps=1, save_steps=100)
    weak, strong = build_model(len(tokenizer), seed=1), build_model(len(tokenizer), seed=2)
    result = train_joint(
        weak,
        strong,
        tokenizer,
        dataset,
        train,
        1.0,
        0.4,
        False,
        PhaseTraining(tmp_path / "ck", 0),
        mix_lambda_end=1.0,
    )
    lambdas = [r["mix_lambda"] for r in result["log_history"] if "loss" in r]
    assert lambdas == pytest.approx([0.4, 0.6, 0.8, 1.0])


def test_strong_learning_rate_scale_scales_the_strong_step_only(tmp_path, tokenizer):
    """Adam's first step moves each weight by the learning rate (times the sign of its gradient): with the
    strong model's learning rate doubled, its step doubles and the weak model's stays the same."""
    dataset = _data(tokenizer)
    train = TrainConfig(
        learning_rate=1e-3,
        per_device_batch_size=4,
        save_steps=100,
        warmup_ratio=0.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
    )
    steps = {}
    for scale in (1.0, 2.0):
        weak, strong = build_model(len(tokenizer), seed=1), build_model(len(tokenizer), seed=2)
        train_joint(
            weak,
            strong,
            tokenizer,
            dataset,
            train,
            1.0,
            0.5,
            False,
            PhaseTraining(tmp_path / f"{scale}", 0),
            strong_lr_scale=scale,
        )
        start = build_model(len(tokenizer), seed=1), build_model(len(tokenizer), seed=2)
        steps[scale] = [
            {k: m.state_dict()[k] - s.state_dict()[k] for k in s.state_dict()}
            for m, s in zip((weak, strong), start, strict=True)
        ]
    for key, one in steps[1.0][1].items():
        torch.testing.assert_close(steps[2.0][1][key], 2 * one, rtol=1e-3, atol=1e-7, msg=key)
    for key, one in steps[1.0][0].items():
        torch.testing.assert_close(steps[2.0][0][key], one, rtol=1e-5, atol=1e-8, msg=key)
