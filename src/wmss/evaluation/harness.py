"""``wmss eval``: several models × several tasks, one predictions file per pair, one comparison report."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

from wmss.config import EvalConfig, ModelArgsConfig, RunConfig
from wmss.errors import ConfigError
from wmss.evaluation.code import BASE_MODEL_STOP, continues_code_prompt
from wmss.evaluation.evaluate import evaluate_task, grade_predictions
from wmss.evaluation.generation import ANSWER_COMPLETE, VLLMGenerator, vllm_usable
from wmss.evaluation.prompting import build_prompts
from wmss.evaluation.report import write_report
from wmss.evaluation.sandbox import SandboxLimits, require_consent
from wmss.evaluation.tasks import Task, TaskData, check_name, generic_task, load_task, resolve_task
from wmss.io import remove_litter

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
    """The task's problems; for a code task, only once the user has allowed running code."""
    if task.answer_type == "code":
        require_consent(cfg.allow_code_execution)
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
    if e.num_fewshot and task.answer_type == "code":
        raise ConfigError(f"eval.num_fewshot: {task.name} is a code task, which takes no few-shot examples.")
    if e.num_fewshot:
        shots = load_task(task, e.fewshot_path, "train", e.num_fewshot).problems
        fewshot = [(p, p.get("solution")) for p in shots]
    prompts = build_prompts(data.problems, task, tokenizer, cfg.data, e, fewshot)
    stop_pattern = ANSWER_COMPLETE
    if task.answer_type == "code":  # a base model's continuation ends at the next top-level statement
        continuing = all(continues_code_prompt(p, q) for p, q in zip(data.problems, prompts, strict=True))
        stop_pattern = BASE_MODEL_STOP if continuing else None
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
        stop_pattern=stop_pattern,
        code_limits=code_limits(e) if task.answer_type == "code" else None,
        code_workers=e.code_workers,
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


def code_limits(cfg: EvalConfig) -> SandboxLimits:
    """The sandbox's limits for one program, from ``eval.code_*``."""
    return SandboxLimits(timeout_s=cfg.code_timeout_s, memory_mb=cfg.code_memory_mb)


def _identity(model: Any) -> Any:
    """Which model generated (for resuming an evaluation only with the same one)."""
    from wmss.models import model_identity

    path = getattr(model, "name_or_path", None) or getattr(model, "path", None)
    return model_identity(str(path)) if path else None


def vllm_dtype(model_args: ModelArgsConfig) -> str:
    """The weights' dtype the vLLM backend runs in, from ``model_args.torch_dtype``: ``bfloat16``,
    ``float16`` and ``auto`` as given; at the default ``float32``, vLLM's own choice (``auto``, which runs
    a float32 checkpoint in half precision), as before the option existed. ``attn_implementation`` does
    not apply: vLLM picks its own attention kernels."""
    return "auto" if model_args.torch_dtype == "float32" else model_args.torch_dtype


def backend_model(path: str, tokenizer: Any, cfg: RunConfig) -> Any:
    """The model to generate with: a vLLM engine (``eval.backend``) or the transformers model, in the
    dtype ``model_args`` asks for (``vllm_dtype`` for vLLM)."""
    from wmss.models import load_model

    backend = cfg.eval.backend
    if backend == "vllm" and not vllm_usable():
        raise ConfigError("eval.backend=vllm needs the vllm package and a CUDA GPU; use eval.backend=hf.")
    if backend == "vllm" or (backend == "auto" and vllm_usable()):
        dtype = vllm_dtype(cfg.model_args)
        log.info("eval: generating with vLLM (dtype %s)", dtype)
        return VLLMGenerator(path, tokenizer, cfg.seed, dtype)
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
    if out.is_dir():
        remove_litter(out)
    for name in models:
        check_name(name, "--model name")
    tasks = [parse_task_spec(spec, cfg.eval) for spec in task_specs]
    seen: dict[str, str] = {}
    for (task, _), spec in zip(tasks, task_specs, strict=True):
        given = spec or cfg.eval.task
        check_name(task.name, f"task name (of {given})")
        if task.name in seen:
            raise ConfigError(
                f"two tasks are named '{task.name}' ({seen[task.name]} and {given}): their predictions and "
                "results would overwrite each other. Give each task its own name (the 'name' key of a task "
                "YAML file)."
            )
        seen[task.name] = given
    # every task's problems before any model is loaded: a bad file fails now, not after hours of generation
    problems = [load_problems(task, task_path, cfg.eval) for task, task_path in tasks]
    results: dict[str, dict[str, dict]] = {}
    for name, source in models.items():
        path = resolve_model(source)
        tokenizer = load_tokenizer(path)
        model = backend_model(path, tokenizer, cfg)
        results[name] = {}
        for (task, _), data in zip(tasks, problems, strict=True):
            log.info("eval: %s on %s (%d problems from %s)", name, task.name, len(data.problems), data.source)
            results[name][task.name] = evaluate_one(model, tokenizer, task, data, cfg, out / name / task.name)
        del model
        gc.collect()
    return write_report(results, out, baseline)


def grade_prediction_files(
    predictions: dict[str, str],
    task_spec: str | None,
    cfg: RunConfig,
    out_dir: str | Path,
    baseline: str | None = None,
) -> dict:
    """``wmss grade-code``: grade each named predictions file on a code task (no model involved); write
    ``<name>/<task>/predictions.jsonl`` with the verdicts and the comparison ``summary.{json,md,png}``."""
    task, task_path = parse_task_spec(task_spec, cfg.eval)
    if task.answer_type != "code":
        raise ConfigError(f"task {task.name} is not a code task; grade-code grades code tasks only.")
    data = load_problems(task, task_path, cfg.eval)
    out = Path(out_dir)
    results: dict[str, dict[str, dict]] = {}
    for name, path in predictions.items():
        log.info(
            "grade-code: %s on %s (%d problems from %s)", path, task.name, len(data.problems), data.source
        )
        summary = grade_predictions(
            data, path, out / name / task.name, code_limits(cfg.eval), cfg.eval.code_workers
        )
        if summary["num_without_prediction"]:
            log.warning(
                "grade-code: %s has no prediction for %d of %d problems of %s (graded as wrong).",
                path, summary["num_without_prediction"], len(data.problems), task.name,
            )  # fmt: skip
        results[name] = {task.name: summary}
    return write_report(results, out, baseline)
