"""The public Python API: its names, and that its trainer is WD-JT as `wmss run` trains it."""

import subprocess
import sys

import pytest
import torch

import wmss
from tests.conftest import arithmetic_rows, build_model
from wmss.config import TrainConfig
from wmss.trainers import PhaseTraining, train_joint


def test_every_public_name_resolves_and_import_stays_light():
    assert all(getattr(wmss, name) is not None for name in wmss.__all__)
    code = "import sys, wmss; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    with pytest.raises(AttributeError, match="no attribute 'train_joint'"):
        wmss.train_joint  # noqa: B018 — private: not part of the API


def test_tokenize_dataset_takes_a_datasets_dataset(tokenizer):
    from datasets import Dataset

    rows = Dataset.from_list(
        [{"prompt": "What is 2 + 3?", "completion": "5"}, {"prompt": "1 + 1?", "completion": "2"}]
    )
    data = wmss.tokenize_dataset(rows, tokenizer, max_length=64, chat_template=False)
    assert data["idx"] == [0, 1] and all(-100 in labels for labels in data["labels"])
    with pytest.raises(wmss.WmssError, match="must be set together"):
        wmss.tokenize_dataset(rows, tokenizer, prompt_template="{prompt}")


def test_wdjt_trainer_trains_exactly_like_the_pipeline(tmp_path, tokenizer):
    data = wmss.tokenize_dataset(
        arithmetic_rows(8),
        tokenizer,
        max_length=96,
        prompt_template="{question}",
        completion_template="{answer}",
    )
    weak, strong = build_model(len(tokenizer), seed=1), build_model(len(tokenizer), seed=2)
    train = TrainConfig(learning_rate=1e-2, per_device_batch_size=4, save_steps=100, logging_steps=1)
    train_joint(weak, strong, tokenizer, data, train, 1.0, 0.3, False, PhaseTraining(tmp_path / "a", 0))

    weak2, strong2 = build_model(len(tokenizer), seed=1), build_model(len(tokenizer), seed=2)
    args = wmss.WDJTConfig(
        output_dir=str(tmp_path / "b"),
        mix_lambda=0.3,
        learning_rate=1e-2,
        seed=0,
        data_seed=0,
        per_device_train_batch_size=4,
        num_train_epochs=1,
        warmup_steps=0.1,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
    )
    trainer = wmss.WDJTTrainer(
        model=strong2, weak_model=weak2, args=args, train_dataset=data, processing_class=tokenizer
    )
    trainer.train()
    for (name, a), b in zip(strong.state_dict().items(), strong2.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "config.json").is_file() and not (tmp_path / "saved" / "weak").exists()


def test_wdjt_trainer_refuses_what_cannot_be_mixed(tmp_path, tokenizer):
    with pytest.raises(wmss.WmssError, match="mix_lambda must lie in"):
        wmss.WDJTConfig(output_dir=str(tmp_path), mix_lambda=1.5)
    args = wmss.WDJTConfig(output_dir=str(tmp_path), use_cpu=True)
    small = build_model(len(tokenizer) - 10, seed=1)
    with pytest.raises(wmss.WmssError, match="must come from the same base model"):
        wmss.WDJTTrainer(
            model=build_model(len(tokenizer)),
            weak_model=small,
            args=args,
            train_dataset=None,
            processing_class=tokenizer,
        )
