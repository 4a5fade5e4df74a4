"""``wmss eval``: several models × several tasks, one predictions file per pair, one comparison report."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

from wmss.config import EvalConfig, RunConfig
from wmss.errors import ConfigError
from wmss.evaluation.evaluate import evaluate_task
from wmss.evaluation.generation import VLLMGenerator, vllm_usable
from wmss.evaluation.prompting import build_prompts
from wmss.evaluation.report import write_report
from wmss.evaluation.tasks import Task, TaskData, generic_task, load_task, resolve_task

log = logging.getLogger("wmss")


def parse_task_spec(spec: str | None, cfg: EvalConfig) -> tuple[Task, str | None]:
    """``"gsm8k"``, ``"gsm8k=PATH"``, ``"task.yaml"`` or ``"generic=PATH"``.

    Unset: ``eval.task`` with ``eval.path``."""
    name, _, path = (spec or cfg.task).partition("=")
    path = path or (cfg.path if spec is None else None)
    if name == "generic":
        return generic_task(cfg.question_field, cfg.answer_field), path
    task, task_path = resolve_task(name)
    return task, path or task_path


def load_problems(task: Task, path: str | None, cfg: EvalConfig) -> TaskData:
    data = load_task(task, path, cfg.split, cfg.limit)
    for line in data.malformed[:5]:
        log.warning("%s: skipped malformed row: %s", task.name, line)
    if len(data.malformed) > 5:
        log.warning("%s: %d malformed rows in all (see the summary)", task.name, len(data.malformed))
    return data


def evaluate_one(
    model: Any, tokenizer: Any, task: Task, data: TaskData, cfg: RunConfig, out_dir: Path
) -> dict:
    e = cfg.eval
    fewshot = []
    if e.num_fewshot:
        shots = load_task(task, e.fewshot_path, "train", e.num_fewshot).problems
        fewshot = [(p, p.get("solution")) for p in shots]
    prompts = build_prompts(data.problems, task, tokenizer, cfg.data, e, fewshot)
    summary = evaluate_task(
        model,
        tokenizer,
        data,
        prompts,
        out_dir,
        max_new_tokens=e.max_new_tokens or task.max_new_tokens,
        batch_size=e.batch_size,
        num_samples=e.num_samples,
        temperature=e.temperature,
        top_p=e.top_p,
        seed=cfg.seed,
        exclude_bad_golds=e.exclude_bad_golds,
        model_identity=_identity(model),
    )
    missing, unparsable = summary["num_missing_gold"], summary["num_unparsable_gold"]
    if missing or unparsable:
        treated = "left out of the accuracy" if e.exclude_bad_golds else "graded as wrong"
        hint = "" if e.exclude_bad_golds else " (eval.exclude_bad_golds=true leaves them out of the accuracy)"
        log.warning(
            "eval %s: %d of %d problems have no gold answer and %d one that cannot be read (%s): %s%s.",
            task.name, missing, summary["num_problems"], unparsable, data.source, treated, hint,
        )  # fmt: skip
    return summary


def _identity(model: Any) -> Any:
    """Which model generated (for resuming an evaluation only with the same one)."""
    from wmss.models import model_identity

    path = getattr(model, "name_or_path", None) or getattr(model, "path", None)
    return model_identity(str(path)) if path else None


def backend_model(path: str, tokenizer: Any, cfg: RunConfig) -> Any:
    """The model to generate with: a vLLM engine (``eval.backend``) or the transformers model."""
    from wmss.models import load_model

    backend = cfg.eval.backend
    if backend == "vllm" and not vllm_usable():
        raise ConfigError("eval.backend=vllm needs the vllm package and a CUDA GPU; use eval.backend=hf.")
    if backend == "vllm" or (backend == "auto" and vllm_usable()):
        log.info("eval: generating with vLLM")
        return VLLMGenerator(path, tokenizer, cfg.seed)
    return load_model(path, **cfg.model_args.load_kwargs())


def evaluate_models(
    models: dict[str, str],
    task_specs: list[str | None],
    cfg: RunConfig,
    out_dir: str | Path,
    baseline: str | None = None,
) -> dict:
    """Evaluate every model on every task; write per-pair predictions and ``summary.{json,md,png}``."""
    from wmss.models import load_tokenizer, resolve_model

    out = Path(out_dir)
    tasks = [parse_task_spec(spec, cfg.eval) for spec in task_specs]
    results: dict[str, dict[str, dict]] = {}
    for name, source in models.items():
        path = resolve_model(source)
        tokenizer = load_tokenizer(path)
        model = backend_model(path, tokenizer, cfg)
        results[name] = {}
        for task, task_path in tasks:
            data = load_problems(task, task_path, cfg.eval)
            log.info("eval: %s on %s (%d problems from %s)", name, task.name, len(data.problems), data.source)
            results[name][task.name] = evaluate_one(model, tokenizer, task, data, cfg, out / name / task.name)
        del model
        gc.collect()
    return write_report(results, out, baseline)
