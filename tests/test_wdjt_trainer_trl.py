"""``WDJTTrainer`` used as a TRL user uses ``SFTTrainer``: model ids or paths, optional args, raw datasets in
any form, ``peft_config``, and bad arguments refused in ``__init__``."""

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import TrainingArguments

import wmss
from tests.conftest import build_model
from tests.test_data_forms import FORMS, trl_rows
from wmss.data import IGNORE_INDEX


def quick_args(out, **extra):
    return wmss.WDJTConfig(
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        max_length=96,
        **extra,
    )


@pytest.mark.parametrize("form", FORMS)
def test_paths_and_each_raw_form_train(tmp_path, tiny_model_dir, form):
    trainer = wmss.WDJTTrainer(
        model=str(tiny_model_dir),
        weak_model=str(tiny_model_dir),
        args=quick_args(tmp_path / "out"),
        train_dataset=Dataset.from_list(trl_rows(form)),
    )
    assert len(trainer.train_dataset) == 8 and "labels" in trainer.train_dataset.column_names
    learnt = [t for t in trainer.train_dataset[0]["labels"] if t != IGNORE_INDEX]
    assert trainer.processing_class.decode(learnt).endswith("<|im_end|>")
    before = trainer.model.strong.model.embed_tokens.weight.clone()
    trainer.train()
    assert trainer.state.global_step == 2
    assert not torch.equal(before, trainer.model.strong.model.embed_tokens.weight)


def test_save_to_disk_folder_list_and_default_args(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    DatasetDict({"train": Dataset.from_list(trl_rows("messages"))}).save_to_disk(tmp_path / "saved")
    trainer = wmss.WDJTTrainer(
        str(tiny_model_dir), str(tiny_model_dir), train_dataset=str(tmp_path / "saved")
    )
    assert trainer.args.output_dir == "llama-WDJT" and trainer.args.mix_lambda == 0.5
    assert len(trainer.train_dataset) == 8
    plain = TrainingArguments(
        output_dir=str(tmp_path / "o"), learning_rate=3e-4, use_cpu=True, report_to="none"
    )
    trainer = wmss.WDJTTrainer(
        str(tiny_model_dir), str(tiny_model_dir), args=plain, train_dataset=trl_rows("text")
    )
    assert isinstance(trainer.args, wmss.WDJTConfig) and trainer.args.learning_rate == 3e-4


def test_data_config_reaches_tokenisation(tmp_path, tiny_model_dir):
    rows = [{"question": "1 + 1?", "answer": "2"}] * 4
    args = quick_args(
        tmp_path, data_config={"prompt_template": "{question}", "completion_template": "{answer}"}
    )
    trainer = wmss.WDJTTrainer(str(tiny_model_dir), str(tiny_model_dir), args=args, train_dataset=rows)
    assert len(trainer.train_dataset) == 4
    with pytest.raises(wmss.WmssError, match="'data.prompt_templat' is not a config key"):
        quick_args(tmp_path, data_config={"prompt_templat": "{question}"})


def test_peft_config_gives_two_adapters_on_one_base(tmp_path, tiny_model_dir):
    from peft import LoraConfig, PeftModel

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = wmss.WDJTTrainer(
        model=str(tiny_model_dir),
        weak_model=str(tiny_model_dir),
        args=quick_args(tmp_path / "out"),
        train_dataset=Dataset.from_list(trl_rows("prompt_completion")),
        peft_config=lora,
    )
    weak, strong = trainer.model.weak, trainer.model.strong
    assert isinstance(weak, PeftModel) and isinstance(strong, PeftModel)
    q = [m.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight for m in (weak, strong)]
    assert q[0].data_ptr() == q[1].data_ptr() and not q[1].requires_grad  # one frozen base
    trainer.train()
    trainer.save_model(str(tmp_path / "strong"))
    assert (tmp_path / "strong" / "adapter_config.json").is_file()
    with pytest.raises(wmss.WmssError, match="already has an adapter"):
        wmss.WDJTTrainer(strong, str(tiny_model_dir), args=quick_args(tmp_path), peft_config=lora)


def test_bad_arguments_fail_in_init(tmp_path, tiny_model_dir, tokenizer):
    path = str(tiny_model_dir)
    with pytest.raises(wmss.WmssError, match="needs weak_model"):
        wmss.WDJTTrainer(path, args=quick_args(tmp_path))
    with pytest.raises(wmss.WmssError, match="row 1: cannot tell prompt from completion"):
        wmss.WDJTTrainer(
            path, path, args=quick_args(tmp_path), train_dataset=[{"question": "q", "answer": "a"}]
        )
    tokenised = Dataset.from_dict({"input_ids": [[1, 2, 3]]})
    with pytest.raises(wmss.WmssError, match="has input_ids but no labels"):
        wmss.WDJTTrainer(path, path, args=quick_args(tmp_path), train_dataset=tokenised)
    model = build_model(len(tokenizer))
    with pytest.raises(wmss.WmssError, match="pass processing_class"):
        wmss.WDJTTrainer(model, build_model(len(tokenizer), seed=1), args=quick_args(tmp_path))
    with pytest.raises(wmss.WmssError, match="does not exist"):
        wmss.WDJTTrainer(str(tmp_path / "nope"), path, args=quick_args(tmp_path))


def test_trl_style_example_runs(tmp_path, tiny_model_dir, tokenizer):
    from tests.test_examples import _run

    strong = tmp_path / "strong-in"
    build_model(len(tokenizer), seed=7).save_pretrained(strong)
    tokenizer.save_pretrained(strong)
    printed = _run(
        "trl_style_lora.py",
        "--weak", tiny_model_dir, "--strong", strong, "--output-dir", tmp_path / "out", "--max-steps", 2,
    )  # fmt: skip
    assert "strong adapter at" in printed
    assert (tmp_path / "out" / "strong" / "adapter_config.json").is_file()
