"""Held-out gold-solution NLL of a study's final models (issue 22, §3): a paired, cheap and finer measure
than test accuracy on 238 problems.

The held-out set is MAWPS's training problems outside the study's subset (``train_size`` rows drawn
with ``subset_seed``), less every problem whose question, normalised (lower case, runs of white
space and punctuation made one space), repeats one of the subset's. Each is rendered exactly as the
study trains (its ``run.data`` settings: chat template, system prompt, templates) with its gold
solution in the study's format, and scored teacher-forced: the NLL of the gold completion tokens
under the model, summed per problem; the per-token NLL of a model is the sum over problems divided
by the number of completion tokens. Files, in each arm's run directory::

    heldout.json          {"problems", "tokens", "nll_per_token", "data": <how the set was made>}
    heldout-nll.jsonl     one {"id", "tokens", "nll"} per problem, for paired comparisons
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wmss.config import DataConfig
from wmss.data import IGNORE_INDEX, CompletionCollator, tokenize_examples
from wmss.heads import final_hidden_states, output_head
from wmss.io import atomic_write_json, atomic_write_jsonl, read_json
from wmss.losses import completion_positions, default_chunk_size
from wmss.models import load_model, load_tokenizer
from wmss.study.mawps import convert, load_rows, subset_indices

log = logging.getLogger("wmss")


def normalised_question(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def heldout_rows(
    data_dir: str | Path, fmt: str, train_size: int | None, seed: int
) -> tuple[list[dict], dict]:
    """The held-out problems as training rows (``{id, question, solution, answer}``), and how they were
    made."""
    rows = load_rows(Path(data_dir) / "trainset.json")
    subset = set(subset_indices(len(rows), train_size, seed))
    seen = {normalised_question(rows[i]["original_text"]) for i in subset}
    outside = [i for i in range(len(rows)) if i not in subset]
    kept = [i for i in outside if normalised_question(rows[i]["original_text"]) not in seen]
    converted, _ = convert([rows[i] for i in kept], fmt)
    for i, row in zip(kept, converted, strict=True):
        row["id"] = row["id"] if row["id"] is not None else f"train-{i}"
    made = {
        "source": str(Path(data_dir) / "trainset.json"),
        "format": fmt,
        "outside_subset": len(outside),
        "repeats_dropped": len(outside) - len(kept),
        "problems": len(kept),
    }
    return converted, made


@torch.no_grad()
def gold_nll(model: Any, dataset: Any, pad_token_id: int, batch_size: int = 16) -> list[tuple[int, float]]:
    """Per row of ``dataset`` (``input_ids``, ``labels``): (completion tokens, summed NLL of them),
    teacher-forced, in eval mode, projecting only the completion-predicting positions (batches of rows of
    similar length)."""
    model.eval()
    head = output_head(model)
    device = head.weight.device
    collate = CompletionCollator(pad_token_id)
    chunk = default_chunk_size(head.weight.shape[0])
    order = np.argsort([-len(ids) for ids in dataset["input_ids"]], kind="stable")  # little padding
    out: list[tuple[int, float]] = [(0, 0.0)] * len(dataset)
    for start in range(0, len(dataset), batch_size):
        rows_of_batch = [int(i) for i in order[start : start + batch_size]]
        batch = collate([dataset[i] for i in rows_of_batch])
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = final_hidden_states(model, batch["input_ids"], batch["attention_mask"])
        rows, targets = completion_positions(hidden, batch["labels"])
        example = (batch["labels"][:, 1:] != IGNORE_INDEX).nonzero()[:, 0]
        nll = torch.cat(
            [
                F.cross_entropy(
                    F.linear(rows[s : s + chunk], head.weight, getattr(head, "bias", None)).float(),
                    targets[s : s + chunk],
                    reduction="none",
                )
                for s in range(0, rows.shape[0], chunk)
            ]
        ).double()
        n = batch["input_ids"].shape[0]
        sums = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, example, nll)
        counts = torch.bincount(example, minlength=n)
        for row, c, total in zip(rows_of_batch, counts.tolist(), sums.tolist(), strict=True):
            out[row] = (int(c), float(total))
    return out


def score_heldout(run_dir: Path, data: DataConfig, max_length: int, rows: list[dict], made: dict) -> dict:
    """``heldout.json`` and ``heldout-nll.jsonl`` of the final model in ``run_dir`` (kept if both are already
    there for the same held-out set)."""
    summary_path = run_dir / "heldout.json"
    complete = summary_path.is_file() and (run_dir / "heldout-nll.jsonl").is_file()
    if complete and read_json(summary_path).get("data") == made:
        return read_json(summary_path)
    final = run_dir / "final"
    tokenizer = load_tokenizer(str(final))
    data = dataclasses.replace(data, id_field="id", limit=None)
    dataset, _ = tokenize_examples(rows, tokenizer, data, max_length, source="held-out MAWPS problems")
    model = load_model(str(final))
    scores = gold_nll(model, dataset, tokenizer.pad_token_id)
    del model
    per_problem = [
        {"id": i, "tokens": t, "nll": round(s, 6)} for i, (t, s) in zip(dataset["idx"], scores, strict=True)
    ]
    tokens = sum(t for t, _ in scores)
    summary = {
        "problems": len(per_problem),
        "tokens": tokens,
        "nll_per_token": float(np.sum([s for _, s in scores]) / max(tokens, 1)),
        "data": made,
    }
    atomic_write_jsonl(run_dir / "heldout-nll.jsonl", per_problem)
    atomic_write_json(summary_path, summary)
    return summary
