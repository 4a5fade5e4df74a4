"""The Python entry points that are not a building block of their own module (``wmss.run``,
``wmss.tokenize_dataset``, ``wmss.evaluate``); ``wmss/__init__.py`` lists the whole public surface."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from wmss.config import DataConfig, RunConfig, config_from_dict, load_config


def as_config(
    config: RunConfig | Mapping[str, Any] | str | Path | None, overrides: Sequence[str] = ()
) -> RunConfig:
    """A validated ``RunConfig`` from a ``RunConfig``, a mapping shaped like the YAML file, or a YAML path,
    with ``key=value`` overrides on top."""
    if isinstance(config, RunConfig):
        return config_from_dict(config.to_dict(), "RunConfig", list(overrides))
    if isinstance(config, Mapping):
        return config_from_dict(dict(config), "config", list(overrides))
    return load_config(config, list(overrides))


def run(
    config: RunConfig | Mapping[str, Any] | str | Path | None = None,
    overrides: Sequence[str] = (),
    callbacks: list | None = None,
    train_dataset: Any = None,
) -> dict[str, Any]:
    """Run the whole pipeline (``wmss run``): Algorithm 1, or the baseline ``method`` names; resumable.
    Returns the run's manifest (phases, budget, evaluation). ``callbacks`` go to every Trainer.
    ``train_dataset``: the training rows as a ``datasets.Dataset`` (a ``DatasetDict``: its
    ``data.split``; or a list of rows), in place of ``data.path``, in any form ``data.path`` takes."""
    from wmss.pipeline import run_pipeline

    with phase_lines():
        return run_pipeline(as_config(config, overrides), callbacks=callbacks, train_dataset=train_dataset)


@contextlib.contextmanager
def phase_lines() -> Iterator[None]:
    """Show wmss's progress lines (phases, data, the closing summary) on stderr, as ``wmss run`` does,
    unless the program has set up logging itself (a handler on the root or the ``wmss`` logger)."""
    logger = logging.getLogger("wmss")
    if logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[wmss] %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def tokenize_dataset(
    dataset: Dataset | DatasetDict | Sequence[Mapping[str, Any]],
    tokenizer: Any,
    max_length: int = 1024,
    **data: Any,
) -> Dataset:
    """Rows (``prompt``/``completion`` as text or as chat turns, chat ``messages``, ``text``, or any
    columns with ``prompt_template`` and ``completion_template``) as the tokenised dataset every wmss
    building block takes: ``idx``, ``input_ids`` and ``labels`` (-100 outside the completion).
    ``data`` are ``DataConfig`` keys (``chat_template``, ``system_prompt``, ``assistant_turns``,
    ``overlong``, ``id_field`` …)."""
    from wmss.data import dataset_rows, tokenize_examples

    cfg = config_from_dict({"data": data}, "tokenize_dataset").data if data else DataConfig()
    rows = [dict(r) for r in dataset] if isinstance(dataset, Sequence) else dataset_rows(dataset, cfg.split)
    tokenized, _ = tokenize_examples(rows, tokenizer, cfg, max_length, source="dataset")
    return tokenized


def evaluate(
    models: Mapping[str, str] | str,
    tasks: Sequence[str] | str,
    output_dir: str | Path,
    config: RunConfig | Mapping[str, Any] | str | Path | None = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    """``wmss eval``: each model (name → checkpoint) on each task (``gsm8k``, ``mawps=PATH``, a task YAML
    …), graded by math-verify; predictions and ``summary.{json,md,png}`` in ``output_dir``. Returns the
    summary table; with ``baseline``, every other model's difference to it with a 95% interval."""
    from wmss.evaluation.harness import evaluate_models

    named = {Path(models.rstrip("/")).name or models: models} if isinstance(models, str) else dict(models)
    return evaluate_models(
        named, [tasks] if isinstance(tasks, str) else list(tasks), as_config(config), output_dir, baseline
    )
