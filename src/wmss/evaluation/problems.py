"""Evaluation problems from a question/answer file, prompted exactly as the training data was."""

from __future__ import annotations

from typing import Any

from wmss.config import DataConfig, EvalConfig
from wmss.data import format_row, read_rows, render_prompt
from wmss.errors import DataError
from wmss.evaluation.answers import gold_from_gsm8k


def gold_answer(value: Any) -> str:
    """The final answer of a gold field: GSM8K's ``... #### 42`` gives ``42``; anything else as text."""
    text = str(value).strip()
    return gold_from_gsm8k(text) if "####" in text else text


def load_eval_problems(cfg: EvalConfig, data_cfg: DataConfig, tokenizer: Any) -> list[dict]:
    """Problems as ``{"id", "prompt", "answer"}``; the prompt uses the training data's template and
    chat rendering (``eval.prompt_template`` overrides the template)."""
    if not cfg.path:
        raise DataError("eval.path is not set: give a .jsonl/.json/.parquet file of questions and answers.")
    rows = read_rows(cfg.path, cfg.split)
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    template = cfg.prompt_template or data_cfg.prompt_template
    problems = []
    for i, row in enumerate(rows):
        where = f"{cfg.path}, row {i + 1}"
        if template is not None:
            prompt: str | list[dict] = format_row(template, row, where, "eval.prompt_template")
        elif "prompt" in row:
            prompt = row["prompt"]
        elif "messages" in row:
            prompt = [m for m in row["messages"] if m.get("role") != "assistant"]
        else:
            raise DataError(
                f"{where}: no prompt. Set eval.prompt_template (e.g. '{{question}}') or give a "
                "'prompt' column."
            )
        if cfg.answer_field not in row:
            raise DataError(
                f"{where}: no '{cfg.answer_field}' column for the gold answer (columns: "
                f"{', '.join(sorted(row))}). Set eval.answer_field."
            )
        prompt_text = render_prompt(tokenizer, prompt, data_cfg.chat_template, data_cfg.system_prompt)
        problems.append({"id": i, "prompt": prompt_text, "answer": gold_answer(row[cfg.answer_field])})
    return problems
