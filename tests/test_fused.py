"""The fused loss head and chunked entropy pass against the naive oracles (``wmss.losses``,
``wmss.entropy.sequence_entropy``): value and gradients, on rows, on real tiny models, in training.

Tolerances: float32 agrees to 1e-5 relative (only summation order differs). In bfloat16 the
fused path rounds differently (chunked float32 accumulation of the weight gradient instead of one
bfloat16 matmul, the mixing coefficient applied after instead of before the cast), so values agree
to 1e-2 relative and gradients to 2e-2 in relative Frobenius norm, the size of bfloat16 rounding.
"""

import copy
import logging

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import arithmetic_rows, build_model
from wmss.config import DataConfig, TrainConfig
from wmss.data import IGNORE_INDEX, tokenize_examples
from wmss.entropy import chunked_sequence_entropy, dataset_entropies, sequence_entropy
from wmss.heads import final_hidden_states, fused_head_unsupported, output_head, use_fused_head
from wmss.losses import (
    _Branch,
    _linear_cross_entropy_chunks,
    completion_cross_entropy,
    completion_positions,
    default_chunk_size,
    fused_completion_cross_entropy,
    fused_mixed_logit_cross_entropy,
    mixed_logit_cross_entropy,
)
from wmss.trainers import PhaseTraining, WeakStrongPair, train_sft


class Branch(nn.Module):
    """A stand-in for one model's last layers: hidden = tanh(embed(ids) @ A) and an output head.

    With ``tie`` the head's weight *is* the input embedding (one Parameter, two uses), so its
    gradient must accumulate the head's and the embedding's contributions.
    """

    def __init__(self, vocab: int, hidden: int, tie: bool, bias: bool, generator: torch.Generator):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.embed.weight.data = torch.randn(vocab, hidden, generator=generator)
        self.mix = nn.Parameter(torch.randn(hidden, hidden, generator=generator) / hidden**0.5)
        self.head = nn.Linear(hidden, vocab, bias=bias)
        self.head.weight.data = torch.randn(vocab, hidden, generator=generator)
        if bias:
            self.head.bias.data = torch.randn(vocab, generator=generator)
        if tie:
            self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.embed(ids) @ self.mix) * 2


def _case(seed: int, tie: bool, bias: bool, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    b, t = (int(x) for x in torch.randint(1, 5, (2,), generator=g))
    t += 6
    h, v = int(torch.randint(4, 24, (1,), generator=g)), int(torch.randint(5, 60, (1,), generator=g))
    strong, weak = Branch(v, h, tie, bias, g).to(dtype), Branch(v, h, tie, bias, g).to(dtype)
    ids = torch.randint(0, v, (b, t), generator=g)
    labels = torch.randint(0, v, (b, t), generator=g)
    prompt = torch.randint(0, t, (b,), generator=g)
    labels[torch.arange(t)[None] < prompt[:, None]] = IGNORE_INDEX  # prompts of random length
    labels[0, -2:] = IGNORE_INDEX  # padding
    return strong, weak, ids, labels


def _loss_and_grads(strong, weak, ids, labels, lam, fused, chunk=None, num_items=None):
    for p in [*strong.parameters(), *weak.parameters()]:
        p.grad = None
    hs, hw = strong(ids), weak(ids)
    if fused:
        loss = fused_mixed_logit_cross_entropy(hs, strong.head, hw, weak.head, labels, lam, num_items, chunk)
    else:
        loss = mixed_logit_cross_entropy(strong.head(hs), weak.head(hw), labels, lam, num_items)
    loss.backward()
    grads = {
        f"{name}.{n}": p.grad
        for name, m in (("strong", strong), ("weak", weak))
        for n, p in m.named_parameters()
    }
    return loss.detach(), grads


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, tol: float, msg: str = "") -> None:
    """``‖actual − expected‖ ≤ tol·‖expected‖`` (Frobenius norm; exact equality when expected is 0)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, msg
    error, scale = (actual.double() - expected.double()).norm(), expected.double().norm()
    assert error <= tol * scale, (
        f"{msg}: relative error {float(error / scale) if scale else error:.3g} > {tol}"
    )


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("tie,bias", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("seed", range(3))
def test_mixed_loss_and_gradients_equal_the_naive_oracle(seed, tie, bias, lam):
    strong, weak, ids, labels = _case(seed, tie, bias)
    n = int((labels[:, 1:] != IGNORE_INDEX).sum())
    expected, expected_grads = _loss_and_grads(strong, weak, ids, labels, lam, fused=False)
    for chunk in {1, 3, max(n, 1), n + 5}:  # dividing N and not, one chunk, more than N
        loss, grads = _loss_and_grads(strong, weak, ids, labels, lam, fused=True, chunk=chunk)
        assert_close_relative(loss, expected, 1e-5, "loss")
        for name, g in expected_grads.items():
            if lam == 1.0 and name.startswith("weak") or lam == 0.0 and name.startswith("strong"):
                assert not grads[name].any(), name  # zero, not missing
            assert_close_relative(grads[name], g, 1e-5, f"{name}, chunk {chunk}")


def test_tied_head_gradient_is_the_sum_of_its_two_uses():
    strong, weak, ids, labels = _case(0, tie=True, bias=False)
    assert strong.head.weight is strong.embed.weight
    _, tied = _loss_and_grads(strong, weak, ids, labels, 0.5, fused=True)
    untied = copy.deepcopy(strong)
    untied.head.weight = nn.Parameter(strong.head.weight.detach().clone())
    _, parts = _loss_and_grads(untied, weak, ids, labels, 0.5, fused=True)
    expected = parts["strong.embed.weight"] + parts["strong.head.weight"]
    assert_close_relative(tied["strong.embed.weight"], expected, 1e-6)


def test_no_completion_token_gives_zero_loss_and_zero_gradients():
    strong, weak, ids, labels = _case(1, tie=True, bias=True)
    labels[:] = IGNORE_INDEX
    loss, grads = _loss_and_grads(strong, weak, ids, labels, 0.5, fused=True)
    assert loss.item() == 0.0
    assert all(torch.isfinite(g).all() and not g.any() for g in grads.values())


def test_sum_scaling_num_items_and_no_grad_path():
    strong, weak, ids, labels = _case(2, tie=False, bias=True)
    expected, expected_grads = _loss_and_grads(strong, weak, ids, labels, 0.4, fused=False, num_items=7)
    loss, grads = _loss_and_grads(strong, weak, ids, labels, 0.4, fused=True, chunk=2, num_items=7)
    assert_close_relative(loss, expected, 1e-5)
    for name, g in expected_grads.items():  # grad_output = 1/7 reaches every gradient
        assert_close_relative(grads[name], g, 1e-5, name)
    with torch.no_grad():
        hs, hw = strong(ids), weak(ids)
        value = fused_mixed_logit_cross_entropy(hs, strong.head, hw, weak.head, labels, 0.4, 7)
    assert_close_relative(value, expected, 1e-5)


def test_frozen_weak_branch_gets_no_gradient_work():
    strong, weak, ids, labels = _case(3, tie=False, bias=True)
    weak.requires_grad_(False)
    expected, expected_grads = _loss_and_grads(strong, weak, ids, labels, 0.5, fused=False)
    loss, grads = _loss_and_grads(strong, weak, ids, labels, 0.5, fused=True, chunk=3)
    assert_close_relative(loss, expected, 1e-5)
    for name, g in expected_grads.items():
        if name.startswith("strong"):
            assert_close_relative(grads[name], g, 1e-5, name)
        else:
            assert g is None and grads[name] is None
    rows_s, targets = completion_positions(strong(ids), labels)
    rows_w, _ = completion_positions(weak(ids), labels)
    branches = [
        _Branch(rows_s, strong.head.weight, strong.head.bias, 0.5, (True, True, True)),
        _Branch(rows_w, weak.head.weight, weak.head.bias, 0.5, (False, False, False)),
    ]
    _, (strong_grads, weak_grads) = _linear_cross_entropy_chunks(branches, targets, 4)
    assert all(g is not None for g in strong_grads) and weak_grads == [None, None, None]


def test_a_second_backward_is_refused_not_silently_wrong():
    strong, weak, ids, labels = _case(3, tie=False, bias=False)
    loss = fused_mixed_logit_cross_entropy(strong(ids), strong.head, weak(ids), weak.head, labels, 0.5)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="ran twice"):
        loss.backward()


@pytest.mark.parametrize("tie,bias", [(True, False), (False, True)])
def test_sft_loss_equals_naive(tie, bias):
    strong, _, ids, labels = _case(4, tie, bias)
    for fused in (False, True):
        strong.zero_grad(set_to_none=True)
        hidden = strong(ids)
        if fused:
            loss = fused_completion_cross_entropy(hidden, strong.head, labels, chunk_size=3)
        else:
            loss = completion_cross_entropy(strong.head(hidden), labels)
        loss.backward()
        result = (loss.detach(), {n: p.grad.clone() for n, p in strong.named_parameters()})
        if not fused:
            expected = result
    assert_close_relative(result[0], expected[0], 1e-5)
    for name, g in expected[1].items():
        assert_close_relative(result[1][name], g, 1e-5, name)


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_bfloat16_within_documented_tolerance(lam):
    strong, weak, ids, labels = _case(5, tie=False, bias=True, dtype=torch.bfloat16)
    expected, expected_grads = _loss_and_grads(strong, weak, ids, labels, lam, fused=False)
    loss, grads = _loss_and_grads(strong, weak, ids, labels, lam, fused=True, chunk=3)
    assert loss.dtype == expected.dtype == torch.float32
    assert_close_relative(loss, expected, 1e-2)
    for name, g in expected_grads.items():
        assert_close_relative(grads[name], g, 2e-2, name)


def test_autocast_bfloat16_with_float32_weights():
    strong, weak, ids, labels = _case(6, tie=True, bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, expected_grads = _loss_and_grads(strong, weak, ids, labels, 0.5, fused=False)
        loss, grads = _loss_and_grads(strong, weak, ids, labels, 0.5, fused=True, chunk=3)
    assert_close_relative(loss, expected, 1e-2)
    for name, g in expected_grads.items():
        assert g.dtype == torch.float32
        assert_close_relative(grads[name], g, 2e-2, name)


def test_completion_positions_shift_by_one_and_default_chunk():
    hidden = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 7, 8], [IGNORE_INDEX, 5, IGNORE_INDEX, IGNORE_INDEX]])
    rows, targets = completion_positions(hidden, labels)
    assert rows.flatten().tolist() == [1.0, 2.0, 4.0] and targets.tolist() == [7, 8, 5]
    assert default_chunk_size(49152) == 341 and default_chunk_size(10) > 10**6


# ---------------------------------------------------------------- real models


def _pair_loss_and_grads(weak, strong, ids, mask, labels, lam, freeze_weak, fused):
    weak, strong = copy.deepcopy(weak), copy.deepcopy(strong)
    pair = WeakStrongPair(weak, strong, lam, freeze_weak, fused_loss=fused).eval()  # eval: no dropout
    assert pair.fused_loss is fused
    loss = pair(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=None)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in pair.named_parameters()}


def _batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX
    labels[mask == 0] = IGNORE_INDEX
    labels[2] = IGNORE_INDEX  # an example with no completion token
    return ids, mask, labels


@pytest.mark.parametrize(
    "arch,tie,freeze_weak",
    [("llama", True, False), ("qwen2", False, False), ("gpt2", True, False), ("llama", True, True)],
)
def test_model_level_wdjt_loss_equals_naive(arch, tie, freeze_weak):
    vocab = 97
    weak, strong = (
        build_model(vocab, seed=1, arch=arch, tie=tie),
        build_model(vocab, seed=2, arch=arch, tie=tie),
    )
    assert fused_head_unsupported(strong) is None
    assert (output_head(strong).weight is strong.get_input_embeddings().weight) is tie
    ids, mask, labels = _batch(vocab)
    expected, expected_grads = _pair_loss_and_grads(weak, strong, ids, mask, labels, 0.5, freeze_weak, False)
    loss, grads = _pair_loss_and_grads(weak, strong, ids, mask, labels, 0.5, freeze_weak, True)
    assert_close_relative(loss, expected, 1e-5)
    assert expected_grads.keys() == grads.keys()
    for name, g in expected_grads.items():
        if g is None:
            assert grads[name] is None and freeze_weak and name.startswith("weak."), name
        else:
            assert_close_relative(grads[name], g, 1e-5, name)


def test_final_hidden_states_skip_the_head(monkeypatch):
    model = build_model(97, arch="llama").eval()
    ids, mask, _ = _batch(97)
    calls = []
    monkeypatch.setattr(
        model.lm_head, "forward", lambda x: calls.append(x.shape) or nn.Linear.forward(model.lm_head, x)
    )
    hidden = final_hidden_states(model, ids, mask)
    assert hidden.shape == (3, 12, 32) and calls == [(3, 0, 32)]  # the head saw an empty slice
    assert torch.equal(model.lm_head(hidden), model(input_ids=ids, attention_mask=mask).logits)


def test_post_processed_logits_fall_back_with_one_log_line(caplog, tokenizer):
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaForCausalLM

    gemma = Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
        )
    )
    assert "final_logit_softcapping=30.0" in fused_head_unsupported(gemma)

    class Tempered(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits / 3
            return out

    tempered = Tempered(build_model(len(tokenizer)).config)
    assert "logits differ" in fused_head_unsupported(tempered)
    with caplog.at_level(logging.WARNING, logger="wmss"):
        assert not use_fused_head([build_model(len(tokenizer)), tempered], True, "WD-JT")
    assert len(caplog.records) == 1 and "WD-JT: naive loss head for Tempered" in caplog.text
    # the fallback gives the naive result: entropies equal those from full logits
    cfg = DataConfig(prompt_template="{question}", completion_template="{answer}")
    dataset, _ = tokenize_examples(arithmetic_rows(3), tokenizer, cfg, 96)
    for model in (gemma, tempered):
        np.testing.assert_allclose(
            dataset_entropies(model, dataset, tokenizer.pad_token_id),
            dataset_entropies(model, dataset, tokenizer.pad_token_id, fused=False),
            rtol=1e-6,
        )


# ---------------------------------------------------------------- entropy (Eq. 7)


@pytest.mark.parametrize("chunk", [None, 1, 4])
@pytest.mark.parametrize("bias,scale", [(False, 3.0), (True, 3.0), (False, 40.0)])  # 40: peaked, H ~ 0.1
def test_chunked_entropy_equals_naive_sequence_entropy(chunk, bias, scale):
    g = torch.Generator().manual_seed(7)
    head = nn.Linear(16, 41, bias=bias)
    hidden = torch.randn(4, 9, 16, generator=g) * scale
    labels = torch.randint(0, 41, (4, 9), generator=g)
    labels[:, :4] = IGNORE_INDEX
    labels[1, 6:] = IGNORE_INDEX
    labels[3] = IGNORE_INDEX  # no completion token: NaN
    with torch.inference_mode():
        fast = chunked_sequence_entropy(hidden, head, labels, chunk)
        slow = sequence_entropy(head(hidden), labels)
    assert torch.isnan(fast[3]) and torch.isnan(slow[3])
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=0, equal_nan=True)


@pytest.mark.parametrize("arch,tie", [("llama", True), ("qwen2", False), ("gpt2", True)])
def test_dataset_entropies_fused_equal_naive(tokenizer, arch, tie):
    model = build_model(len(tokenizer), seed=3, arch=arch, tie=tie)
    cfg = DataConfig(prompt_template="{question}", completion_template="{answer}")
    dataset, _ = tokenize_examples(arithmetic_rows(5), tokenizer, cfg, 96)
    fused = dataset_entropies(model, dataset, tokenizer.pad_token_id, batch_size=2)
    naive = dataset_entropies(model, dataset, tokenizer.pad_token_id, batch_size=2, fused=False)
    np.testing.assert_allclose(fused, naive, rtol=1e-5)


# ---------------------------------------------------------------- SFT on Trainer


def test_fused_sft_trains_like_naive_sft_with_gradient_accumulation(tmp_path, tokenizer):
    cfg = DataConfig(prompt_template="{question}", completion_template="{answer}")
    dataset, _ = tokenize_examples(arithmetic_rows(8), tokenizer, cfg, 96)
    results = {}
    for fused in (False, True):
        model = build_model(len(tokenizer), seed=4)
        train = TrainConfig(
            learning_rate=1e-2,
            per_device_batch_size=2,
            gradient_accumulation_steps=2,
            save_steps=100,
            logging_steps=1,
            fused_loss=fused,
        )
        result = train_sft(
            model, tokenizer, dataset, train, 1.0, PhaseTraining(tmp_path / f"fused-{fused}", 0)
        )
        results[fused] = (result, model.state_dict())
    (naive, naive_weights), (fused, fused_weights) = results[False], results[True]
    assert fused["steps"] == naive["steps"] == 2
    losses = [[e["loss"] for e in r["log_history"] if "loss" in e] for r in (naive, fused)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    for name, w in naive_weights.items():
        torch.testing.assert_close(fused_weights[name], w, rtol=1e-4, atol=1e-6, msg=name)
