"""Eq. 5-6: the mixed-logit loss, its gradients, and Theorem 1 on constructed logits."""

import pytest
import torch

from wmss.data import IGNORE_INDEX
from wmss.losses import completion_cross_entropy, mix_logits, mixed_logit_cross_entropy


def _batch(seed=0, b=3, t=7, v=11):
    g = torch.Generator().manual_seed(seed)
    strong = torch.randn(b, t, v, generator=g) * 3
    weak = torch.randn(b, t, v, generator=g) * 3
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :3] = IGNORE_INDEX  # prompt
    labels[1, 5:] = IGNORE_INDEX  # padding
    return strong, weak, labels


def test_lambda_one_is_sft_loss_of_a_real_model(tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tokenizer(
        ["Tom has 3 apples. 3 + 5 = 8.", "The answer is 8."], padding=True, return_tensors="pt"
    ).input_ids
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    logits = model(input_ids=ids).logits
    reference = model(input_ids=ids, labels=labels).loss
    other = torch.randn_like(logits)
    torch.testing.assert_close(mixed_logit_cross_entropy(logits, other, labels, 1.0), reference)
    torch.testing.assert_close(completion_cross_entropy(logits, labels), reference)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
def test_gradient_of_each_branch_is_lambda_times_pmix_minus_onehot(lam):
    strong, weak, labels = _batch()
    strong.requires_grad_(True)
    weak.requires_grad_(True)
    loss = mixed_logit_cross_entropy(strong, weak, labels, lam, num_items_in_batch=1)  # a plain sum
    loss.backward()
    p_mix = torch.softmax(mix_logits(strong, weak, lam), dim=-1)
    target = torch.zeros_like(p_mix)
    valid = torch.zeros(labels.shape, dtype=torch.bool)
    valid[:, :-1] = labels[:, 1:] != IGNORE_INDEX  # position t-1 predicts token t
    for b, t in valid.nonzero().tolist():
        target[b, t, labels[b, t + 1]] = 1.0
    expected = (p_mix - target) * valid[..., None]
    torch.testing.assert_close(strong.grad, lam * expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weak.grad, (1 - lam) * expected, atol=1e-6, rtol=1e-5)


def test_loss_is_mean_over_completion_tokens():
    strong, weak, labels = _batch()
    n = (labels[:, 1:] != IGNORE_INDEX).sum()
    total = mixed_logit_cross_entropy(strong, weak, labels, 0.4, num_items_in_batch=1)
    torch.testing.assert_close(mixed_logit_cross_entropy(strong, weak, labels, 0.4), total / n)


def test_margins_mix_linearly():
    strong, weak, labels = _batch()
    lam, y = 0.37, 2
    margin = lambda z: z[..., y : y + 1] - z  # noqa: E731
    torch.testing.assert_close(
        margin(mix_logits(strong, weak, lam)),
        (1 - lam) * margin(weak) + lam * margin(strong),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_theorem_1_weaker_margins_grow_negative_mass(lam):
    g = torch.Generator().manual_seed(1)
    v, y = 50, 7
    strong = torch.randn(200, v, generator=g) * 4
    strong[:, y] += 6  # a confident strong model
    # Weak margins never exceed the strong ones: raise every non-target logit by a non-negative amount.
    bump = torch.rand(200, v, generator=g) * 5
    bump[:, y] = 0
    weak = strong + bump
    assert ((weak[:, y : y + 1] - weak) <= (strong[:, y : y + 1] - strong) + 1e-6).all()
    p_mix = torch.softmax(mix_logits(strong, weak, lam), dim=-1)[:, y]
    p_strong = torch.softmax(strong, dim=-1)[:, y]
    assert (p_mix <= p_strong + 1e-6).all()
    if 0 < lam < 1:  # strictly more negative mass, hence a larger gradient on the wrong tokens than SFT's
        assert ((1 - p_mix) > (1 - p_strong)).all()


def test_no_completion_token_gives_zero_loss_not_nan():
    strong, weak, labels = _batch()
    labels[:] = IGNORE_INDEX
    loss = mixed_logit_cross_entropy(strong.requires_grad_(True), weak, labels, 0.5)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(strong.grad).all()
