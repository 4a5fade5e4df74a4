"""Eq. 7 against a brute-force loop that runs the model on each prefix separately."""

import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from tests.conftest import arithmetic_rows, build_model
from wmss.config import DataConfig
from wmss.data import IGNORE_INDEX, tokenize_examples
from wmss.entropy import dataset_entropies


def brute_force_entropy(model, input_ids, labels):
    """(1/|T|) Σ_t −Σ_v p log p, where p is the model's prediction of completion token t from its prefix."""
    values = []
    for t in range(1, len(input_ids)):
        if labels[t] == IGNORE_INDEX:
            continue
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([input_ids[:t]])).logits[0, -1].double()
        probs = torch.softmax(logits, dim=-1).tolist()
        values.append(-sum(p * math.log(p) for p in probs if p > 0))
    return sum(values) / len(values) if values else float("nan")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_matches_brute_force_with_padding_and_sorting(tokenizer, arch):
    model = build_model(len(tokenizer), seed=3, arch=arch).eval()
    rows = arithmetic_rows(7)
    rows[2]["answer"] = "A much longer worked answer: 3 + 5 = 8, then 8 * 2 = 16. The answer is 16."
    cfg = DataConfig(prompt_template="{question}", completion_template="{answer}")
    dataset, _ = tokenize_examples(rows, tokenizer, cfg, max_length=256)
    fast = dataset_entropies(model, dataset, tokenizer.pad_token_id, batch_size=3)
    slow = [brute_force_entropy(model, r["input_ids"], r["labels"]) for r in dataset]
    np.testing.assert_allclose(fast, slow, rtol=1e-5)


def test_no_completion_token_is_nan_and_eval_mode_is_used(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=32,
            n_layer=2,
            n_head=4,
            resid_pdrop=0.5,
            embd_pdrop=0.5,
            attn_pdrop=0.5,
        )
    )
    model.train()
    ids = tokenizer(["Tom has 3 apples.", "3 + 5 = 8."]).input_ids
    dataset = Dataset.from_dict(
        {
            "idx": [0, 1],
            "input_ids": ids,
            "labels": [[IGNORE_INDEX] * len(ids[0]), [IGNORE_INDEX] * 2 + ids[1][2:]],
        }
    )
    first = dataset_entropies(model, dataset, tokenizer.pad_token_id)
    second = dataset_entropies(model, dataset, tokenizer.pad_token_id)
    assert np.isnan(first[0]) and np.isfinite(first[1])
    np.testing.assert_array_equal(first[1:], second[1:])  # dropout is off: eval mode
    assert model.training  # and the caller's mode is restored
    model.eval()
    np.testing.assert_allclose(
        first[1], brute_force_entropy(model, dataset[1]["input_ids"], dataset[1]["labels"]), rtol=1e-5
    )


def test_an_interrupted_entropy_pass_resumes_by_batch(tmp_path, tokenizer, monkeypatch):
    from tests.conftest import arithmetic_rows, build_model
    from wmss import entropy as entropy_module
    from wmss.config import DataConfig
    from wmss.data import tokenize_examples

    model = build_model(len(tokenizer), seed=5)
    dataset, _ = tokenize_examples(arithmetic_rows(10), tokenizer, DataConfig(prompt_template="{question}",
                                   completion_template="{answer}"), 96)  # fmt: skip
    reference = entropy_module.dataset_entropies(model, dataset, tokenizer.pad_token_id, batch_size=3)
    progress = tmp_path / "h.partial.jsonl"
    real, calls = entropy_module.chunked_sequence_entropy, []

    def dies_on_the_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(entropy_module, "chunked_sequence_entropy", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        entropy_module.dataset_entropies(
            model, dataset, tokenizer.pad_token_id, batch_size=3, progress=progress
        )
    partial = progress.with_name(progress.name + ".rank0")
    assert len(partial.read_text().splitlines()) == 3  # settings + the two finished batches
    calls.clear()
    monkeypatch.setattr(
        entropy_module, "chunked_sequence_entropy", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    resumed = entropy_module.dataset_entropies(
        model, dataset, tokenizer.pad_token_id, batch_size=3, progress=progress
    )
    assert len(calls) == 2  # only the two batches (of four) not finished before
    np.testing.assert_array_equal(resumed, reference)
    assert not partial.exists()
