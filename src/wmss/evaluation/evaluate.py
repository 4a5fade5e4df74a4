"""Score generations against gold answers and write a per-problem predictions file."""

from __future__ import annotations

import hashlib
import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from wmss.errors import WmssError
from wmss.evaluation.answers import extract_answer, extract_choice
from wmss.evaluation.generation import Generation, VLLMGenerator, generate
from wmss.evaluation.grading import grade
from wmss.evaluation.metrics import mean_pass_at_k
from wmss.evaluation.tasks import TaskData
from wmss.io import atomic_write_json, atomic_write_jsonl, file_digest, read_json, read_jsonl


def score(generation: str, gold: str, answer_type: str) -> dict:
    """Extracted answer and verdict of one generation; ``missing_gold`` when the problem has no gold answer,
    ``unparsable_gold`` when it cannot be read (both graded as wrong, and counted apart)."""
    if gold is None or not str(gold).strip():
        return {"extracted": extract_answer(generation), "correct": False, "error": "no gold answer",
                "missing_gold": True}  # fmt: skip
    if answer_type == "choice":
        extracted = extract_choice(generation)
        return {"extracted": extracted, "correct": extracted == gold.strip().upper(), "error": None}
    extracted = extract_answer(generation)
    try:
        outcome = grade(extracted, gold)
    except ValueError as unparsable:
        return {"extracted": extracted, "correct": False, "error": str(unparsable), "unparsable_gold": True}
    return {"extracted": extracted, "correct": outcome.correct, "error": outcome.error}


def evaluate_task(
    model: PreTrainedModel | VLLMGenerator,
    tokenizer: PreTrainedTokenizerBase,
    data: TaskData,
    prompts: list[str],
    out_dir: str | os.PathLike[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    num_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    show_progress: bool = True,
    exclude_bad_golds: bool = False,
    model_identity: Any = None,
) -> dict:
    """Generate, extract and grade every problem of a task; write ``predictions.jsonl`` and return a summary.

    Progress is appended to ``.predictions.partial.jsonl`` after each batch, so an interrupted
    evaluation resumes where it stopped (same settings required). Malformed rows, unparsable golds,
    empty generations and generations that hit the length budget are counted, never fatal.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final, progress = out / "predictions.jsonl", out / ".predictions.partial.jsonl"
    settings = {
        "max_new_tokens": max_new_tokens,
        "num_samples": num_samples,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        # another model or other problems under the same output directory start afresh, never merged
        "model": model_identity,
        "problems": hashlib.sha256(
            json.dumps(
                [[str(p["id"]), p["question"], p["answer"]] for p in data.problems], default=str
            ).encode()
        ).hexdigest(),
        "prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(),
    }
    stamp = out / ".predictions.done.json"  # the settings of a finished predictions.jsonl
    finished = _read_finished(final, stamp, settings)
    if finished is not None:  # evaluated already (e.g. before another model's evaluation was interrupted)
        records, elapsed = finished
        return _summary(data, records, num_samples, final, elapsed, exclude_bad_golds)
    done = _read_partial(progress, settings)
    todo = [i for i, p in enumerate(data.problems) if str(p["id"]) not in done]
    start = time.perf_counter()
    fresh = not progress.is_file()
    with open(progress, "a", encoding="utf-8") as sink:
        if fresh:
            sink.write(json.dumps({"settings": settings}) + "\n")

        def save(batch: list[int], generations: list[list[Generation]]) -> None:
            for index, samples in zip(batch, generations, strict=True):
                record = _record(
                    data.problems[todo[index]], prompts[todo[index]], samples, data.task.answer_type
                )
                done[str(record["id"])] = record
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()

        if todo:
            backend = (
                model.generate if isinstance(model, VLLMGenerator) else partial(generate, model, tokenizer)
            )
            backend(
                [prompts[i] for i in todo],
                max_new_tokens,
                batch_size=batch_size,
                num_samples=num_samples,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                show_progress=show_progress,
                on_batch=save,
            )
    elapsed = time.perf_counter() - start
    records = [done[str(p["id"])] for p in data.problems]
    atomic_write_jsonl(final, records, ensure_ascii=False)
    atomic_write_json(stamp, {"settings": settings, "wall_time_s": elapsed, "sha256": file_digest(final)})
    progress.unlink()
    return _summary(data, records, num_samples, final, elapsed, exclude_bad_golds)


def _record(problem: dict, prompt: str, samples: list[Generation], answer_type: str) -> dict:
    scored = [
        {
            "generation": g.text,
            "finish": g.finish,
            "num_tokens": g.num_tokens,
            **score(g.text, problem["answer"], answer_type),
        }
        for g in samples
    ]
    record = {"id": problem["id"], "prompt": prompt, "gold": problem["answer"]}
    if len(scored) == 1:
        return {**record, **scored[0]}
    return {**record, "num_correct": sum(s["correct"] for s in scored), "samples": scored}


def _read_finished(final: Path, stamp: Path, settings: dict) -> tuple[list[dict], float] | None:
    """The records and generation time of ``final`` when it was finished with ``settings`` and is
    unchanged since (its SHA-256 in ``stamp``); None otherwise."""
    if not final.is_file() or not stamp.is_file():
        return None
    try:
        recorded = read_json(stamp)
        if recorded["settings"] != settings or recorded["sha256"] != file_digest(final):
            return None
        return read_jsonl(final), float(recorded["wall_time_s"])
    except (ValueError, KeyError, TypeError, WmssError):  # a damaged stamp or file: evaluate again
        return None


def _read_partial(path: Path, settings: dict) -> dict[str, dict]:
    if not path.is_file():
        return {}
    bad_lines: list[int] = []  # a line cut short by the interruption: that problem is generated again
    rows = read_jsonl(path, bad_lines)
    if not rows or 1 in bad_lines or rows[0].get("settings") != settings:
        path.unlink()  # progress made with other settings cannot be reused
        return {}
    return {str(record["id"]): record for record in rows[1:] if "id" in record}


def _summary(
    data: TaskData, records: list[dict], num_samples: int, path: Path, elapsed: float, exclude_bad_golds: bool
) -> dict:
    samples = [r.get("samples", [r]) for r in records]
    flat = [s for group in samples for s in group]
    bad = [bool(group[0].get("missing_gold") or group[0].get("unparsable_gold")) for group in samples]
    if exclude_bad_golds:  # the user asked: problems without a usable gold are not scored at all
        samples = [group for group, b in zip(samples, bad, strict=True) if not b]
    correct = [sum(s["correct"] for s in group) for group in samples]
    tokens = sum(s["num_tokens"] for s in flat)
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, num_samples) if k <= num_samples})
    return {
        "task": data.task.name,
        "source": data.source,
        "num_problems": len(records),
        "num_scored": len(correct),
        "accuracy": mean_pass_at_k(correct, num_samples, 1) if correct else 0.0,
        "num_correct": sum(correct),
        "pass_at_k": {str(k): mean_pass_at_k(correct, num_samples, k) for k in ks},
        "num_samples": num_samples,
        "num_malformed_rows": len(data.malformed),
        "malformed_rows": data.malformed[:20],
        "num_missing_gold": sum(bool(r.get("missing_gold")) for r in flat) // max(num_samples, 1),
        "num_unparsable_gold": sum(bool(r.get("unparsable_gold")) for r in flat) // max(num_samples, 1),
        "bad_golds_excluded": exclude_bad_golds,
        "num_empty_generation": sum(not s["generation"].strip() for s in flat),
        "num_hit_length_limit": sum(s["finish"] == "length" for s in flat),
        "generated_tokens": tokens,
        "wall_time_s": round(elapsed, 2),
        "predictions_path": str(path),
        "per_problem": [c / num_samples for c in correct],
    }
