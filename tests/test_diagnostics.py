"""Diagnostics: logit statistics (chunked vs a naive oracle), margins and Theorem 1, entropy separation,
and the automatic λ of Appendix D, on constructed logits and tiny real models."""

import copy
import math

import numpy as np
import pytest
import torch

from tests.conftest import arithmetic_rows, build_model
from wmss.config import DataConfig
from wmss.data import tokenize_examples
from wmss.diagnostics import (
    MODEL_STATISTICS,
    crossover_lambda,
    entropy_separation,
    logit_statistics,
    measure_auto_lambda,
    pair_statistics,
    position_statistics,
    sample_rows,
    separation_warning,
)
from wmss.errors import WmssError


def _dataset(tokenizer, n=6):
    cfg = DataConfig(prompt_template="{question}", completion_template="{answer}")
    return tokenize_examples(arithmetic_rows(n), tokenizer, cfg, 96)[0]


def test_position_statistics_by_hand():
    z = torch.tensor([[2.0, 0.0, -1.0, 3.0]])
    y = torch.tensor([0])
    s = {k: v.item() for k, v in position_statistics(z, y).items()}
    p = torch.softmax(z, -1)[0]
    assert s["target_logit"] == 2.0
    assert s["background_logit"] == pytest.approx((0.0 - 1.0 + 3.0) / 3)
    assert s["target_background_gap"] == pytest.approx(2.0 - 2.0 / 3)
    assert s["max_logit"] == 3.0 and s["min_logit"] == -1.0
    assert s["l2_norm"] == pytest.approx(math.sqrt(4 + 0 + 1 + 9))
    centred = z[0] - z[0].mean()
    assert s["centred_norm"] == pytest.approx(centred.norm().item())
    assert s["logit_std"] == pytest.approx(z[0].std(unbiased=False).item())
    assert s["entropy"] == pytest.approx(-(p * p.log()).sum().item(), rel=1e-6)
    assert s["max_prob"] == pytest.approx(p.max().item()) and s["target_prob"] == pytest.approx(p[0].item())


def test_hard_negatives_and_theorem_1_condition():
    y = torch.tensor([0, 0])
    weak = torch.tensor([[1.0, 0.5, 0.0, -1.0], [1.0, 0.5, 0.0, -1.0]])
    # row 0: strong = weak + a boost of the target -> every margin grows: all hard negatives, Theorem 1 holds
    # row 1: token 1's margin shrinks under the strong model, the others grow: 2 of 3, Theorem 1 fails
    strong = torch.tensor([[3.0, 0.5, 0.0, -1.0], [1.0, 1.0, -1.0, -1.5]])
    s = pair_statistics(weak, strong, y)
    assert s["hard_negative_share"].tolist() == pytest.approx([1.0, 2 / 3])
    assert s["theorem1_fraction"].tolist() == [1.0, 0.0]
    # margins are unchanged by a shift of all logits, and a model compared with itself has no hard negatives
    shifted = pair_statistics(weak + 7.0, strong - 2.0, y)
    assert torch.equal(shifted["hard_negative_share"], s["hard_negative_share"])
    same = pair_statistics(weak, weak.clone(), y)
    assert same["hard_negative_share"].tolist() == [0.0, 0.0] and same["theorem1_fraction"].tolist() == [1, 1]


def test_theorem_1_when_the_condition_holds_mixing_lowers_the_target_probability():
    torch.manual_seed(0)
    y = torch.zeros(64, dtype=torch.long)
    weak = torch.randn(64, 50)
    strong = weak + torch.rand(64, 50) * 0.1
    strong[:, 0] += 1.0  # d[y] > d[k] for every k: every weak margin is <= the strong one
    assert pair_statistics(weak, strong, y)["theorem1_fraction"].mean().item() == 1.0
    mixed = 0.5 * strong + 0.5 * weak
    p_mix = torch.softmax(mixed, -1)[:, 0]
    p_strong = torch.softmax(strong, -1)[:, 0]
    assert (p_mix <= p_strong).all()


@pytest.mark.parametrize("c", [0.5, 2.0, 3.0])
def test_crossover_lambda_of_scaled_logits(c):
    torch.manual_seed(1)
    weak = torch.randn(10, 30)
    y = torch.randint(0, 30, (10,))
    weak_norm = position_statistics(weak, y)["centred_norm"].mean().item()
    strong_norm = position_statistics(c * weak, y)["centred_norm"].mean().item()
    found = crossover_lambda(strong_norm, weak_norm)
    assert found["a"] == pytest.approx(c**2, rel=1e-5)
    assert found["mix_lambda"] == pytest.approx(1 / (1 + c), rel=1e-5)


def test_crossover_lambda_reproduces_the_paper_and_refuses_zero_norms():
    found = crossover_lambda(1240.10, 1191.33)
    assert found["a"] == pytest.approx(1.08, abs=0.01)
    assert found["mix_lambda"] == pytest.approx(0.49, abs=0.005)
    with pytest.raises(WmssError, match="centred logit norms"):
        crossover_lambda(1.0, 0.0)


def _naive_statistics(model, dataset):
    """Oracle: full logits of each example, shifted by one, at completion positions."""
    values = {k: [] for k in MODEL_STATISTICS}
    with torch.no_grad():
        for ids, labels in zip(dataset["input_ids"], dataset["labels"], strict=True):
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            targets = torch.tensor(labels[1:])
            keep = targets != -100
            for k, v in position_statistics(logits[keep], targets[keep]).items():
                values[k].append(v)
    return {k: torch.cat(v).double().mean().item() for k, v in values.items()}


@pytest.mark.parametrize("fused", [True, False])
def test_chunked_statistics_match_the_naive_oracle(tokenizer, fused):
    dataset = _dataset(tokenizer)
    weak = build_model(len(tokenizer), seed=1)
    strong = build_model(len(tokenizer), seed=2)
    stats = logit_statistics(
        {"weak": weak, "strong": strong}, dataset, tokenizer.pad_token_id, [("weak", "strong")], 4, fused, 5
    )
    positions = sum(sum(1 for t in labels[1:] if t != -100) for labels in dataset["labels"])
    assert stats["positions"] == positions and stats["examples"] == len(dataset)
    for name, model in (("weak", weak), ("strong", strong)):
        oracle = _naive_statistics(model, dataset)
        for key in MODEL_STATISTICS:
            assert stats["models"][name][key] == pytest.approx(oracle[key], rel=1e-4, abs=1e-5), (name, key)
    pair = stats["pairs"]["weak vs strong"]
    assert 0.0 < pair["hard_negative_share"] < 1.0 and 0.0 <= pair["theorem1_fraction"] <= 1.0
    assert weak.training and strong.training  # modes restored


def test_measured_auto_lambda_of_a_model_and_its_scaled_head(tokenizer):
    """A strong model whose output head is c times the weak one's has logits c·z_weak: λ = 1/(1+c)."""
    dataset = _dataset(tokenizer)
    weak = build_model(len(tokenizer), seed=3, tie=False)
    strong = copy.deepcopy(weak)
    with torch.no_grad():
        strong.lm_head.weight.mul_(2.5)
    found = measure_auto_lambda(weak, strong, dataset, tokenizer.pad_token_id, batch_size=4)
    assert found["a"] == pytest.approx(2.5**2, rel=1e-4)
    assert found["mix_lambda"] == pytest.approx(1 / 3.5, rel=1e-4)
    assert found["strong_centred_norm"] == pytest.approx(2.5 * found["weak_centred_norm"], rel=1e-4)
    assert found["positions"] > 0


def test_entropy_separation_and_its_warning():
    h_weak = np.array([1.0, 1.2, 0.8, np.nan, 1.0])
    h_strong = np.array([0.5, 0.6, 0.9, 0.4, 0.2])
    sep = entropy_separation(h_weak, h_strong, min_gap=0.05)
    delta = np.array([-0.5, -0.6, 0.1, -0.8])
    assert sep["examples"] == 4 and sep["mean"] == pytest.approx(delta.mean())
    assert sep["quantiles"]["q50"] == pytest.approx(np.median(delta))
    assert sep["quantiles"]["q00"] == pytest.approx(-0.8) and sep["quantiles"]["q100"] == pytest.approx(0.1)
    assert sep["share_negative"] == 0.75 and sep["share_positive"] == 0.25
    assert not sep["too_close"] and separation_warning(sep) is None
    close = entropy_separation(h_weak, h_weak + 0.01, min_gap=0.05)
    assert close["too_close"]
    warning = separation_warning(close)
    assert "+0.0100" in warning and "wmss.min_entropy_gap = 0.05" in warning
    assert not entropy_separation(h_weak, h_weak + 0.01, min_gap=0.0)["too_close"]


def test_sample_rows_is_seeded_sorted_and_without_repeats():
    a = sample_rows(100, 10, seed=7)
    assert a == sample_rows(100, 10, seed=7) != sample_rows(100, 10, seed=8)
    assert a == sorted(set(a)) and len(a) == 10 and all(0 <= i < 100 for i in a)
    assert sample_rows(5, 10, seed=0) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("fused", [True, False])
def test_saturation_statistics_against_a_direct_computation(tokenizer, fused):
    from wmss.data import CompletionCollator
    from wmss.diagnostics import saturation_statistics

    strong, weak = build_model(len(tokenizer), seed=3), build_model(len(tokenizer), seed=4)
    dataset, _ = tokenize_examples(arithmetic_rows(5), tokenizer, DataConfig(prompt_template="{question}",
                                   completion_template="{answer}"), 96)  # fmt: skip
    batch = CompletionCollator(tokenizer.pad_token_id)([dataset[i] for i in range(5)])
    with torch.no_grad():
        zs = strong.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        zw = weak.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    keep = batch["labels"][:, 1:] != -100
    zs, zw, y = zs[:, :-1][keep], zw[:, :-1][keep], batch["labels"][:, 1:][keep]
    onehot = torch.nn.functional.one_hot(y, zs.shape[-1]).float()
    p = zs.softmax(-1)
    p_y = p.gather(1, y[:, None]).squeeze(1)
    threshold = float(p_y.median())
    hot = p_y > threshold
    sft = (p - onehot).norm(dim=-1)
    wdjt = 0.3 * ((0.3 * zs + 0.7 * zw).softmax(-1) - onehot).norm(dim=-1)

    got = saturation_statistics(strong, dataset, tokenizer.pad_token_id, weak, 0.3, threshold, 2, fused)
    assert got["tokens"] == y.numel() and got["saturated_share"] == pytest.approx(hot.float().mean().item())
    assert got["saturated_gradient_share"] == pytest.approx((sft[hot].sum() / sft.sum()).item(), rel=1e-4)
    assert got["loss"] == pytest.approx(torch.nn.functional.cross_entropy(zs, y).item(), rel=1e-4)
    assert got["gradient_norm"] == pytest.approx(sft.mean().item(), rel=1e-4)
    assert got["wdjt_saturated_gradient_norm"] == pytest.approx(wdjt[hot].mean().item(), rel=1e-4)
    ratio = (wdjt[hot].sum() / sft[hot].sum()).item()
    assert got["wdjt_over_sft_on_saturated"] == pytest.approx(ratio, rel=1e-4)
