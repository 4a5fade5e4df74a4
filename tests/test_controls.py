"""The controls of issue 22: WD-JT's weak-logit sources (``wmss.weak_logits``), the SFT loss variants (label
smoothing, DFT) in the fused head against their naive oracles, ExPO's weights and uniform selection."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from tests.conftest import arithmetic_rows, build_model
from wmss.baselines import extrapolate
from wmss.config import DataConfig, load_config
from wmss.data import IGNORE_INDEX, CompletionCollator, tokenize_examples
from wmss.entropy import sequence_entropy
from wmss.errors import ConfigError
from wmss.heads import final_hidden_states, output_head
from wmss.io import read_jsonl
from wmss.losses import (
    TokenLoss,
    completion_cross_entropy,
    fused_completion_cross_entropy,
    mixed_linear_cross_entropy,
    shift_for_next_token,
)
from wmss.pipeline import run_pipeline
from wmss.selection import selection_weights
from wmss.trainers import WeakStrongPair
from wmss.weak_logits import matched_inverse_temperature, mean_entropy_and_slope


def _batch(tokenizer, n=4, max_length=64):
    data = DataConfig(prompt_template="{question}", completion_template="{answer}")
    rows, _ = tokenize_examples(arithmetic_rows(n), tokenizer, data, max_length)
    return CompletionCollator(tokenizer.pad_token_id)(list(rows))


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_close_grads(a, b, rtol=1e-5, atol=1e-6):
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


# ---------------------------------------------------------------- the SFT loss variants


@pytest.mark.parametrize("loss", [TokenLoss(0.1), TokenLoss(dft=True), TokenLoss(0.2, dft=True)])
def test_token_loss_naive_matches_its_definition(loss):
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(12, 30, generator=g), torch.randint(0, 30, (12,), generator=g)
    logp = torch.log_softmax(logits, -1)
    nll = -logp[torch.arange(12), targets]
    expected = (1 - loss.label_smoothing) * nll + loss.label_smoothing * (-logp.mean(-1))
    if loss.dft:
        expected = expected * nll.neg().exp()
    labels = torch.cat([torch.full((12, 1), IGNORE_INDEX), targets[:, None]], 1)  # (12, 2): one target each
    value = completion_cross_entropy(logits[:, None, :].expand(12, 2, 30), labels, loss=loss)
    torch.testing.assert_close(value, expected.mean())


@pytest.mark.parametrize("loss", [TokenLoss(0.1), TokenLoss(dft=True), TokenLoss(0.05, dft=True)])
def test_fused_token_loss_equals_naive_with_gradients(tokenizer, loss):
    batch = _batch(tokenizer)
    model = build_model(len(tokenizer), tie=True)
    twin = copy.deepcopy(model)
    naive = completion_cross_entropy(
        model(batch["input_ids"], batch["attention_mask"]).logits, batch["labels"], loss=loss
    )
    naive.backward()
    hidden = final_hidden_states(twin, batch["input_ids"], batch["attention_mask"])
    fused = fused_completion_cross_entropy(
        hidden, output_head(twin), batch["labels"], loss=loss, chunk_size=7
    )
    fused.backward()
    torch.testing.assert_close(fused, naive, rtol=1e-5, atol=1e-6)
    _assert_close_grads(_grads(twin), _grads(model))
    plain = completion_cross_entropy(twin(batch["input_ids"]).logits, batch["labels"])
    assert not torch.isclose(fused, plain)  # the variant is not plain cross-entropy


# ---------------------------------------------------------------- weak-logit sources


def test_uniform_weak_logits_are_sft_at_temperature_one_over_lambda(tokenizer):
    """z_weak ≡ 0: z_mix = λ·z_strong, so the loss is SFT's on the logits scaled by λ (fused and naive)."""
    batch, lam = _batch(tokenizer), 0.4
    for fused in (True, False):
        strong = build_model(len(tokenizer))
        reference = copy.deepcopy(strong)
        pair = WeakStrongPair(None, strong, lam, fused_loss=fused, weak_logits="uniform")
        pair(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])[
            "loss"
        ].backward()
        expected = completion_cross_entropy(lam * reference(batch["input_ids"]).logits, batch["labels"])
        expected.backward()
        loss = pair(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )["loss"]
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
        _assert_close_grads(_grads(strong), _grads(reference))
    rows = torch.randn(5, 8)
    weight = torch.randn(11, 8)
    targets = torch.randint(0, 11, (5,))
    torch.testing.assert_close(
        mixed_linear_cross_entropy(rows, weight, None, None, targets, lam),
        F.cross_entropy(lam * rows @ weight.T, targets, reduction="sum"),
    )


def test_matched_inverse_temperature_hits_the_target_entropy():
    g = torch.Generator().manual_seed(1)
    logits = 4 * torch.randn(9, 300, generator=g)
    for target in (0.01, 0.5, 2.0, 5.0, math.log(300) - 1e-3):
        beta = matched_inverse_temperature(logits, target)
        assert abs(mean_entropy_and_slope(logits, beta)[0] - target) < 1e-6
    assert matched_inverse_temperature(logits, math.log(300) + 0.1) == 0.0  # above log V: uniform


@pytest.mark.parametrize("fused", [True, False])
def test_entropy_matched_weak_logits_have_the_weak_entropy(tokenizer, fused):
    """β_i·sg(z_strong) has, per example, the Eq. 7 entropy of the real weak model (within 1e-3 nats);
    the loss is Eq. 6 with those logits, fused equal to naive."""
    batch = _batch(tokenizer)
    weak = build_model(len(tokenizer), seed=5)
    strong = build_model(len(tokenizer), seed=6)
    with torch.no_grad():
        h_weak = sequence_entropy(weak(batch["input_ids"]).logits, batch["labels"])
    pair = WeakStrongPair(None, strong, 0.5, fused_loss=fused, weak_logits="entropy_matched")
    captured = {}
    from wmss import trainers

    original = trainers.mixed_linear_cross_entropy

    def spy(*args, **kwargs):  # the fused path's weak rows and head: record the logits they make
        captured["weak"] = args[2] @ args[3].T
        return original(*args, **kwargs)

    trainers.mixed_linear_cross_entropy = spy
    try:
        loss = pair(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            weak_entropy=h_weak,
        )["loss"]
    finally:
        trainers.mixed_linear_cross_entropy = original
    with torch.no_grad():
        z = strong(batch["input_ids"]).logits
    flat, targets = shift_for_next_token(z, batch["labels"])
    keep = targets != IGNORE_INDEX
    example = (batch["labels"][:, 1:] != IGNORE_INDEX).nonzero()[:, 0]
    betas = torch.empty(int(keep.sum()))
    for i in range(len(h_weak)):
        rows = flat[keep][example == i]
        betas[example == i] = matched_inverse_temperature(rows, float(h_weak[i]))
        assert abs(mean_entropy_and_slope(rows, betas[example == i][0].item())[0] - float(h_weak[i])) < 1e-3
    weak_logits = betas[:, None] * flat[keep]
    if fused:
        torch.testing.assert_close(captured["weak"], weak_logits, rtol=1e-4, atol=1e-4)
    expected = F.cross_entropy(0.5 * flat[keep] + 0.5 * weak_logits, targets[keep])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert (betas - 1).abs().max() > 1e-3  # the temperatures are not the strong model's own


def test_shuffled_weak_logits_keep_the_marginals_and_break_the_tie(tokenizer):
    """The weak rows are the weak model's own, permuted across the batch's completion positions; fused
    and naive permute alike (same seed, step, micro-batch) and give one loss and gradient."""
    batch = _batch(tokenizer)
    weak, strong = build_model(len(tokenizer), seed=3), build_model(len(tokenizer), seed=4)
    results = []
    for fused in (True, False):
        s = copy.deepcopy(strong)
        pair = WeakStrongPair(copy.deepcopy(weak), s, 0.5, fused_loss=fused, weak_logits="shuffled", seed=7)
        assert not any(p.requires_grad for p in pair.weak.parameters())  # nothing weak is trained
        pair.begin_micro_batch(0)
        loss = pair(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )["loss"]
        loss.backward()
        results.append((loss.detach(), _grads(s)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    _assert_close_grads(results[0][1], results[1][1])
    # the loss is Eq. 6 with the weak rows permuted: the same multiset of rows, not the same order
    with torch.no_grad():
        zw, _ = shift_for_next_token(weak(batch["input_ids"]).logits, batch["labels"])
        zs, targets = shift_for_next_token(strong(batch["input_ids"]).logits, batch["labels"])
    keep = targets != IGNORE_INDEX
    zw, zs, targets = zw[keep], zs[keep], targets[keep]
    in_order = F.cross_entropy(0.5 * zs + 0.5 * zw, targets)
    assert not torch.isclose(results[0][0], in_order)
    from wmss.weak_logits import shuffle_generator

    permutation = torch.randperm(len(targets), generator=shuffle_generator(7, 0, 0))
    assert sorted(permutation.tolist()) == list(range(len(targets))) and not torch.equal(
        permutation, torch.arange(len(targets))
    )
    torch.testing.assert_close(
        results[0][0], F.cross_entropy(0.5 * zs + 0.5 * zw[permutation], targets), rtol=1e-5, atol=1e-6
    )


# ---------------------------------------------------------------- ExPO and uniform selection


def test_expo_moves_m1_away_from_m0(tokenizer):
    m0, m1 = build_model(len(tokenizer), seed=1), build_model(len(tokenizer), seed=2)
    before = {k: v.clone() for k, v in m1.state_dict().items()}
    out = extrapolate(m0, copy.deepcopy(m1), 0.3).state_dict()
    for name, theta0 in m0.state_dict().items():
        if theta0.is_floating_point():
            torch.testing.assert_close(out[name], before[name] + 0.3 * (before[name] - theta0))
    zero = extrapolate(m0, copy.deepcopy(m1), 0.0).state_dict()
    assert all(torch.equal(zero[k], before[k]) for k in before)


def test_uniform_selection_weighs_every_valid_example_alike():
    weights, mass, _ = selection_weights(
        np.array([1.0, 2.0, np.nan, 0.5]), np.array([0.2, 0.1, 0.3, 0.9]), form="uniform"
    )
    np.testing.assert_allclose(weights, [1 / 3, 1 / 3, 0.0, 1 / 3])
    assert set(mass.values()) == {0.0}


# ---------------------------------------------------------------- through `wmss run`


def _config(model_dir, train_file, out, *extra):
    return load_config(
        None,
        [
            f"model={model_dir}", f"data.path={train_file}", f"output_dir={out}",
            "data.prompt_template={question}", "data.completion_template={answer}",
            "train.learning_rate=3e-3", "train.per_device_batch_size=4", "train.max_length=96",
            "train.logging_steps=1", *extra,
        ],
    )  # fmt: skip


@pytest.mark.parametrize("source", ["uniform", "entropy_matched", "shuffled"])
def test_weak_logit_controls_run_through_the_pipeline(tmp_path, tiny_model_dir, train_file, source):
    out = tmp_path / source
    manifest = run_pipeline(_config(tiny_model_dir, train_file, out, f"wmss.weak_logits={source}"))
    wdjt = manifest["phases"]["wdjt-1"]
    assert wdjt["status"] == "done" and wdjt["weak_logits"] == source and wdjt["steps"] > 0
    assert wdjt["gradients"]["grad_norm_weak"] == 0.0  # no weak parameter is trained
    final = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()
    m1 = AutoModelForCausalLM.from_pretrained(out / "models" / "M1").state_dict()
    assert any(not torch.equal(final[k], m1[k]) for k in final)
    assert read_jsonl(out / "selection-1.jsonl")  # WD-DS ran as for the real weak model


def test_dft_label_smoothing_and_expo_methods_run(tmp_path, tiny_model_dir, train_file):
    dft = run_pipeline(_config(tiny_model_dir, train_file, tmp_path / "dft", "method=dft", "sft.epochs=1"))
    assert dft["phases"]["dft"]["token_loss"] == {"label_smoothing": 0.0, "dft": True}
    smooth = run_pipeline(
        _config(
            tiny_model_dir,
            train_file,
            tmp_path / "ls",
            "method=sft",
            "sft.epochs=1",
            "sft.label_smoothing=0.1",
        )
    )
    assert smooth["phases"]["sft"]["token_loss"] == {"label_smoothing": 0.1, "dft": False}
    expo = run_pipeline(
        _config(tiny_model_dir, train_file, tmp_path / "expo", "method=expo", "expo.alpha=0.5")
    )
    assert expo["phases"]["expo"]["alpha"] == 0.5
    m0 = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    m1 = AutoModelForCausalLM.from_pretrained(tmp_path / "expo" / "models" / "M1").state_dict()
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "expo" / "final").state_dict()
    for name in m0:
        torch.testing.assert_close(final[name], m1[name] + 0.5 * (m1[name] - m0[name]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("wmss.weak_logits=random", "wmss.weak_logits must be one of model, uniform"),
        ("sft.label_smoothing=1.0", r"sft.label_smoothing must lie in \[0, 1\)"),
        ("expo.alpha=-1", r"expo.alpha must lie in \[0, 100\)"),
    ],
)
def test_control_settings_are_checked(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
    with pytest.raises(ConfigError, match="not available with LoRA"):
        load_config(None, ["peft.enabled=true", "wmss.weak_logits=uniform"])
