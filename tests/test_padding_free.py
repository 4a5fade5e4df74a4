"""Padding-free batches (``train.padding_free``): the flattened row gives the padded batch's loss,
gradients, per-example entropies and logit statistics, in every phase; length-grouped batches."""

import logging

import numpy as np
import pytest
import torch
from transformers import AttentionInterface

from tests.conftest import build_model
from wmss.config import DataConfig, TrainConfig, load_config
from wmss.data import IGNORE_INDEX, CompletionCollator, padding_free_collator, tokenize_examples
from wmss.diagnostics import logit_statistics
from wmss.entropy import chunked_sequence_entropy, dataset_entropies, sequence_entropy
from wmss.errors import ConfigError
from wmss.heads import final_hidden_states, output_head
from wmss.losses import completion_cross_entropy, fused_completion_cross_entropy
from wmss.packing import packed_forward_kwargs, packing_unsupported, use_padding_free
from wmss.trainers import PhaseTraining, WeakStrongPair, train_joint, train_sft


def _rows(n):
    """Examples of very different lengths, so that a padded batch is mostly padding."""
    rows = []
    for i in range(n):
        a, b = 2 + i % 9, 3 + (i * 7) % 11
        steps = " ".join(f"{a} + {k} = {a + k}." for k in range(1 + (i * 5) % 7))
        rows.append({"question": f"Tom has {a} apples and buys {b} more." + " How many?" * (i % 3),
                     "answer": f"{steps} The answer is {a + b}."})  # fmt: skip
    return rows


def _data(tokenizer, n=6):
    cfg = DataConfig(prompt_template="{question}", completion_template="{answer}")
    dataset, _ = tokenize_examples(_rows(n), tokenizer, cfg, 128)
    return dataset


def _batches(tokenizer, n=6):
    features = [_data(tokenizer, n)[i] for i in range(n)]
    return CompletionCollator(tokenizer.pad_token_id)(features), padding_free_collator()(features)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_close_grads(a, b, atol=1e-5):
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=atol, msg=name)


def test_collator_flattens_without_padding_and_cuts_the_shift_at_every_boundary(tokenizer):
    padded, flat = _batches(tokenizer)
    lengths = padded["attention_mask"].sum(dim=1).tolist()
    assert set(flat) == {"input_ids", "labels", "position_ids"}  # no attention mask: the packing is seen
    assert flat["input_ids"].shape == (1, sum(lengths)) and sum(lengths) < padded["input_ids"].numel()
    assert flat["position_ids"][0].tolist() == [t for n in lengths for t in range(n)]
    keep = padded["attention_mask"].bool()
    assert flat["input_ids"][0].tolist() == padded["input_ids"][keep].tolist()  # no pad token
    starts = np.cumsum([0, *lengths[:-1]])
    assert all(flat["labels"][0, s] == IGNORE_INDEX for s in starts)  # no example predicts the next one's
    # the completion tokens to learn are the padded batch's, in the same order
    assert flat["labels"][0][1:][flat["labels"][0][1:] != IGNORE_INDEX].tolist() == (
        padded["labels"][:, 1:][padded["labels"][:, 1:] != IGNORE_INDEX].tolist()
    )


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_cpu_attention_honours_packed_position_ids(tokenizer, arch, impl):
    model = build_model(len(tokenizer), arch=arch)
    model.set_attn_implementation(impl)
    assert packing_unsupported(model) is None


def _attention_without_mask(module, query, key, value, attention_mask, **kwargs):
    """A causal attention over the whole row that ignores every mask: flattened examples see each other."""
    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True)
    return out.transpose(1, 2).contiguous(), None


def test_an_attention_that_ignores_the_packing_falls_back_to_padded_batches(tokenizer, caplog):
    AttentionInterface.register("wmss_test_unmasked", _attention_without_mask)
    model = build_model(len(tokenizer))
    model.set_attn_implementation("wmss_test_unmasked")
    assert "see each other" in packing_unsupported(model)
    assert not use_padding_free([model], True, "SFT")
    assert "train.padding_free is ignored" in caplog.text
    assert not use_padding_free([build_model(len(tokenizer))], False, "SFT")


@pytest.mark.parametrize("fused", [True, False])
def test_sft_loss_and_gradients_equal_the_padded_batch(tokenizer, fused):
    padded, flat = _batches(tokenizer)
    model = build_model(len(tokenizer)).eval()

    def loss(batch):
        model.zero_grad()
        mask, positions = batch.get("attention_mask"), batch.get("position_ids")
        if fused:
            hidden = final_hidden_states(model, batch["input_ids"], mask, positions)
            value = fused_completion_cross_entropy(hidden, output_head(model), batch["labels"])
        else:
            packed = packed_forward_kwargs(positions)
            logits = model(input_ids=batch["input_ids"], attention_mask=mask, **packed).logits
            value = completion_cross_entropy(logits, batch["labels"])
        value.backward()
        return value.detach(), _grads(model)

    (flat_loss, flat_grads), (padded_loss, padded_grads) = loss(flat), loss(padded)
    torch.testing.assert_close(flat_loss, padded_loss, rtol=1e-5, atol=1e-5)
    _assert_close_grads(flat_grads, padded_grads)
    # and against the naive head on the padded batch (the oracle)
    model.zero_grad()
    logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    naive = completion_cross_entropy(logits, padded["labels"])
    naive.backward()
    torch.testing.assert_close(flat_loss, naive.detach(), rtol=1e-5, atol=1e-5)
    _assert_close_grads(flat_grads, _grads(model))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("freeze_weak", [False, True])
def test_wdjt_pair_loss_and_both_gradients_equal_the_padded_batch(tokenizer, fused, freeze_weak):
    padded, flat = _batches(tokenizer)
    weak, strong = build_model(len(tokenizer), seed=1), build_model(len(tokenizer), seed=2)
    pair = WeakStrongPair(weak, strong, 0.4, freeze_weak, fused_loss=fused).eval()

    def run(batch):
        pair.zero_grad()
        loss = pair(**batch)["loss"]
        loss.backward()
        return loss.detach(), _grads(pair)

    (flat_loss, flat_grads), (padded_loss, padded_grads) = run(flat), run(padded)
    torch.testing.assert_close(flat_loss, padded_loss, rtol=1e-5, atol=1e-5)
    _assert_close_grads(flat_grads, padded_grads)
    assert any(n.startswith("weak.") for n in flat_grads) != freeze_weak


def test_per_example_entropy_of_a_flattened_row_equals_the_padded_batch(tokenizer):
    padded, flat = _batches(tokenizer)
    model = build_model(len(tokenizer)).eval()
    with torch.no_grad():
        expected = sequence_entropy(model(**{k: padded[k] for k in ("input_ids", "attention_mask")}).logits,
                                    padded["labels"])  # fmt: skip
        positions = flat["position_ids"]
        logits = model(input_ids=flat["input_ids"], **packed_forward_kwargs(positions)).logits
        naive = sequence_entropy(logits, flat["labels"], positions)
        hidden = final_hidden_states(model, flat["input_ids"], None, positions)
        fused = chunked_sequence_entropy(hidden, output_head(model), flat["labels"], 7, positions)
    assert expected.shape == naive.shape == fused.shape == (6,)
    torch.testing.assert_close(naive, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


def test_an_example_without_completion_token_gets_nan_in_a_flattened_row(tokenizer):
    features = [_data(tokenizer, 3)[i] for i in range(3)]
    features[1] = {**features[1], "labels": [IGNORE_INDEX] * len(features[1]["labels"])}
    flat = padding_free_collator()(features)
    model = build_model(len(tokenizer)).eval()
    with torch.no_grad():
        hidden = final_hidden_states(model, flat["input_ids"], None, flat["position_ids"])
        positions = flat["position_ids"]
        values = chunked_sequence_entropy(hidden, output_head(model), flat["labels"], None, positions)
    assert torch.isfinite(values[[0, 2]]).all() and torch.isnan(values[1])


@pytest.mark.parametrize("fused", [True, False])
def test_entropy_pass_padding_free_equals_padded(tokenizer, fused):
    dataset = _data(tokenizer, 7)
    model = build_model(len(tokenizer))
    pad = tokenizer.pad_token_id
    padded = dataset_entropies(model, dataset, pad, batch_size=3, fused=fused)
    flat = dataset_entropies(model, dataset, pad, batch_size=3, fused=fused, padding_free=True)
    np.testing.assert_allclose(flat, padded, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_logit_statistics_padding_free_equal_padded(tokenizer, fused):
    dataset = _data(tokenizer, 5)
    models = {"weak": build_model(len(tokenizer), seed=1), "strong": build_model(len(tokenizer), seed=2)}
    pairs = [("weak", "strong")]
    padded = logit_statistics(models, dataset, tokenizer.pad_token_id, pairs, 2, fused)
    flat = logit_statistics(models, dataset, tokenizer.pad_token_id, pairs, 2, fused, padding_free=True)
    assert flat["positions"] == padded["positions"]
    for group in ("models", "pairs"):
        for name, stats in padded[group].items():
            assert flat[group][name] == pytest.approx(stats, rel=1e-4, abs=1e-5), name


def _losses(result):
    return [r["loss"] for r in result["log_history"] if "loss" in r]


TRAIN = dict(learning_rate=1e-3, per_device_batch_size=3, logging_steps=1, save_steps=100, max_grad_norm=1.0)


def test_sft_and_wdjt_train_the_same_with_padding_free_batches(tmp_path, tokenizer, caplog):
    """Trainer end to end (2 steps each): the logged losses and gradient norms are the padded ones."""
    caplog.set_level("INFO", logger="wmss")
    dataset = _data(tokenizer, 6)
    results = {}
    for flat in (False, True):
        train = TrainConfig(**TRAIN, padding_free=flat)
        model = build_model(len(tokenizer))
        sft = train_sft(model, tokenizer, dataset, train, 1.0, PhaseTraining(tmp_path / f"sft{flat}", 0))
        weak, strong = build_model(len(tokenizer), seed=1), build_model(len(tokenizer), seed=2)
        where = PhaseTraining(tmp_path / f"wdjt{flat}", 0)
        wdjt = train_joint(weak, strong, tokenizer, dataset, train, 1.0, 0.4, False, where)
        lines = [r for r in wdjt["log_history"] if "loss" in r]
        results[flat] = (_losses(sft), _losses(wdjt), [r["grad_norm_weak"] for r in lines])
    assert "CompletionTrainer: padding-free batches" in caplog.text
    assert "JointTrainer: padding-free batches" in caplog.text
    for padded, flat in zip(results[False], results[True], strict=True):
        assert len(padded) == 2
        assert flat == pytest.approx(padded, rel=1e-4)


def test_group_by_length_batches_examples_of_similar_length(tmp_path, tokenizer):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from wmss.trainers import CompletionTrainer, training_arguments

    dataset = _data(tokenizer, 12)
    train = TrainConfig(**TRAIN, group_by_length=True)
    args = training_arguments(train, tmp_path, 1.0, 0)
    trainer = CompletionTrainer(
        build_model(len(tokenizer)), args=args, train_dataset=dataset,
        data_collator=CompletionCollator(tokenizer.pad_token_id), processing_class=tokenizer,
    )  # fmt: skip
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    assert training_arguments(TrainConfig(save_steps=1), tmp_path, 1.0, 0).train_sampling_strategy == "random"
    model = build_model(len(tokenizer))
    result = train_sft(model, tokenizer, dataset, train, 1.0, PhaseTraining(tmp_path / "sft", 0))
    assert len(_losses(result)) == 4


def test_neftune_refuses_padding_free():
    with pytest.raises(ConfigError, match="NEFTune's noise"):
        load_config(None, ["method=neftune", "train.padding_free=true"])


def test_undial_trains_the_same_with_padding_free_batches(tmp_path, tokenizer):
    from wmss.baselines import train_undial

    dataset = _data(tokenizer, 6)
    losses = []
    for flat in (False, True):
        train = TrainConfig(**TRAIN, padding_free=flat)
        student, teacher = build_model(len(tokenizer), seed=1), build_model(len(tokenizer), seed=2)
        result = train_undial(
            student, teacher, tokenizer, dataset, train, 1.0, 1.5, PhaseTraining(tmp_path / f"u{flat}", 0)
        )
        losses.append(_losses(result))
    assert len(losses[0]) == 2 and losses[1] == pytest.approx(losses[0], rel=1e-4)


def _pairs(tokenizer):
    from datasets import Dataset

    data = _data(tokenizer, 6)
    rows = [(data[i], data[(i + 1) % 6]) for i in range(6)]
    columns = {}
    for side, k in (("chosen", 0), ("rejected", 1)):
        columns[f"{side}_input_ids"] = [r[k]["input_ids"] for r in rows]
        columns[f"{side}_labels"] = [r[k]["labels"] for r in rows]
    return Dataset.from_dict(columns)


@pytest.mark.parametrize("fused", [True, False])
def test_dpo_sequence_log_probs_and_gradients_equal_the_padded_batch(tokenizer, fused):
    from wmss.baselines import PreferenceCollator, model_sequence_log_probs, reference_log_probs

    pairs = _pairs(tokenizer)
    model = build_model(len(tokenizer)).eval()
    pad = tokenizer.pad_token_id
    padded = reference_log_probs(model, pairs, pad, 4, fused)
    flat = reference_log_probs(model, pairs, pad, 4, fused, padding_free=True)
    for key in ("reference_chosen", "reference_rejected"):
        np.testing.assert_allclose(flat[key], padded[key], rtol=1e-5)
    features = [pairs[i] for i in range(3)]

    def run(padding_free):
        model.zero_grad()
        batch = PreferenceCollator(pad, padding_free)(features)
        logps = model_sequence_log_probs(
            model, batch["input_ids"], batch.get("attention_mask"), batch["labels"], fused,
            position_ids=batch.get("position_ids"),
        )  # fmt: skip
        (logps * torch.arange(1.0, 7.0)).sum().backward()  # a different weight per sequence
        return logps.detach(), _grads(model)

    (flat_logps, flat_grads), (padded_logps, padded_grads) = run(True), run(False)
    assert flat_logps.shape == (6,)
    torch.testing.assert_close(flat_logps, padded_logps, rtol=1e-5, atol=1e-5)
    _assert_close_grads(flat_grads, padded_grads, atol=1e-4)


def test_wdjt_trainer_flattens_with_padding_free(tmp_path, tokenizer):
    import wmss

    dataset = _data(tokenizer, 3)
    for flat, collator in ((False, "CompletionCollator"), (True, "DataCollatorWithFlattening")):
        args = wmss.WDJTConfig(output_dir=str(tmp_path), use_cpu=True, padding_free=flat, report_to="none")
        trainer = wmss.WDJTTrainer(
            model=build_model(len(tokenizer), seed=2), weak_model=build_model(len(tokenizer), seed=1),
            args=args, train_dataset=dataset, processing_class=tokenizer,
        )  # fmt: skip
        assert type(trainer.data_collator).__name__ == collator


def test_naive_sft_trainer_uses_the_models_own_loss_on_the_flattened_row(tmp_path, tokenizer):
    """``train.fused_loss=false``: Trainer calls the model with labels and ``position_ids``; its own
    shifted loss must ignore every example's first position, like the padded batch."""
    dataset = _data(tokenizer, 6)
    losses = []
    for flat in (False, True):
        train = TrainConfig(**TRAIN, padding_free=flat, fused_loss=False)
        model = build_model(len(tokenizer))
        losses.append(
            _losses(train_sft(model, tokenizer, dataset, train, 1.0, PhaseTraining(tmp_path / f"{flat}", 0)))
        )
    assert len(losses[0]) == 2 and losses[1] == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.parametrize("flat,grouped", [(True, False), (False, True)])
def test_dpo_trains_padding_free_and_length_grouped(tmp_path, tokenizer, flat, grouped):
    from wmss.baselines import reference_log_probs, train_preference

    model = build_model(len(tokenizer))
    pairs = reference_log_probs(model, _pairs(tokenizer), tokenizer.pad_token_id, 3)
    train = TrainConfig(**TRAIN, padding_free=flat, group_by_length=grouped)
    result = train_preference(model, tokenizer, pairs, train, 1.0, 0.1, PhaseTraining(tmp_path, 0))
    assert len(_losses(result)) == 2
    assert _losses(result)[0] == pytest.approx(0.6931472, abs=1e-5)  # the policy is its reference: log 2


def test_padding_free_on_a_cpu_points_to_length_grouping(tokenizer, caplog):
    """On a CPU the flattened row's mask is dense in its length: the log says so and names the faster
    option; with padding_free off nothing is said."""
    model = build_model(len(tokenizer))
    with caplog.at_level(logging.INFO, logger="wmss"):
        assert use_padding_free([model], True, "SFT")
    assert "train.group_by_length=true" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wmss"):
        assert not use_padding_free([model], False, "SFT")
    assert "group_by_length" not in caplog.text
