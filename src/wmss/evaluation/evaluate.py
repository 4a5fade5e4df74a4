"""Score generations against gold answers and write a per-problem predictions file."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from wmss.evaluation.answers import extract_answer
from wmss.evaluation.generation import generate_greedy
from wmss.evaluation.grading import grade


@dataclass
class EvalResult:
    """Accuracy over all problems; unparsable golds count as wrong and are also counted on their own."""

    accuracy: float
    num_problems: int
    num_correct: int
    num_unparsable_gold: int
    num_empty_generation: int
    predictions_path: str | None

    def to_dict(self) -> dict:
        """Plain dict, ready for JSON."""
        return asdict(self)


def evaluate_generations(
    ids: list[str],
    prompts: list[str],
    generations: list[str],
    golds: list[str],
    predictions_path: str | os.PathLike[str] | None = None,
) -> EvalResult:
    """Extract and grade each generation; write one JSONL record per problem when ``predictions_path`` is set.

    Each record holds id, prompt, generation, extracted, gold, correct and error (why grading failed, or
    null).
    """
    if not len(ids) == len(prompts) == len(generations) == len(golds):
        raise ValueError(
            f"ids, prompts, generations and golds must have the same length, got "
            f"{len(ids)}, {len(prompts)}, {len(generations)} and {len(golds)}"
        )
    if not ids:
        raise ValueError("there are no problems to evaluate")
    records = []
    num_unparsable_gold = 0
    for problem_id, prompt, generation, gold in zip(ids, prompts, generations, golds, strict=True):
        extracted = extract_answer(generation)
        try:
            outcome = grade(extracted, gold)
            correct, error = outcome.correct, outcome.error
        except ValueError as unparsable:
            num_unparsable_gold += 1
            correct, error = False, str(unparsable)
        records.append(
            {
                "id": problem_id,
                "prompt": prompt,
                "generation": generation,
                "extracted": extracted,
                "gold": gold,
                "correct": correct,
                "error": error,
            }
        )
    num_correct = sum(record["correct"] for record in records)
    if predictions_path is not None:
        _write_jsonl_atomically(Path(predictions_path), records)
    return EvalResult(
        accuracy=num_correct / len(records),
        num_problems=len(records),
        num_correct=num_correct,
        num_unparsable_gold=num_unparsable_gold,
        num_empty_generation=sum(not generation.strip() for generation in generations),
        predictions_path=None if predictions_path is None else str(predictions_path),
    )


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[dict],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    predictions_path: str | os.PathLike[str] | None = None,
    show_progress: bool = True,
) -> EvalResult:
    """Generate greedily for each problem (keys ``id``, rendered ``prompt``, gold ``answer``) and score it."""
    for index, problem in enumerate(problems):
        missing = {"id", "prompt", "answer"} - problem.keys()
        if missing:
            raise ValueError(
                f"problem {index} lacks the key(s) {sorted(missing)}; each needs id, prompt and answer"
            )
    prompts = [problem["prompt"] for problem in problems]
    generations = generate_greedy(
        model, tokenizer, prompts, max_new_tokens, batch_size=batch_size, show_progress=show_progress
    )
    return evaluate_generations(
        [problem["id"] for problem in problems],
        prompts,
        generations,
        [str(problem["answer"]) for problem in problems],
        predictions_path=predictions_path,
    )


def _write_jsonl_atomically(path: Path, records: list[dict]) -> None:
    """Write ``records`` as JSONL to a temporary file next to ``path``, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
