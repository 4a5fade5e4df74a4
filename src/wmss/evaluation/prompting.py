"""Evaluation prompts, rendered the way the model's training prompts were.

The question (with its options, for multiple choice) is formatted by ``eval.prompt_template``
(default ``"{question}"``), the task's instruction is appended unless ``eval.instruction`` overrides
it (``""`` for none: use that when the training prompts had no instruction), and the text is rendered
by ``wmss.data.render_prompt`` with the training data's chat template and system prompt. Few-shot
examples, when asked for, go before it as earlier user/assistant turns.

Code tasks: a chat model (``data.chat_template`` and a tokenizer with a chat template) is asked, in one
user turn, for the whole function in a fenced block; a base model is given the function's signature
and docstring (the problem's ``code_prompt``) to continue.
"""

from __future__ import annotations

from typing import Any

from wmss.config import DataConfig, EvalConfig
from wmss.data import render_prompt
from wmss.errors import DataError
from wmss.evaluation.tasks import Task


def question_text(problem: dict, template: str | None) -> str:
    fields = dict(problem)
    fields["options"] = "\n".join(problem.get("choices") or [])
    text = template.format_map(fields) if template else problem["question"]
    if problem.get("choices") and "{options}" not in (template or ""):
        text += "\n" + fields["options"]
    return text


def user_turn(problem: dict, task: Task, cfg: EvalConfig) -> str:
    instruction = task.instruction if cfg.instruction is None else cfg.instruction
    text = question_text(problem, cfg.prompt_template)
    return f"{text}\n{instruction}" if instruction else text


def code_prompt_text(problem: dict, cfg: EvalConfig, chat: bool) -> str:
    """What a code problem puts before the model's answer: a request for a fenced function (chat), or
    the code to continue (base models)."""
    if not chat and problem.get("code_prompt", "").strip():
        return problem["code_prompt"]
    instruction = problem.get("instruction", "") if cfg.instruction is None else cfg.instruction
    return f"{instruction}\n\n{problem['question']}" if instruction else problem["question"]


def fewshot_answer(problem: dict, solution: str | None) -> str:
    """An exemplar's answer: its worked solution when the source has one, ending in the answer line."""
    body = (solution or "").split("####")[0].strip()
    final = f"The answer is {problem['answer']}."
    return f"{body}\n{final}" if body else final


def build_prompts(
    problems: list[dict],
    task: Task,
    tokenizer: Any,
    data_cfg: DataConfig,
    cfg: EvalConfig,
    fewshot: list[tuple[dict, str | None]] = (),
) -> list[str]:
    """Rendered prompt text for each problem (the model continues it)."""
    if task.answer_type == "code":
        chat = bool(data_cfg.chat_template and getattr(tokenizer, "chat_template", None))
        return [
            render_prompt(tokenizer, code_prompt_text(p, cfg, chat), chat, data_cfg.system_prompt)
            for p in problems
        ]
    try:
        shots: list[dict] = []
        for example, solution in fewshot:
            shots += [
                {"role": "user", "content": user_turn(example, task, cfg)},
                {"role": "assistant", "content": fewshot_answer(example, solution)},
            ]
        prompts = []
        for problem in problems:
            messages = [*shots, {"role": "user", "content": user_turn(problem, task, cfg)}]
            content: str | list[dict] = messages if shots else messages[0]["content"]
            prompts.append(render_prompt(tokenizer, content, data_cfg.chat_template, data_cfg.system_prompt))
        return prompts
    except KeyError as err:
        raise DataError(
            f"eval.prompt_template refers to {err}, which a {task.name} problem does not have "
            "(fields: question, answer, options)."
        ) from None
