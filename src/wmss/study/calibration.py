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
"""

from __future__ import annotations

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
def answer_confidence(model: Any, tokenizer: Any, prompt: str, generation: str, answer: str | None) -> float:
    """The probability of the tokens of ``answer``'s last occurrence in ``generation`` (see the module)."""
    if not answer or answer not in generation:
        return 0.0
    start = generation.rindex(answer)
    end = start + len(answer)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    encoded = tokenizer(generation, add_special_tokens=False, return_offsets_mapping=True)
    span = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < end and b > start]
    ids = torch.tensor([prompt_ids + encoded["input_ids"]])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    positions = [len(prompt_ids) + i for i in span]  # predicted from the position before each
    total = sum(float(logp[p - 1, ids[0, p]]) for p in positions)
    return float(np.exp(total))


def score_calibration(run_dir: Path) -> dict:
    """``calibration.json`` of the run's final model on its test predictions (kept if already there)."""
    path = run_dir / "calibration.json"
    predictions = run_dir / "eval" / "predictions.jsonl"
    if path.is_file():
        return read_json(path)
    records = read_jsonl(predictions)
    tokenizer = load_tokenizer(str(run_dir / "final"))
    model = load_model(str(run_dir / "final")).eval()
    confidence = np.array(
        [
            answer_confidence(model, tokenizer, r["prompt"], r["generation"], r.get("extracted"))
            for r in records
        ]
    )
    correct = np.array([float(r["correct"]) for r in records])
    summary = {
        "problems": len(records),
        "mean_confidence": float(confidence.mean()),
        "accuracy": float(correct.mean()),
        **calibration_errors(confidence, correct),
        "bins": BINS,
    }
    atomic_write_json(path, summary)
    return summary
