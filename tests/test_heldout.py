"""Post-hoc measures of a study's models: held-out gold-solution NLL (``wmss.study.heldout``: the set, the
score, the report) and calibration (``wmss.study.calibration``)."""

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


def test_calibration_errors_by_hand():
    from wmss.study.calibration import calibration_errors

    out = calibration_errors(np.array([0.95, 0.95, 0.15, 0.55]), np.array([1, 0, 0, 1]))
    # bins 9 (2 answers: accuracy 0.5, confidence 0.95), 1 (0 vs 0.15), 5 (1 vs 0.55)
    assert np.isclose(out["ece"], 0.5 * 0.45 + 0.25 * 0.15 + 0.25 * 0.45)
    assert np.isclose(out["brier"], (0.05**2 + 0.95**2 + 0.15**2 + 0.45**2) / 4)
    assert calibration_errors(np.array([1.0, 0.0]), np.array([1, 0])) == {"ece": 0.0, "brier": 0.0}


def test_answer_confidence_is_the_probability_of_the_stated_answer(tokenizer):
    from wmss.study.calibration import answer_confidence

    model = build_model(len(tokenizer), seed=4).eval()
    prompt, generation = "Tom has 3 apples and buys 5 more.", "3 + 5 = 8. The answer is 8."
    confidence = answer_confidence(model, tokenizer, prompt, generation, "8")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    gen = tokenizer(generation, add_special_tokens=False, return_offsets_mapping=True)
    last = len(generation) - 2  # the final "8"
    span = [i for i, (a, b) in enumerate(gen["offset_mapping"]) if a <= last < b]
    ids = torch.tensor([prompt_ids + gen["input_ids"]])
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0], -1)
    expected = np.prod([probs[len(prompt_ids) + i - 1, ids[0, len(prompt_ids) + i]].item() for i in span])
    assert span and 0.0 < confidence < 1.0 and np.isclose(confidence, expected, rtol=1e-4)
    assert answer_confidence(model, tokenizer, prompt, generation, None) == 0.0
    assert answer_confidence(model, tokenizer, prompt, generation, "41") == 0.0


def test_derived_answer_confidence_is_where_the_solution_computed_it(tokenizer):
    """The post-hoc measure: the answer's latest earlier occurrence as a whole number ("18" and "8.5"
    do not count for "8"); the stated one when the generation computes it nowhere else."""
    from wmss.study.calibration import answer_confidence, answer_confidences

    model = build_model(len(tokenizer), seed=4).eval()
    prompt = "Tom has 3 apples and buys 5 more."

    def probability_at(generation, begin, end):  # the product of the probabilities of the span's tokens
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        gen = tokenizer(generation, add_special_tokens=False, return_offsets_mapping=True)
        span = [i for i, (a, b) in enumerate(gen["offset_mapping"]) if a < end and b > begin]
        ids = torch.tensor([prompt_ids + gen["input_ids"]])
        with torch.no_grad():
            probs = torch.softmax(model(ids).logits[0], -1)
        return np.prod([probs[len(prompt_ids) + i - 1, ids[0, len(prompt_ids) + i]].item() for i in span])

    generation = "18 - 8.5 = 9.5, 3 + 5 = 8, 18 + 8.5 = 26.5. The answer is 8."
    stated, derived = answer_confidences(model, tokenizer, prompt, generation, "8")
    computed = generation.index("= 8,") + 2
    assert stated == answer_confidence(model, tokenizer, prompt, generation, "8")
    assert np.isclose(derived, probability_at(generation, computed, computed + 1), rtol=1e-4)
    assert np.isclose(stated, probability_at(generation, len(generation) - 2, len(generation) - 1), rtol=1e-4)
    assert derived != stated
    once = "The answer is 8."  # computed nowhere else: the stated occurrence
    assert (
        answer_confidences(model, tokenizer, prompt, once, "8")[1]
        == answer_confidences(model, tokenizer, prompt, once, "8")[0]
    )
    assert answer_confidences(model, tokenizer, prompt, generation, None) == (0.0, 0.0)
