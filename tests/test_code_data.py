"""The generated code problems: deterministic, varied, disjoint splits, every reference solution passes
its own hidden tests in the sandbox, and the training rows load in both layouts wmss reads."""

from __future__ import annotations

import json

from wmss.code_data import FAMILIES, code_splits, make_code_problems, write_code_data
from wmss.config import DataConfig
from wmss.data import load_training_data
from wmss.evaluation.code import generic_code_problem, grade_solutions, solution_program
from wmss.evaluation.sandbox import SandboxLimits
from wmss.evaluation.tasks import TASKS, load_task

LIMITS = SandboxLimits(timeout_s=5.0)


def test_problems_are_deterministic_and_a_prefix_of_longer_lists():
    assert make_code_problems(30, seed=3) == make_code_problems(30, seed=3)
    assert make_code_problems(10, seed=3) == make_code_problems(30, seed=3)[:10]
    assert make_code_problems(10, seed=3) != make_code_problems(10, seed=4)


def test_splits_share_no_function():
    train, test = code_splits(80, 20, seed=0)
    assert len(train) == 80 and len(test) == 20
    assert not {p["entry_point"] for p in train} & {p["entry_point"] for p in test}
    assert code_splits(50, 20, seed=0)[1] == test  # the test split does not depend on n_train


def test_every_reference_solution_passes_its_hidden_tests_and_a_wrong_one_fails():
    problems = [generic_code_problem(row) for row in make_code_problems(60, seed=1)]
    kinds = {p["entry_point"].split("_")[0] for p in problems}  # count_<letter> and count_primes share one
    assert len(kinds) == len(FAMILIES) - 1  # every family drawn: strings, lists, dicts and arithmetic
    references = [p["canonical_solution"] for p in problems]
    assert all(run.passed for run in grade_solutions(problems, references, LIMITS))
    wrong = [solution_program(p, f"{p['code_prompt']}    return None\n", p["code_prompt"]) for p in problems]
    assert not any(run.passed for run in grade_solutions(problems, wrong, LIMITS))


def test_training_rows_load_in_both_layouts_and_the_test_split_is_a_code_task(tmp_path, tokenizer):
    paths = write_code_data(tmp_path, n_train=12, n_test=5, seed=0)
    for layout in ("train_messages", "train_prompt_completion"):
        dataset, _ = load_training_data(DataConfig(path=str(paths[layout])), tokenizer, max_length=2048)
        assert len(dataset) == 12
    first = json.loads(paths["train_messages"].read_text().splitlines()[0])
    assert first["messages"][1]["content"].startswith("```python\ndef ")
    data = load_task(TASKS["code"], str(paths["test"]))
    assert len(data.problems) == 5 and data.malformed == []
