"""Calibration of a study's final models on their own test answers (issue 22, §3; defined in
docs/controls.md before any run).

The *stated answer confidence* of a greedy generation is the probability the model gives, teacher-forced
on its own generation, to the tokens of the answer it states: the last occurrence of the extracted
final answer in the generation (``extracted`` of ``eval/predictions.jsonl``), i.e. the product of the
probabilities of the tokens that overlap it. The prompt and the generation are tokenised apart and
joined, as generation saw them. A generation without an extracted answer has confidence 0. Then

    ECE   = Σ_b (n_b / n)·|accuracy_b − mean confidence_b|   over 10 equal-width bins of confidence
    Brier = mean (confidence − correct)²

Written to ``calibration.json`` in the run directory.

Added after the first runs (post hoc, and outside the answer rule of docs/controls.md): on MAWPS the
stated answer copies the last number the worked solution computed ("189 - 6 = 157\nThe answer is
157."), so its confidence is near 1 whether the arithmetic was right or not and the measure above says
little beyond accuracy. The *derived-answer confidence* is the same product at the latest earlier
occurrence of the answer in the generation, as a whole number (no digit or decimal point next to it),
i.e. where the solution computed it; the stated occurrence where there is none. Its ECE and Brier are
``calibration.json``'s ``derived``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmss.io import atomic_write_json, read_json, read_jsonl
from wmss.models import load_model, load_tokenizer

BINS = 10


def calibration_errors(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> dict[str, float]:
    """ECE over ``bins`` equal-width bins (a confidence of 1 falls in the last) and the Brier score."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    ece = sum(
        (which == b).mean() * abs(correct[which == b].mean() - confidence[which == b].mean())
        for b in range(bins)
        if (which == b).any()
    )
    return {"ece": float(ece), "brier": float(np.mean((confidence - correct) ** 2))}


@torch.no_grad()
def answer_confidences(
    model: Any, tokenizer: Any, prompt: str, generation: str, answer: str | None
) -> tuple[float, float]:
    """The stated and the derived answer confidence of ``generation`` (see the module), from one
    teacher-forced pass; (0, 0) when it states no answer."""
    if not answer or answer not in generation:
        return 0.0, 0.0
    start = generation.rindex(answer)
    spans = [(start, start + len(answer))]
    earlier = list(re.finditer(rf"(?<![\d.]){re.escape(answer)}(?!\.?\d)", generation[:start]))
    spans.append((earlier[-1].start(), earlier[-1].end()) if earlier else spans[0])
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    encoded = tokenizer(generation, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor([prompt_ids + encoded["input_ids"]])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    out = []
    for begin, end in spans:
        tokens = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < end and b > begin]
        positions = [len(prompt_ids) + i for i in tokens]  # predicted from the position before each
        out.append(float(np.exp(sum(float(logp[p - 1, ids[0, p]]) for p in positions))))
    return out[0], out[1]


def answer_confidence(model: Any, tokenizer: Any, prompt: str, generation: str, answer: str | None) -> float:
    """The probability of the tokens of ``answer``'s last occurrence in ``generation`` (see the module)."""
    return answer_confidences(model, tokenizer, prompt, generation, answer)[0]


def score_calibration(run_dir: Path) -> dict:
    """``calibration.json`` of the run's final model on its test predictions (kept if already there with
    the derived-answer measure)."""
    path = run_dir / "calibration.json"
    predictions = run_dir / "eval" / "predictions.jsonl"
    if path.is_file() and "derived" in read_json(path):
        return read_json(path)
    records = read_jsonl(predictions)
    tokenizer = load_tokenizer(str(run_dir / "final"))
    model = load_model(str(run_dir / "final")).eval()
    stated, derived = (
        np.array(column)
        for column in zip(
            *(
                answer_confidences(model, tokenizer, r["prompt"], r["generation"], r.get("extracted"))
                for r in records
            ),
            strict=True,
        )
    )
    correct = np.array([float(r["correct"]) for r in records])
    summary = {
        "problems": len(records),
        "mean_confidence": float(stated.mean()),
        "accuracy": float(correct.mean()),
        **calibration_errors(stated, correct),
        "bins": BINS,
        "derived": {"mean_confidence": float(derived.mean()), **calibration_errors(derived, correct)},
    }
    atomic_write_json(path, summary)
    return summary
