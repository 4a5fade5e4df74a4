"""``train.args.<name>``: any ``TrainingArguments`` field that wmss does not set itself, checked early."""

import pytest
import torch

from tests.conftest import arithmetic_rows, build_model
from wmss.config import DataConfig, TrainConfig, load_config
from wmss.data import tokenize_examples
from wmss.errors import ConfigError
from wmss.trainers import PhaseTraining, train_sft, training_arguments


def test_overrides_and_yaml_reach_training_arguments(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  args:\n    optim: adafactor\n    adam_beta2: 0.99\n")
    cfg = load_config(
        path,
        [
            "train.args.max_steps=3",
            'train.args.lr_scheduler_kwargs={"min_lr": 0.0}',
            "train.args.adam_beta2=0.9",
        ],
    )
    assert cfg.train.args == {
        "optim": "adafactor",
        "adam_beta2": 0.9,
        "max_steps": 3,
        "lr_scheduler_kwargs": {"min_lr": 0.0},
    }
    args = training_arguments(cfg.train, tmp_path / "out", 1.0, 0, save_steps=10)
    assert (args.optim, args.max_steps, args.adam_beta2, args.lr_scheduler_kwargs) == (
        "adafactor",
        3,
        0.9,
        {"min_lr": 0.0},
    )
    assert load_config(None, []).train.args == {}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.optim=adafactor", r"TrainingArguments field: give it as 'train.args.optim'"),
        ("train.args.optimm=adafactor", r"has no field 'optimm'.*Did you mean 'train.args.optim'"),
        ("train.args.learning_rate=0.1", r"set it as train.learning_rate"),
        ("train.args.per_device_train_batch_size=2", r"set it as train.per_device_batch_size"),
        (
            "train.args.output_dir=/tmp/x",
            r"set by wmss: each phase writes its checkpoints in the run directory",
        ),
        ("train.args.num_train_epochs=3", r"set by wmss: .*sft.epochs"),
        ("train.args.push_to_hub=true", r"set by wmss: every phase would push"),
        ("train.args=adafactor", r"'train.args' must be dict"),
    ],
)
def test_bad_names_are_refused_with_the_key_to_use(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_max_steps_and_a_whole_run_schedule_are_refused():
    with pytest.raises(ConfigError, match="max_steps caps each phase.*whole_run"):
        load_config(None, ["train.args.max_steps=2", "wmss.lr_schedule=whole_run"])


def test_a_phase_trains_with_the_passed_arguments(tmp_path, tokenizer):
    cfg = DataConfig(prompt_template="{question}", completion_template="{answer}")
    data, _ = tokenize_examples(arithmetic_rows(16), tokenizer, cfg, 96)
    train = TrainConfig(per_device_batch_size=2, save_steps=100, args={"max_steps": 3, "optim": "adafactor"})
    model = build_model(len(tokenizer))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_sft(model, tokenizer, data, train, 1.0, PhaseTraining(tmp_path / "ckpt", 0))
    assert result["steps"] == 3  # not the 8 of one pass
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_values_transformers_refuses_are_a_config_error(tmp_path):
    train = TrainConfig(args={"optim": "no-such-optimizer"})
    with pytest.raises(ConfigError, match="train.args .*TrainingArguments refused them"):
        training_arguments(train, tmp_path, 1.0, 0)
