"""Held-out gold-solution NLL of a study's models (``wmss.study.heldout``): the set, the score, the report."""

import json

import numpy as np
import torch
import torch.nn.functional as F

from tests.conftest import arithmetic_rows, build_model
from wmss.config import DataConfig
from wmss.data import CompletionCollator, tokenize_examples
from wmss.losses import shift_for_next_token
from wmss.study.heldout import gold_nll, heldout_rows, normalised_question
from wmss.study.mawps import subset_indices
from wmss.study.report import _heldout


def test_gold_nll_is_the_teacher_forced_nll_of_each_completion(tokenizer):
    data = DataConfig(prompt_template="{question}", completion_template="{answer}")
    dataset, _ = tokenize_examples(arithmetic_rows(7), tokenizer, data, 96)
    model = build_model(len(tokenizer), seed=3)
    scores = gold_nll(model, dataset, tokenizer.pad_token_id, batch_size=3)
    for i, (tokens, nll) in enumerate(scores):
        batch = CompletionCollator(tokenizer.pad_token_id)([dataset[i]])
        with torch.no_grad():
            logits, targets = shift_for_next_token(model(batch["input_ids"]).logits, batch["labels"])
        keep = targets != -100
        assert tokens == int(keep.sum()) > 0
        expected = F.cross_entropy(logits[keep], targets[keep], reduction="sum").item()
        assert abs(nll - expected) < 1e-4 * max(1.0, expected)


def test_heldout_set_leaves_out_the_subset_and_repeated_questions(tmp_path):
    questions = [f"Tom has {i} apples. How many?" for i in range(12)]
    questions[11] = "tom has 0 APPLES;  how many"  # repeats row 0 once normalised
    rows = [{"original_text": q, "equation": "x=(1.0+2.0)", "ans": 3.0} for q in questions]
    (tmp_path / "trainset.json").write_text(json.dumps(rows))
    subset = subset_indices(12, 4, seed=0)
    held, made = heldout_rows(tmp_path, "worked", 4, 0)
    assert made["outside_subset"] == 8
    subset_questions = {normalised_question(questions[i]) for i in subset}
    assert all(normalised_question(r["question"]) not in subset_questions for r in held)
    assert made["problems"] == len(held) == 8 - made["repeats_dropped"]
    assert made["repeats_dropped"] == (0 in subset and 11 not in subset) + (11 in subset and 0 not in subset)
    assert held[0]["solution"].endswith("The answer is 3.")


def test_report_reads_the_nll_per_token(tmp_path):
    lines = [{"id": "b", "tokens": 3, "nll": 6.0}, {"id": "a", "tokens": 1, "nll": 1.0}]
    (tmp_path / "heldout-nll.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    per_problem = _heldout(tmp_path)
    assert np.isclose(per_problem.mean(), 7.0 / 4)  # Σ nll / Σ tokens
    assert _heldout(tmp_path / "missing") is None
