"""Score generations against gold answers and write a per-problem predictions file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from wmss.errors import DataError, WmssError
from wmss.evaluation.answers import extract_answer, extract_choice
from wmss.evaluation.code import execution_score, grade_solutions, solution_program
from wmss.evaluation.generation import ANSWER_COMPLETE, Generation, VLLMGenerator, generate
from wmss.evaluation.grading import grade
from wmss.evaluation.metrics import mean_pass_at_k
from wmss.evaluation.sandbox import SandboxLimits
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


def score_samples(
    problems: list[dict],
    prompts: list[str],
    generations: list[list[Generation]],
    answer_type: str,
    code_limits: SandboxLimits | None = None,
    code_workers: int | None = None,
) -> list[list[dict]]:
    """``score`` of every sample of every problem; code is graded by running each sample's program
    against the problem's tests in the sandbox, all samples of the batch in parallel."""
    if answer_type != "code":
        return [[score(g.text, p["answer"], answer_type) for g in samples]
                for p, samples in zip(problems, generations, strict=True)]  # fmt: skip
    if code_limits is None:
        raise ValueError("code tasks need code_limits (the sandbox's limits)")
    owners, solutions = [], []
    for problem, prompt, samples in zip(problems, prompts, generations, strict=True):
        for sample in samples:
            owners.append(problem)
            solutions.append(solution_program(problem, sample.text, prompt))
    executions = grade_solutions(owners, solutions, code_limits, code_workers)
    verdicts = iter(execution_score(s, e) for s, e in zip(solutions, executions, strict=True))
    return [[next(verdicts) for _ in samples] for samples in generations]


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
    stop_pattern: str | None = ANSWER_COMPLETE,
    code_limits: SandboxLimits | None = None,
    code_workers: int | None = None,
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
        "stop_pattern": stop_pattern,
        "code_limits": dataclasses.asdict(code_limits) if code_limits else None,
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
            problems = [data.problems[todo[index]] for index in batch]
            texts = [prompts[todo[index]] for index in batch]
            scores = score_samples(
                problems, texts, generations, data.task.answer_type, code_limits, code_workers
            )
            for index, samples, scored in zip(batch, generations, scores, strict=True):
                record = _record(data.problems[todo[index]], prompts[todo[index]], samples, scored)
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
                stop_pattern=stop_pattern,
                show_progress=show_progress,
                on_batch=save,
            )
    elapsed = time.perf_counter() - start
    records = [done[str(p["id"])] for p in data.problems]
    atomic_write_jsonl(final, records, ensure_ascii=False)
    atomic_write_json(stamp, {"settings": settings, "wall_time_s": elapsed, "sha256": file_digest(final)})
    progress.unlink()
    return _summary(data, records, num_samples, final, elapsed, exclude_bad_golds)


def _record(problem: dict, prompt: str, samples: list[Generation], scores: list[dict]) -> dict:
    scored = [
        {"generation": g.text, "finish": g.finish, "num_tokens": g.num_tokens, **verdict}
        for g, verdict in zip(samples, scores, strict=True)
    ]
    record = {"id": problem["id"], "prompt": prompt, "gold": problem["answer"]}
    if len(scored) == 1:
        return {**record, **scored[0]}
    return {**record, "num_correct": sum(s["correct"] for s in scored), "samples": scored}


def grade_predictions(
    data: TaskData,
    predictions: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    code_limits: SandboxLimits,
    code_workers: int | None = None,
) -> dict:
    """Grade code written elsewhere (vLLM, another harness): a JSONL file with one row per sample, its
    problem named by ``task_id`` (or ``id``) and its code in ``completion`` (a continuation of the
    problem's prompt, HumanEval's layout), ``solution`` (whole code, evalplus's layout) or
    ``generation`` (a model's raw answer, sanitised like wmss's own). Writes ``predictions.jsonl`` with
    the verdicts and returns the summary (pass@k over the samples of each problem). Problems without a
    row get empty samples, graded as wrong."""
    if not Path(predictions).is_file():
        raise DataError(f"predictions file {predictions} does not exist (or is not a file).")
    bad_lines: list[int] = []
    rows = read_jsonl(predictions, bad_lines)
    if bad_lines:
        raise DataError(f"{predictions}, line {bad_lines[0]}: not a JSON object; fix or remove that line.")
    by_id: dict[str, list[tuple[str, str | None]]] = {str(p["id"]): [] for p in data.problems}
    for lineno, row in enumerate(rows, start=1):
        key = str(row.get("task_id", row.get("id")))
        field = next(
            (f for f in ("completion", "solution", "generation") if isinstance(row.get(f), str)), None
        )
        if field is None or key not in by_id:
            raise DataError(
                f"{predictions}, row {lineno}: needs a task_id (or id) of a {data.task.name} problem "
                f"(got {key!r}) and its code as 'completion', 'solution' or 'generation'."
            )
        by_id[key].append((row[field], field))
    num_samples = max(len(v) for v in by_id.values())
    if num_samples == 0:
        raise DataError(f"{predictions}: no row names a problem of {data.task.name} ({data.source}).")
    uneven = [k for k, v in by_id.items() if v and len(v) != num_samples]
    if uneven:
        raise DataError(
            f"{predictions}: every problem needs the same number of samples for pass@k; {uneven[0]} has "
            f"{len(by_id[uneven[0]])}, others {num_samples}."
        )
    start = time.perf_counter()
    problems, prompts, generations = [], [], []
    for problem in data.problems:
        samples = by_id[str(problem["id"])] or [("", None)] * num_samples
        for text, field in samples:  # a completion continues the code prompt; anything else is whole code
            problems.append(problem)
            prompts.append(problem.get("code_prompt", "") if field == "completion" else "")
            generations.append([Generation(text, 0, "external")])
    scores = score_samples(problems, prompts, generations, "code", code_limits, code_workers)
    records = []
    for i, problem in enumerate(data.problems):
        span = range(i * num_samples, (i + 1) * num_samples)
        samples = [generations[j][0] for j in span]
        records.append(_record(problem, prompts[span[0]], samples, [scores[j][0] for j in span]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / "predictions.jsonl"
    atomic_write_jsonl(final, records, ensure_ascii=False)
    summary = _summary(data, records, num_samples, final, time.perf_counter() - start, False)
    summary["num_without_prediction"] = sum(not v for v in by_id.values())
    return summary


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
